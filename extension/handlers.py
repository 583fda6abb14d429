"""Thin Tornado handlers: the MCP endpoint (a bridge to the SDK's ASGI app) and a status API."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.auth.identity import User
from jupyter_server.base.call_context import CallContext
from jupyter_server.base.handlers import APIHandler
from tornado import web
from tornado.iostream import StreamClosedError

import contextlab
from contextlab.extension.gateway import Gateway
from contextlab.extension.principals import Caller
from contextlab.extension.service import CALLER_SCOPE_KEY, USER_SCOPE_KEY, ContextService, parse_jsonrpc
from contextlab.extension.tokens import TokenError, TokenService, token_from_headers
from contextlab.extension.upstreams import MODERN_VERSION

AUTH_RESOURCE = "contextlab"
_SESSION_HEADER = "Mcp-Session-Id"


def request_logger(serverapp_log: logging.Logger, level: int | str) -> logging.Logger:
    """A child of the server's logger for MCP requests, at the server's configured level.

    Traitlets leaves the ServerApp logger itself at DEBUG (its handlers filter), so Jupyter's
    per-request debug line would build a LogRecord for every MCP call; a child logger at the
    configured level skips that work and still prints what the server would print.
    """
    logger = serverapp_log.getChild("contextlab")
    logger.setLevel(level)
    return logger


def _jsonrpc_error(code: int, message: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}).encode()


class GatewayAuthMixin:
    """Authenticates ContextLab API tokens (`Bearer cl_…`); any other credential goes to Jupyter's own auth.

    Needs `self.gateway` and `self.tokens`; sets `self.caller` for the handler.
    """

    gateway: Gateway
    tokens: TokenService
    caller: Caller | None = None

    async def prepare(self) -> None:
        token = token_from_headers(self.request.headers.get("Authorization"))  # type: ignore[attr-defined]
        if token is None:
            await super().prepare()  # type: ignore[misc]
            user = self.current_user  # type: ignore[attr-defined]
            if user is not None and not self._finished:  # type: ignore[attr-defined]
                self.caller = self.gateway.jupyter_caller(user.username)
            return
        CallContext.set(CallContext.JUPYTER_HANDLER, self)
        if not self.check_host():  # type: ignore[attr-defined]
            raise web.HTTPError(403)
        try:
            self.caller = self.tokens.verify(token)
        except TokenError as exc:
            self.set_status(401)  # type: ignore[attr-defined]
            self.set_header("WWW-Authenticate", f'Bearer error="invalid_token", error_description="{exc.reason}"')  # type: ignore[attr-defined]
            self.finish(json.dumps({"error": exc.reason, "message": str(exc)}))  # type: ignore[attr-defined]
            return
        self.current_user = self._jupyter_current_user = User(username=self.caller.name)  # type: ignore[attr-defined]
        self.set_cors_headers()  # type: ignore[attr-defined]


class MCPHandler(GatewayAuthMixin, APIHandler):
    """`{base_url}contextlab/mcp`: Jupyter authenticates and authorises, then the MCP SDK answers.

    The request is handed to the SDK's streamable-HTTP session manager as an ASGI call, and each
    body chunk it sends is flushed at once so SSE streams stream.
    """

    auth_resource = AUTH_RESOURCE

    def initialize(self, service: ContextService, tokens: TokenService, logger: logging.Logger) -> None:
        self.service = service
        self.gateway = service.gateway
        self.tokens = tokens
        self._logger = logger
        self._disconnected = asyncio.Event()

    @property
    def log(self) -> logging.Logger:
        return self._logger

    def on_connection_close(self) -> None:
        self._disconnected.set()

    @web.authenticated
    @authorized
    async def post(self) -> None:
        await self._bridge()

    @web.authenticated
    @authorized
    async def get(self) -> None:
        await self._bridge()

    @web.authenticated
    @authorized
    async def delete(self) -> None:
        await self._bridge()

    async def _bridge(self) -> None:
        caller = self.caller
        assert caller is not None
        user = caller.name
        body = self.request.body or b""
        if len(body) > self.service.max_request_bytes:
            self.set_status(413)
            self.finish(
                _jsonrpc_error(
                    -32600,
                    f"Request body is {len(body)} bytes; the limit is {self.service.max_request_bytes} "
                    "(ContextLab.max_request_bytes). Send smaller arguments.",
                )
            )
            return
        message: Any = None
        if self.request.method == "POST":
            message, problem = parse_jsonrpc(body)
            if problem is not None:
                self.set_status(400)
                self.finish(_jsonrpc_error(*problem))
                return
        session_id = self.request.headers.get(_SESSION_HEADER)
        owner = self.service.session_owner(session_id) if session_id is not None else None
        if owner is not None and owner != user:
            self.set_status(404)
            self.finish(_jsonrpc_error(-32600, "Session not found. Start a new session with initialize."))
            return
        if message is not None and message.get("method") == "tools/call" and "id" in message:
            if await self._forward(caller, message, session_id, owner):
                return

        scope = self._asgi_scope(caller)
        sent_body = False
        content_type = "application/json"

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self._disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal content_type
            if message["type"] == "http.response.start":
                status = message["status"]
                self.set_status(status)
                self.clear_header("Content-Type")
                for raw_name, raw_value in message.get("headers", []):
                    name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
                    if name.lower() == "content-type":
                        content_type = value
                    if name.lower() == "mcp-session-id" and status < 300:
                        self.service.claim_session(value, user)
                    self.add_header(name, value)
            elif message["type"] == "http.response.body":
                if self._disconnected.is_set():
                    return
                chunk = message.get("body", b"")
                if chunk:
                    self.write(chunk)
                if message.get("more_body", False):
                    try:
                        await self.flush()
                    except StreamClosedError:
                        self._disconnected.set()

        try:
            await self.service.handle(scope, receive, send)
        finally:
            if self.request.method == "DELETE" and session_id is not None and self.get_status() < 300:
                self.service.release_session(session_id)
            self._disconnected.set()  # unblocks any receive() still waiting
            if not self._finished:
                try:
                    self.finish(set_content_type=content_type)
                except StreamClosedError:
                    pass  # the client left; there is no one to finish for

    async def _forward(
        self, caller: Caller, message: dict[str, Any], session_id: str | None, owner: str | None
    ) -> bool:
        """The lean path for upstream tools: answer here, without the SDK server. False if it does not apply."""
        route = self.service.upstream_route((message.get("params") or {}).get("name"))
        if route is None:
            return False
        version = self.request.headers.get("MCP-Protocol-Version")
        modern = version == MODERN_VERSION
        if not modern and owner is None:
            return False  # no live session here: the SDK answers with the proper session error
        response = await self.service.forward_tool_call(
            caller, message, route, modern=modern, session_id=session_id, protocol_version=version
        )
        self.set_header("Content-Type", "application/json")
        if session_id is not None:
            self.set_header(_SESSION_HEADER, session_id)
        try:
            self.finish(json.dumps(response, separators=(",", ":")))
        except StreamClosedError:
            pass
        return True

    def _asgi_scope(self, caller: Caller) -> dict[str, Any]:
        request = self.request
        host, _, port = request.host.rpartition(":") if ":" in request.host else (request.host, "", "")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": request.version.removeprefix("HTTP/") if request.version else "1.1",
            "method": request.method,
            "scheme": request.protocol,
            "path": "/mcp",
            "raw_path": b"/mcp",
            "root_path": "",
            "query_string": request.query.encode("latin-1"),
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.get_all()],
            "client": (request.remote_ip or "", 0),
            "server": (host or request.host, int(port) if port.isdigit() else None),
            "state": {},
            USER_SCOPE_KEY: caller.name,
            CALLER_SCOPE_KEY: caller,
        }


class StatusHandler(APIHandler):
    """`{base_url}contextlab/api/status`: version, endpoint path and what the providers serve."""

    auth_resource = AUTH_RESOURCE

    def initialize(self, service: ContextService, mcp_url_path: str) -> None:
        self.service = service
        self.mcp_url_path = mcp_url_path

    @web.authenticated
    @authorized
    async def get(self) -> None:
        providers = [
            {"name": m.name, "version": m.version, "tools": [t.name for t in m.tools]} for m in self.service.manifests
        ]
        status = {
            "version": contextlab.__version__,
            "mcp_path": self.mcp_url_path,
            "providers": providers,
            "meta_tools": sorted(self.service.tool_names - {t for p in providers for t in p["tools"]}),
            "tool_count": len(self.service.tool_names),
        }
        if self.service.tool_search is not None:
            status["tool_index"] = self.service.tool_search.stats()
        self.finish(json.dumps(status))
