"""Lean MCP client connections to upstream servers, over streamable HTTP or stdio, in either protocol era.

The gateway forwards JSON-RPC it has already parsed, so it speaks the wire protocol directly instead
of going through the SDK's typed client: one pooled HTTP/1.1 connection per upstream, no pydantic
round trip of the result, no extra `tools/list` per call. A connection negotiates the era once:
`server/discover` (2026-07-28, stateless) first, the `initialize` handshake (2025-11-25, sessions)
when the upstream does not know it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

import contextlab

log = logging.getLogger(__name__)

MODERN_VERSION = "2026-07-28"
LEGACY_VERSION = "2025-11-25"
CLIENT_INFO = {"name": "contextlab-gateway", "version": contextlab.__version__}
_MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
    "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
    "io.modelcontextprotocol/clientCapabilities": {},
}
# JSON-RPC codes a server uses for "I do not know this method / these params".
_UNKNOWN_METHOD_CODES = {-32601, -32602, -32600}
STDERR_TAIL_LINES = 200
MAX_STDIO_LINE_BYTES = 64 * 1024 * 1024


class UpstreamError(Exception):
    """A failure talking to an upstream: unreachable, timed out, crashed or spoke bad JSON-RPC.

    `retryable` is True when the request cannot have reached the tool (connect failure, lost session).
    """

    def __init__(self, server: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"Upstream {server!r}: {message}")
        self.server = server
        self.retryable = retryable


class UpstreamRPCError(Exception):
    """The upstream answered with a JSON-RPC error object; it is passed on to the caller unchanged."""

    def __init__(self, error: Mapping[str, Any]) -> None:
        super().__init__(str(error.get("message", "")))
        self.error = dict(error)


@dataclass
class ConnectionSpec:
    """What it takes to reach one upstream (secrets already decrypted)."""

    name: str
    transport: str
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    protocol: str = "auto"
    timeout_seconds: float = 30.0


class UpstreamConnection(ABC):
    """One logical MCP connection: negotiated era, session id (legacy) and a request method."""

    def __init__(self, spec: ConnectionSpec) -> None:
        self.spec = spec
        self.protocol_version: str | None = None
        self.server_info: dict[str, Any] = {}
        self.capabilities: dict[str, Any] = {}
        self.instructions: str | None = None
        self._ids = itertools.count(1)
        self._connect_lock = asyncio.Lock()
        self.on_notification: Any = None

    @property
    def modern(self) -> bool:
        return self.protocol_version == MODERN_VERSION

    @property
    def connected(self) -> bool:
        return self.protocol_version is not None

    async def connect(self) -> None:
        async with self._connect_lock:
            if self.connected:
                return
            await self._open()
            if self.spec.protocol in ("auto", "modern"):
                try:
                    result = await self._send("server/discover", {"_meta": _MODERN_META}, modern=True)
                except UpstreamRPCError as exc:
                    if self.spec.protocol == "modern" or exc.error.get("code") not in _UNKNOWN_METHOD_CODES:
                        raise UpstreamError(self.spec.name, f"server/discover failed: {exc}") from exc
                except _NotModern:
                    if self.spec.protocol == "modern":
                        raise UpstreamError(self.spec.name, "does not speak protocol 2026-07-28") from None
                else:
                    if MODERN_VERSION in (result.get("supportedVersions") or []):
                        meta = result.get("_meta") or {}
                        self.server_info = meta.get("io.modelcontextprotocol/serverInfo") or {}
                        self.capabilities = result.get("capabilities") or {}
                        self.instructions = result.get("instructions")
                        self.protocol_version = MODERN_VERSION
                        return
            result = await self._send(
                "initialize",
                {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": CLIENT_INFO},
                modern=False,
            )
            self.protocol_version = str(result.get("protocolVersion") or LEGACY_VERSION)
            self.server_info = result.get("serverInfo") or {}
            self.capabilities = result.get("capabilities") or {}
            self.instructions = result.get("instructions")
            await self._notify("notifications/initialized")

    async def request(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send one request and return its `result`; JSON-RPC errors raise UpstreamRPCError."""
        if not self.connected:
            await self.connect()
        payload = dict(params or {})
        if self.modern:
            payload["_meta"] = {**(payload.get("_meta") or {}), **_MODERN_META}
        return await self._send(method, payload, modern=self.modern)

    async def close(self) -> None:
        self.protocol_version = None

    # -- transport hooks --------------------------------------------------------------------------
    @abstractmethod
    async def _open(self) -> None: ...

    @abstractmethod
    async def _send(self, method: str, params: dict[str, Any], *, modern: bool) -> dict[str, Any]: ...

    @abstractmethod
    async def _notify(self, method: str) -> None: ...

    def _next_id(self) -> int:
        return next(self._ids)

    def _result(self, message: Any, request_id: int) -> dict[str, Any]:
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0" or message.get("id") != request_id:
            raise UpstreamError(self.spec.name, f"sent a malformed JSON-RPC response: {_clip(message)}")
        if "error" in message:
            error = message["error"]
            if not isinstance(error, dict) or "code" not in error:
                raise UpstreamError(self.spec.name, f"sent a malformed JSON-RPC error: {_clip(error)}")
            raise UpstreamRPCError(error)
        result = message.get("result")
        if not isinstance(result, dict):
            raise UpstreamError(self.spec.name, f"sent a response without a result object: {_clip(message)}")
        return result


