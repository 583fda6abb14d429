"""The MCP server behind the endpoint: providers mounted under namespaced names, every call audited.

This module knows the MCP SDK but not Jupyter: the Tornado handler in `handlers.py` hands it
ASGI requests, with the authenticated Jupyter user in the scope.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR, CallToolResult
from mcp_types import Resource as MCPResource
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

import contextlab
from contextlab.extension.subscriptions import CountingBus, ResourceWatcher
from contextlab.providers.base import Provider
from contextlab.providers.metrics import RequestStats
from contextlab.state import AuditEntry, AuditWriter

log = logging.getLogger(__name__)

USER_SCOPE_KEY = "contextlab.user"
"""ASGI scope key under which the bridge passes the authenticated Jupyter username."""

INSTRUCTIONS = (
    "ContextLab serves the context of a Jupyter workspace. Tools are namespaced by provider: "
    "notebooks__* (list, read, search notebooks), kernels__* (running kernels and live variables, "
    "including DataFrames), sql__* (DuckDB schemas and read-only queries), logs__* and metrics__*. "
    "Start with sql__schema or kernels__variables before writing code or SQL."
)


def jsonrpc_body_error(body: bytes) -> tuple[int, str] | None:
    """A JSON-RPC error (code, message) for a POST body that is not one well-formed message, else None.

    The SDK would reject these too, but with pydantic union dumps; callers deserve one precise line.
    """
    try:
        message = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return PARSE_ERROR, f"Parse error: the body is not valid JSON ({exc})."
    if isinstance(message, list):
        return (
            INVALID_REQUEST,
            "Invalid Request: JSON-RPC batches are not supported; send one message per POST.",
        )
    if not isinstance(message, dict):
        return INVALID_REQUEST, "Invalid Request: the body must be a JSON-RPC 2.0 object."
    if message.get("jsonrpc") != "2.0":
        return INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0".'
    if "method" in message:
        if not isinstance(message["method"], str) or not message["method"]:
            return INVALID_REQUEST, 'Invalid Request: "method" must be a non-empty string.'
        if "params" in message and not isinstance(message["params"], dict):
            return INVALID_REQUEST, 'Invalid Request: "params" must be an object.'
        return None
    if "id" in message and ("result" in message or "error" in message):
        return None
    return (
        INVALID_REQUEST,
        'Invalid Request: a message needs "method" (request or notification) or "id" with "result"/"error" (response).',
    )


class ContextLabMCPServer(MCPServer):
    """MCPServer that also lists the providers' dynamic resources (e.g. each notebook)."""

    def __init__(self, providers: Iterable[Provider], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._providers = list(providers)

    async def list_resources(self) -> list[MCPResource]:
        resources = await super().list_resources()
        for provider in self._providers:
            resources.extend(await provider.dynamic_resources())
        return resources


class ContextService:
    """Builds the aggregate MCP server and serves ASGI requests through the SDK's session manager."""

    def __init__(
        self,
        providers: list[Provider],
        *,
        audit: AuditWriter | None,
        stats: RequestStats,
        max_request_bytes: int = 4 * 1024 * 1024,
        session_idle_timeout: float = 1800,
        resource_poll_seconds: float = 2.0,
    ) -> None:
        self.providers = providers
        self.audit = audit
        self.stats = stats
        self.max_request_bytes = max_request_bytes
        self.bus = CountingBus()
        self.server = ContextLabMCPServer(
            providers,
            name="contextlab",
            title="ContextLab",
            version=contextlab.__version__,
            instructions=INSTRUCTIONS,
            log_level="WARNING",
            subscriptions=self.bus,
        )
        for provider in providers:
            provider.register(self.server)
        self.watcher = ResourceWatcher(self.server, providers, self.bus, resource_poll_seconds)
        self.manifests = [provider.manifest() for provider in providers]
        self.tool_names = {tool.name for manifest in self.manifests for tool in manifest.tools}
        self.server.middleware.append(self._observe)
        self.server.middleware.append(self._reject_unknown_tool)
        self.server.middleware.append(self._baseline_on_listen)
        # Jupyter has already checked the Host, the Origin and the credentials by the time a request
        # reaches the SDK, so its own DNS-rebinding allow-list (which only knows localhost) stays off.
        self.server.streamable_http_app(
            streamable_http_path="/mcp",
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
            max_request_body_size=max_request_bytes,
            session_idle_timeout=session_idle_timeout,
        )
        self._session_owners: OrderedDict[str, str] = OrderedDict()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watcher_task: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Enter the session manager's run() (its task group) and keep it open until stop()."""
        ready = asyncio.Event()

        async def run() -> None:
            async with self.server.session_manager.run():
                ready.set()
                await self._stop.wait()

        self._task = asyncio.create_task(run(), name="contextlab-mcp-session-manager")
        waiter = asyncio.create_task(ready.wait())
        done, _ = await asyncio.wait({self._task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._task in done:
            self._task.result()  # re-raises why the session manager could not start
        self._watcher_task = asyncio.create_task(self.watcher.run(), name="contextlab-resource-watcher")

    async def stop(self) -> None:
        self._stop.set()
        if self._watcher_task is not None:
            self._watcher_task.cancel()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=10)
            except (TimeoutError, asyncio.CancelledError):
                log.warning("MCP session manager did not stop within 10 s")
        for provider in self.providers:
            await provider.close()
        if self.audit is not None:
            self.audit.close()

    # -- requests -------------------------------------------------------------------------------
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.server.session_manager.handle_request(scope, receive, send)

    def session_owner(self, session_id: str) -> str | None:
        return self._session_owners.get(session_id)

    def claim_session(self, session_id: str, user: str) -> None:
        self._session_owners[session_id] = user
        while len(self._session_owners) > 50_000:
            self._session_owners.popitem(last=False)

    def release_session(self, session_id: str) -> None:
        self._session_owners.pop(session_id, None)

    # -- middleware -------------------------------------------------------------------------------
    async def _reject_unknown_tool(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.method == "tools/call":
            name = (ctx.params or {}).get("name")
            if name not in self.tool_names:
                raise MCPError(
                    INVALID_PARAMS,
                    f"Unknown tool {name!r}. Call tools/list to see the tools this server offers.",
                )
        return await call_next(ctx)

    async def _baseline_on_listen(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        # A change right after a client starts listening must be compared with the state it saw.
        if ctx.method == "subscriptions/listen":
            await self.watcher.ensure_baseline()
        return await call_next(ctx)

    async def _observe(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        if ctx.request_id is None:
            return await call_next(ctx)
        started = time.perf_counter()
        outcome, code, error = "ok", None, None
        try:
            result = await call_next(ctx)
            if _is_tool_error(result):
                outcome, error = "tool_error", _first_text(result)
            return result
        except MCPError as exc:
            outcome, code, error = "error", exc.code, exc.message
            raise
        except ValidationError as exc:
            outcome, code, error = "error", INVALID_PARAMS, str(exc)
            raise
        except BaseException as exc:
            outcome, code, error = "error", INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"
            raise
        finally:
            latency_ms = (time.perf_counter() - started) * 1000
            self.stats.observe(ctx.method, outcome, latency_ms)
            if self.audit is not None:
                self.audit.record(_audit_entry(ctx, outcome, code, error, latency_ms))


def _audit_entry(
    ctx: ServerRequestContext[Any, Any], outcome: str, code: int | None, error: str | None, latency_ms: float
) -> AuditEntry:
    params = ctx.params or {}
    target = args_hash = None
    if ctx.method == "tools/call":
        target = params.get("name")
        args_hash = hashlib.sha256(
            json.dumps(params.get("arguments") or {}, sort_keys=True, default=str).encode()
        ).hexdigest()
    elif ctx.method == "prompts/get":
        target = params.get("name")
    elif ctx.method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        target = params.get("uri")
    request = ctx.request
    scope = getattr(request, "scope", None) or {}
    client_params = getattr(ctx.session, "client_params", None)
    client_info = getattr(client_params, "client_info", None)
    return AuditEntry(
        principal=scope.get(USER_SCOPE_KEY) or "anonymous",
        client=f"{client_info.name}/{client_info.version}" if client_info else None,
        session_id=request.headers.get("mcp-session-id") if request is not None else None,
        protocol_version=ctx.protocol_version,
        method=ctx.method,
        target=target,
        args_sha256=args_hash,
        latency_ms=round(latency_ms, 3),
        outcome=outcome,
        error_code=code,
        error=error[:2000] if error else None,
    )


def _is_tool_error(result: HandlerResult) -> bool:
    if isinstance(result, CallToolResult):
        return bool(result.is_error)
    return isinstance(result, dict) and bool(result.get("isError"))


def _first_text(result: HandlerResult) -> str | None:
    content = result.content if isinstance(result, CallToolResult) else (result or {}).get("content", [])
    for item in content or []:
        text = getattr(item, "text", None) if not isinstance(item, dict) else item.get("text")
        if text:
            return text
    return None