class _NotModern(Exception):
    """The upstream rejected the 2026-07-28 probe at the HTTP level (a legacy-only server)."""


class HttpUpstreamConnection(UpstreamConnection):
    """Streamable HTTP over a shared aiohttp keep-alive pool (a fraction of httpx's CPU per request)."""

    def __init__(self, spec: ConnectionSpec, client: aiohttp.ClientSession) -> None:
        super().__init__(spec)
        self._client = client
        self._timeout = aiohttp.ClientTimeout(total=spec.timeout_seconds)
        self.session_id: str | None = None

    async def _open(self) -> None:
        self.session_id = None

    def _headers(self, method: str, params: Mapping[str, Any], modern: bool) -> dict[str, str]:
        headers = {
            **self.spec.headers,
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        }
        if modern:
            headers["MCP-Protocol-Version"] = MODERN_VERSION
            headers["Mcp-Method"] = method
            name = params.get("name") or params.get("uri")
            if isinstance(name, str) and method in ("tools/call", "prompts/get", "resources/read"):
                headers["Mcp-Name"] = name
        else:
            if self.session_id:
                headers["Mcp-Session-Id"] = self.session_id
            if self.protocol_version:
                headers["MCP-Protocol-Version"] = self.protocol_version
        return headers

    async def _send(self, method: str, params: dict[str, Any], *, modern: bool) -> dict[str, Any]:
        request_id = self._next_id()
        body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        try:
            async with self._client.post(
                self.spec.url or "", data=body, headers=self._headers(method, params, modern), timeout=self._timeout
            ) as response:
                status, headers = response.status, response.headers
                content = await response.read()
        except TimeoutError as exc:
            raise UpstreamError(
                self.spec.name, f"no answer to {method} within {self.spec.timeout_seconds:g} s"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamError(self.spec.name, f"cannot connect to {self.spec.url} ({exc})", retryable=True) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(
                self.spec.name, f"the connection broke during {method} ({type(exc).__name__}: {exc})"
            ) from exc
        if method == "server/discover" and status in (400, 404, 405, 406):
            raise _NotModern
        if status == 404 and self.session_id and not modern:
            # The upstream forgot our session (restart, idle expiry): the call never ran.
            self.protocol_version = None
            self.session_id = None
            raise UpstreamError(self.spec.name, "lost its session; reconnecting", retryable=True)
        if status in (401, 403):
            raise UpstreamError(
                self.spec.name,
                f"refused the gateway's credentials (HTTP {status}); "
                "send new credentials with PATCH {base_url}contextlab/api/registry/<name> (fields auth/headers)",
            )
        if method == "initialize":
            self.session_id = headers.get("mcp-session-id")
        content_type = headers.get("content-type", "")
        if content_type.startswith("text/event-stream"):
            message = self._from_sse(content.decode("utf-8", "replace"), request_id)
        else:
            if status >= 400 and not content_type.startswith("application/json"):
                raise UpstreamError(self.spec.name, f"answered {method} with HTTP {status}")
            try:
                message = json.loads(content)
            except ValueError as exc:
                raise UpstreamError(self.spec.name, f"sent invalid JSON for {method}: {_clip(content)}") from exc
        return self._result(message, request_id)

    def _from_sse(self, text: str, request_id: int) -> Any:
        data: list[str] = []
        for line in text.splitlines() + [""]:
            if line.startswith("data:"):
                data.append(line[5:].lstrip(" "))
            elif not line and data:
                try:
                    message = json.loads("\n".join(data))
                except ValueError as exc:
                    raise UpstreamError(self.spec.name, f"sent an invalid SSE event: {_clip(data)}") from exc
                data = []
                if isinstance(message, dict) and message.get("id") == request_id and "method" not in message:
                    return message
                if isinstance(message, dict) and self.on_notification and "method" in message:
                    self.on_notification(message)
        raise UpstreamError(self.spec.name, "closed the response stream before answering (died mid-stream?)")

    async def _notify(self, method: str) -> None:
        body = json.dumps({"jsonrpc": "2.0", "method": method})
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self._client.post(
                self.spec.url or "", data=body, headers=self._headers(method, {}, False), timeout=self._timeout
            ):
                pass

    async def close(self) -> None:
        if self.session_id and not self.modern and not self._client.closed:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with self._client.delete(
                    self.spec.url or "", headers=self._headers("", {}, False), timeout=aiohttp.ClientTimeout(total=2)
                ):
                    pass
        self.session_id = None
        await super().close()


class StdioUpstreamConnection(UpstreamConnection):
    """A child process speaking newline-delimited JSON-RPC on stdin/stdout.

    stderr is drained continuously into a bounded tail (a flooding server cannot block itself or
    the gateway), and that tail is quoted when the process dies.
    """

    def __init__(self, spec: ConnectionSpec) -> None:
        super().__init__(spec)
        self.process: asyncio.subprocess.Process | None = None
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self.stderr_bytes = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._write_lock = asyncio.Lock()

    async def _open(self) -> None:
        await self._kill()
        if not self.spec.command:
            raise UpstreamError(self.spec.name, "has no command to start")
        env = {**os.environ, **self.spec.env}
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.spec.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                cwd=self.spec.cwd,
                limit=MAX_STDIO_LINE_BYTES,
                start_new_session=True,
            )
        except OSError as exc:
            raise UpstreamError(self.spec.name, f"cannot start {self.spec.command[0]!r}: {exc}") from exc
        self._tasks = [
            asyncio.create_task(self._read_stdout(self.process), name=f"upstream-{self.spec.name}-stdout"),
            asyncio.create_task(self._drain_stderr(self.process), name=f"upstream-{self.spec.name}-stderr"),
        ]

    async def _read_stdout(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        try:
            while True:
                try:
                    line = await process.stdout.readline()
                except ValueError:
                    self._fail_all(f"sent a line longer than {MAX_STDIO_LINE_BYTES} bytes")
                    break
                if not line:
                    break
                try:
                    message = json.loads(line)
                except ValueError:
                    log.warning("upstream %s wrote non-JSON to stdout: %s", self.spec.name, _clip(line))
                    continue
                await self._dispatch(message)
        finally:
            code = await _wait_exit(process)
            self.protocol_version = None
            self._fail_all(f"exited with code {code}{self._stderr_hint()}")

    async def _dispatch(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        if "method" in message:
            if "id" in message:  # a server-to-client request (sampling, roots…): the gateway declines
                reply = {
                    "jsonrpc": "2.0",
                    "id": message["id"],
                    "error": {"code": -32601, "message": "The ContextLab gateway does not serve client requests."},
                }
                with contextlib.suppress(Exception):
                    await self._write(reply)
            elif self.on_notification:
                self.on_notification(message)
            return
        future = self._pending.pop(message.get("id"), None) if isinstance(message.get("id"), int) else None
        if future is not None and not future.done():
            future.set_result(message)

    async def _drain_stderr(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        while True:
            chunk = await process.stderr.read(65536)
            if not chunk:
                return
            self.stderr_bytes += len(chunk)
            for line in chunk.decode("utf-8", "replace").splitlines():
                if line.strip():
                    self.stderr_tail.append(line[:500])

    def _stderr_hint(self) -> str:
        tail = [line for line in self.stderr_tail][-3:]
        return f"; last stderr: {' | '.join(tail)}" if tail else ""

    def _fail_all(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(UpstreamError(self.spec.name, reason))

    async def _write(self, message: Mapping[str, Any]) -> None:
        process = self.process
        if process is None or process.stdin is None or process.returncode is not None:
            await self._drained()
            code = f" (exited with code {process.returncode})" if process is not None else ""
            raise UpstreamError(self.spec.name, f"is not running{code}{self._stderr_hint()}", retryable=True)
        async with self._write_lock:
            try:
                process.stdin.write(json.dumps(message).encode() + b"\n")
                await process.stdin.drain()
            except (BrokenPipeError, ConnectionResetError) as exc:
                await self._drained()
                raise UpstreamError(self.spec.name, f"closed its stdin{self._stderr_hint()}", retryable=True) from exc

    async def _drained(self) -> None:
        """Give the stderr reader a moment to collect what a dead process said, so errors can quote it."""
        readers = [t for t in self._tasks if t.get_name().endswith("-stderr") and not t.done()]
        if readers:
            await asyncio.wait(readers, timeout=1.0)

    async def _send(self, method: str, params: dict[str, Any], *, modern: bool) -> dict[str, Any]:
        request_id = self._next_id()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            await self._write({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
            message = await asyncio.wait_for(future, self.spec.timeout_seconds)
        except TimeoutError as exc:
            raise UpstreamError(
                self.spec.name, f"no answer to {method} within {self.spec.timeout_seconds:g} s"
            ) from exc
        finally:
            self._pending.pop(request_id, None)
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # a failure set by the reader after _write raised: already reported
        return self._result(message, request_id)

    async def _notify(self, method: str) -> None:
        await self._write({"jsonrpc": "2.0", "method": method})

    async def _kill(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 3)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    async def close(self) -> None:
        await self._kill()
        self._fail_all("was closed by the gateway")
        await super().close()


async def _wait_exit(process: asyncio.subprocess.Process) -> int | None:
    try:
        return await asyncio.wait_for(process.wait(), 2)
    except TimeoutError:
        return process.returncode


def _clip(value: Any, limit: int = 200) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return text if len(text) <= limit else text[:limit] + "…"
