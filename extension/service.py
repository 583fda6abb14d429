"""The MCP server behind the endpoint: built-in providers and upstream servers behind one gateway.

This module knows the MCP SDK but not Jupyter: the Tornado handler in `handlers.py` hands it
ASGI requests with the authenticated caller in the scope, or — for calls to upstream tools —
the parsed JSON-RPC message, which `forward_tool_call` answers without the SDK's server stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.subscriptions import PromptsListChanged, ResourcesListChanged, ToolsListChanged
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR, CallToolResult, ToolAnnotations
from mcp_types import Resource as MCPResource
from pydantic import Field, ValidationError
from starlette.types import Receive, Scope, Send

import contextlab
from contextlab.extension.gateway import (
    FORBIDDEN,
    QUARANTINED,
    RATE_LIMITED,
    UPSTREAM_UNAVAILABLE,
    CallNote,
    Gateway,
    current_note,
)
from contextlab.extension.principals import Caller, ToolTarget
from contextlab.extension.prompts import PromptStore
from contextlab.extension.router import (
    UPSTREAM_URI_SCHEME,
    BreakerOpen,
    Route,
    Router,
    parse_upstream_resource_uri,
)
from contextlab.extension.subscriptions import CountingBus, ResourceWatcher
from contextlab.extension.tool_search import (
    MAX_K,
    SEARCH_DESCRIPTION,
    SEARCH_TOOL,
    SearchToolsResult,
    ToolSearch,
    listing_filter,
)
from contextlab.extension.upstreams import MODERN_VERSION, UpstreamError, UpstreamRPCError
from contextlab.providers.base import Provider
from contextlab.providers.metrics import RequestStats
from contextlab.state import AuditEntry, AuditWriter

log = logging.getLogger(__name__)

USER_SCOPE_KEY = "contextlab.user"
"""ASGI scope key under which the bridge passes the authenticated principal's name."""
CALLER_SCOPE_KEY = "contextlab.caller"
"""ASGI scope key under which the bridge passes the authenticated `Caller`."""

INSTRUCTIONS = (
    "ContextLab serves the context of a Jupyter workspace. Tools are namespaced by provider: "
    "notebooks__* (list, read, search notebooks), kernels__* (running kernels and live variables, "
    "including DataFrames), sql__* (DuckDB schemas and read-only queries), logs__* and metrics__*. "
    "Start with sql__schema or kernels__variables before writing code or SQL."
)


INSTRUCTIONS_PROMPT = "contextlab.instructions"
"""The prompt that holds the endpoint's own server instructions (versioned like a tool description)."""


def parse_jsonrpc(body: bytes) -> tuple[Any, tuple[int, str] | None]:
    """The parsed message, and a JSON-RPC error (code, message) if it is not one well-formed message.

    The SDK would reject these too, but with pydantic union dumps; callers deserve one precise line.
    """
    try:
        message = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, (PARSE_ERROR, f"Parse error: the body is not valid JSON ({exc}).")
    return message, jsonrpc_message_error(message)


def jsonrpc_message_error(message: Any) -> tuple[int, str] | None:
    """A JSON-RPC error (code, message) for a parsed body that is not one well-formed message, else None."""
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


@dataclass(frozen=True)
class AdminResource:
    """A read-only JSON resource only admins see (the audit log, the event stream)."""

    name: str
    description: str
    read: Callable[[], str]
    version: Callable[[], Hashable] | None = None

    def listing(self, uri: str) -> dict[str, Any]:
        return {"uri": uri, "name": self.name, "description": self.description, "mimeType": "application/json"}


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
        gateway: Gateway,
        router: Router | None = None,
        max_request_bytes: int = 4 * 1024 * 1024,
        session_idle_timeout: float = 1800,
        resource_poll_seconds: float = 2.0,
        admin_resources: Mapping[str, AdminResource] | None = None,
        prompts: PromptStore | None = None,
    ) -> None:
        self.providers = providers
        self.prompts = prompts
        self.tool_search: ToolSearch | None = None
        self.audit = audit
        self.stats = stats
        self.gateway = gateway
        self.router = router
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
        self.admin_resources = dict(admin_resources or {})
        self.watcher = ResourceWatcher(
            self.server, providers, self.bus, resource_poll_seconds, extra_versions=self._admin_resource_versions
        )
        self.manifests = [provider.manifest() for provider in providers]
        self.tool_names = {tool.name for manifest in self.manifests for tool in manifest.tools}
        self.prompt_names = {name for manifest in self.manifests for name in manifest.prompts}
        # Which built-in provider serves a resource, by URI scheme (for policy decisions on reads).
        self.resource_schemes = {
            template.split("://", 1)[0]: manifest.name
            for manifest in self.manifests
            for template in manifest.resource_templates
            if "://" in template
        }
        self.server.middleware.append(self._observe)
        self.server.middleware.append(self._govern)
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
        self._legacy_sessions: OrderedDict[str, Any] = OrderedDict()
        self._background: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._watcher_task: asyncio.Task[None] | None = None
        if router is not None:
            router.on_catalog_changed.append(self.announce_lists_changed)
        if prompts is not None:
            prompts.listeners.append(self._prompt_changed)
            self._apply_instructions()

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
        if self.router is not None:
            await self.router.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._watcher_task is not None:
            self._watcher_task.cancel()
        if self.router is not None:
            await self.router.stop()
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
        self._legacy_sessions.pop(session_id, None)

    def upstream_route(self, name: Any) -> Route | None:
        """The route of an upstream tool the lean path may forward, or None."""
        return self.router.routes.get(name) if self.router is not None and isinstance(name, str) else None

    async def forward_tool_call(
        self,
        caller: Caller,
        message: Mapping[str, Any],
        route: Route,
        *,
        modern: bool,
        session_id: str | None,
        protocol_version: str | None = None,
    ) -> dict[str, Any]:
        """Answer a `tools/call` for an upstream tool: gateway checks, DLP, forward, DLP, audit.

        This is the lean path: the handler has authenticated and parsed the request, and the answer
        is one JSON-RPC response object (the streamable-HTTP transport allows a JSON response).
        """
        assert self.router is not None
        request_id = message.get("id")
        params = message.get("params") or {}
        note = CallNote(caller=caller, upstream=route.upstream.name)
        token = current_note.set(note)
        started = time.perf_counter()
        outcome, code, error = "ok", None, None
        try:
            arguments = params.get("arguments") or {}
            if not isinstance(arguments, dict):
                raise MCPError(INVALID_PARAMS, '"arguments" must be an object.')
            self.gateway.admit(caller, route.target)
            self._note_prompt(note, route.target.name, caller)
            arguments = self.gateway.redact(arguments, "arguments")
            result = await self._upstream_call(route, caller, arguments)
            result = self.gateway.redact(result, "results")
            if result.get("isError"):
                outcome, error = "tool_error", _first_text(result)
            response = {"jsonrpc": "2.0", "id": request_id, "result": _era_result(result, modern)}
        except MCPError as exc:
            outcome, code, error = _error_outcome(exc), exc.code, exc.message
            response = {"jsonrpc": "2.0", "id": request_id, "error": exc.error.model_dump(exclude_none=True)}
        finally:
            current_note.reset(token)
        latency_ms = (time.perf_counter() - started) * 1000
        self.stats.observe("tools/call", outcome, latency_ms)
        if self.audit is not None:
            self.audit.record(
                _noted_entry(
                    note,
                    principal=caller.name,
                    session_id=session_id,
                    protocol_version=protocol_version or (MODERN_VERSION if modern else None),
                    method="tools/call",
                    target=route.target.name,
                    args_sha256=_args_hash(params.get("arguments")),
                    latency_ms=latency_ms,
                    outcome=outcome,
                    error_code=code,
                    error=error,
                )
            )
        return response

    async def _upstream_call(self, route: Route, caller: Caller, arguments: Mapping[str, Any]) -> dict[str, Any]:
        assert self.router is not None
        with _upstream_errors():
            return await self.router.call_tool(route, caller, arguments)

    def _prompt_changed(self, prompt: str, _action: str) -> None:
        if prompt == INSTRUCTIONS_PROMPT:
            self._apply_instructions()
        else:
            self.announce_tools_changed()

    def _apply_instructions(self) -> None:
        # Stateless clients read them on every discover; session clients on their next initialize.
        version = self.prompts.stable(INSTRUCTIONS_PROMPT) if self.prompts is not None else None
        self.server._lowlevel_server.instructions = version.content.description if version else INSTRUCTIONS

    def prompt_catalog(self) -> list[tuple[dict[str, Any], ToolTarget]]:
        """Prompts that are not tools: the endpoint's server instructions and the Copilot's templates."""
        from contextlab.copilot.engine import TARGETS

        target = ToolTarget(INSTRUCTIONS_PROMPT, "contextlab", "instructions", upstream=False, attributes={})
        items = [({"name": INSTRUCTIONS_PROMPT, "description": INSTRUCTIONS}, target)]
        for factory in TARGETS.values():
            spec = factory()
            template = ToolTarget(spec.template_name, "copilot", spec.name, upstream=False, attributes={})
            items.append(({"name": spec.template_name, "description": spec.template}, template))
        return items

    def _note_prompt(self, note: CallNote, name: str, caller: Caller) -> None:
        if self.prompts is not None:
            version, label = self.prompts.resolve(name, caller.name)
            if version is not None:
                note.prompt_version, note.prompt_label = version.version, label

    async def tool_catalog(self) -> list[tuple[dict[str, Any], ToolTarget]]:
        """Every tool the endpoint can route (built-in and upstream) with its published text, for every caller."""
        items = [
            (tool.model_dump(by_alias=True, exclude_none=True, mode="json"), self._builtin_tool_target(tool.name))
            for tool in await self.server.list_tools()
        ]
        if self.router is not None:
            await self.router.refresh()
            items += self.router.tools()
        return items

    def attach_tool_search(self, search: ToolSearch) -> None:
        """Serve the `search_tools` meta-tool and the `top_k` listing mode from `search`."""
        self.tool_search = search

        async def search_tools(
            query: Annotated[str, Field(description="The task in plain words, e.g. 'current time in Tokyo'.")],
            k: Annotated[int, Field(ge=1, le=MAX_K, description="How many tools to return.")] = search.default_k,
        ) -> SearchToolsResult:
            note = current_note.get()
            if note is None or note.caller is None:
                raise ToolError("search_tools needs an authenticated caller.")
            try:
                return await search.search(note.caller, query, k)
            except ValueError as exc:
                raise ToolError(str(exc)) from exc

        self.server.add_tool(
            search_tools,
            name=SEARCH_TOOL,
            title="Search tools",
            description=SEARCH_DESCRIPTION,
            annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True),
        )
        self.tool_names.add(SEARCH_TOOL)
        if self.router is not None:
            self.router.on_catalog_changed.append(search.mark_stale)
        if self.prompts is not None:
            self.prompts.listeners.append(search.mark_stale)

    # -- list changes -----------------------------------------------------------------------------
    def announce_tools_changed(self) -> None:
        """Tell every client that the tool list (or a tool's text) changed."""
        task = asyncio.get_running_loop().create_task(self._announce_tools_changed())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _announce_tools_changed(self) -> None:
        await self.bus.publish(ToolsListChanged())
        for session_id, session in list(self._legacy_sessions.items()):
            try:
                await session.send_tool_list_changed()
            except Exception:
                self._legacy_sessions.pop(session_id, None)

    def announce_lists_changed(self) -> None:
        """Tell every client that tools, prompts and resources may have changed."""
        task = asyncio.get_running_loop().create_task(self._announce_lists_changed())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _announce_lists_changed(self) -> None:
        for event in (ToolsListChanged(), PromptsListChanged(), ResourcesListChanged()):
            await self.bus.publish(event)
        for session_id, session in list(self._legacy_sessions.items()):
            try:
                await session.send_tool_list_changed()
                await session.send_prompt_list_changed()
                await session.send_resource_list_changed()
            except Exception:
                self._legacy_sessions.pop(session_id, None)

    # -- middleware -------------------------------------------------------------------------------
    async def _govern(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        caller = _caller(ctx)
        if caller is None:
            return await call_next(ctx)
        self._remember_session(ctx)
        method = ctx.method
        params = ctx.params or {}
        if method == "tools/list":
            return await self._list(ctx, call_next, caller, "tools", self._builtin_tool_target, "tools")
        if method == "prompts/list":
            return await self._list(ctx, call_next, caller, "prompts", self._builtin_tool_target, "prompts")
        if method == "resources/list":
            listed = await self._list(ctx, call_next, caller, "resources", None, "resources")
            listed["resources"] = [
                r
                for r in listed["resources"]
                if (target := self._builtin_resource_target(str(r.get("uri", "")))) is None
                or self.gateway.may_list(caller, target)
            ]
            if caller.is_admin:
                listed["resources"] = listed["resources"] + [r.listing(uri) for uri, r in self.admin_resources.items()]
            return listed
        if method == "tools/call":
            return await self._call_tool(ctx, call_next, caller, params)
        if method == "prompts/get":
            name = params.get("name")
            if self.router is not None and name in self.router.prompt_routes:
                upstream, _ = self.router.prompt_routes[name]
                target = ToolTarget(name, upstream.name, name, upstream=True, attributes=upstream.attributes)
                self.gateway.admit(caller, target, kind="prompt")
                _note_upstream(upstream.name)
                with _upstream_errors():
                    result = await self.router.get_prompt(name, caller, params.get("arguments") or {})
                return _era_result(self.gateway.redact(result, "results"), _is_modern(ctx))
            if name in self.prompt_names:
                self.gateway.admit(caller, self.gateway.builtin_target(name), kind="prompt")
        if method in ("resources/read", "resources/subscribe") and str(params.get("uri", "")) in self.admin_resources:
            uri = str(params["uri"])
            if not caller.is_admin:
                raise MCPError(INVALID_PARAMS, f"Unknown resource {uri!r}. Call resources/list for the URIs.")
            if method == "resources/subscribe":
                return await call_next(ctx)
            text = await asyncio.to_thread(self.admin_resources[uri].read)
            return _era_result(
                {"contents": [{"uri": uri, "mimeType": "application/json", "text": text}]}, _is_modern(ctx)
            )
        if method == "resources/read":
            uri = str(params.get("uri", ""))
            if self.router is not None and uri.startswith(UPSTREAM_URI_SCHEME + "://"):
                try:
                    server, original = parse_upstream_resource_uri(uri)
                    upstream = self.router.upstreams[server]
                except KeyError:
                    raise MCPError(INVALID_PARAMS, f"Unknown resource {uri!r}. Call resources/list.") from None
                self.gateway.admit(
                    caller,
                    ToolTarget(uri, server, original, upstream=True, attributes=upstream.attributes),
                    kind="resource",
                )
                _note_upstream(server)
                with _upstream_errors():
                    result, _target = await self.router.read_resource(uri, caller)
                return _era_result(self.gateway.redact(result, "results"), _is_modern(ctx))
            target = self._builtin_resource_target(uri)
            if target is not None:
                self.gateway.admit(caller, target, kind="resource")
                return self._redacted(await call_next(ctx))
        return await call_next(ctx)

    def _builtin_resource_target(self, uri: str) -> ToolTarget | None:
        server = self.resource_schemes.get(uri.split("://", 1)[0]) if "://" in uri else None
        if server is None:
            return None
        attributes = self.gateway.builtin_attributes.get(server) or self.gateway.builtin_attributes.get("*") or {}
        return ToolTarget(name=uri, server=server, tool=uri, upstream=False, attributes=attributes)

    def _redacted(self, result: HandlerResult) -> HandlerResult:
        if "results" not in self.gateway.policy.policy.dlp.apply_to:
            return result
        data = _as_dict(result)
        redacted = self.gateway.redact(data, "results")
        return result if redacted is data else redacted

    async def _list(
        self,
        ctx: ServerRequestContext[Any, Any],
        call_next: CallNext,
        caller: Caller,
        key: str,
        builtin_target: Any,
        upstream_kind: str,
    ) -> HandlerResult:
        result = await call_next(ctx)
        data = _as_dict(result)
        items = data.get(key) or []
        if builtin_target is not None:
            items = self.gateway.visible(caller, ((item, builtin_target(item["name"])) for item in items))
        if self.router is not None:
            await self.router.refresh()
            upstream = getattr(self.router, upstream_kind)()
            items = items + self.gateway.visible(caller, upstream)
        if key == "tools" and self.prompts is not None:
            items = [self.prompts.apply(item, caller.name) for item in items]
        if key == "tools" and self.tool_search is not None:
            request = ctx.request
            query_params = getattr(request, "query_params", None) or {}
            try:
                top_k, query, k = listing_filter(ctx.params or {}, query_params)
                if top_k:
                    items = await self.tool_search.top_k_listing(caller, items, query, k)
            except ValueError as exc:
                raise MCPError(INVALID_PARAMS, str(exc)) from exc
        data[key] = items
        return data

    def _admin_resource_versions(self) -> dict[str, Hashable]:
        return {uri: r.version() for uri, r in self.admin_resources.items() if r.version is not None}

    def _builtin_tool_target(self, name: str) -> ToolTarget:
        if name == SEARCH_TOOL:
            attributes = self.gateway.builtin_attributes.get("contextlab") or self.gateway.builtin_attributes.get("*")
            return ToolTarget(name, "contextlab", name, upstream=False, attributes=attributes or {})
        return self.gateway.builtin_target(name)

    async def _call_tool(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext, caller: Caller, params: Mapping[str, Any]
    ) -> HandlerResult:
        name = params.get("name")
        route = self.upstream_route(name)
        if route is None and name not in self.tool_names and self.router is not None:
            await self.router.refresh()  # a tool of an upstream not listed yet, or listed long ago
            route = self.upstream_route(name)
        if route is not None:
            outer = current_note.get()
            if outer is not None:
                outer.audited = True
            response = await self.forward_tool_call(
                caller, {"id": ctx.request_id, "params": params}, route, modern=_is_modern(ctx), session_id=None
            )
            if "error" in response:
                error = response["error"]
                raise MCPError(error["code"], error["message"], data=error.get("data"))
            return response["result"]
        if name not in self.tool_names:
            if self.router is not None and isinstance(name, str) and self.router.quarantined(name):
                raise MCPError(
                    QUARANTINED,
                    f"Tool {name!r} is quarantined: its description looks like tool poisoning. An admin can "
                    "review it with `contextlab registry reviews` and approve it with `contextlab registry approve`.",
                )
            raise MCPError(
                INVALID_PARAMS, f"Unknown tool {name!r}. Call tools/list to see the tools this server offers."
            )
        self.gateway.admit(caller, self._builtin_tool_target(name))
        note = current_note.get()
        if note is not None:
            self._note_prompt(note, name, caller)
        arguments = params.get("arguments")
        if isinstance(arguments, dict) and "arguments" in self.gateway.policy.policy.dlp.apply_to:
            redacted = self.gateway.redact(arguments, "arguments")
            if redacted is not arguments:
                ctx = dataclasses.replace(ctx, params={**params, "arguments": redacted})
        return self._redacted(await call_next(ctx))

    def _remember_session(self, ctx: ServerRequestContext[Any, Any]) -> None:
        request = ctx.request
        session_id = request.headers.get("mcp-session-id") if request is not None else None
        if session_id and session_id not in self._legacy_sessions:
            self._legacy_sessions[session_id] = ctx.session
            while len(self._legacy_sessions) > 10_000:
                self._legacy_sessions.popitem(last=False)

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
        note = CallNote(caller=_caller(ctx))
        token = current_note.set(note)
        try:
            result = await call_next(ctx)
            if _is_tool_error(result):
                outcome, error = "tool_error", _first_text(result)
            return result
        except MCPError as exc:
            outcome, code, error = _error_outcome(exc), exc.code, exc.message
            raise
        except ValidationError as exc:
            outcome, code, error = "error", INVALID_PARAMS, str(exc)
            raise
        except BaseException as exc:
            outcome, code, error = "error", INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"
            raise
        finally:
            current_note.reset(token)
            latency_ms = (time.perf_counter() - started) * 1000
            self.stats.observe(ctx.method, outcome, latency_ms)
            if self.audit is not None and not note.audited:
                self.audit.record(_audit_entry(ctx, outcome, code, error, latency_ms, note))


@contextlib.contextmanager
def _upstream_errors() -> Iterator[None]:
    """Upstream failures as MCP errors: unavailable (-32010, naming the server) or the upstream's own error."""
    try:
        yield
    except BreakerOpen as exc:
        raise MCPError(UPSTREAM_UNAVAILABLE, str(exc), data={"server": exc.server}) from exc
    except UpstreamError as exc:
        raise MCPError(
            UPSTREAM_UNAVAILABLE, f"{exc} The other servers are unaffected.", data={"server": exc.server}
        ) from exc
    except UpstreamRPCError as exc:
        error = exc.error
        code = error.get("code")
        raise MCPError(
            code if isinstance(code, int) else INTERNAL_ERROR, str(error.get("message", "")), data=error.get("data")
        ) from exc


def _error_outcome(exc: MCPError) -> str:
    return "denied" if exc.code in (FORBIDDEN, RATE_LIMITED, QUARANTINED) else "error"


def _caller(ctx: ServerRequestContext[Any, Any]) -> Caller | None:
    scope = getattr(ctx.request, "scope", None) or {}
    return scope.get(CALLER_SCOPE_KEY)


def _note_upstream(server: str) -> None:
    note = current_note.get()
    if note is not None:
        note.upstream = server


def _is_modern(ctx: ServerRequestContext[Any, Any]) -> bool:
    return ctx.protocol_version == MODERN_VERSION


def _era_result(result: Mapping[str, Any], modern: bool) -> dict[str, Any]:
    """An upstream result shaped for the caller's protocol era (resultType only on 2026-07-28)."""
    out = {k: v for k, v in result.items() if k != "resultType"}
    meta = out.get("_meta")
    if isinstance(meta, dict) and "io.modelcontextprotocol/serverInfo" in meta:
        meta = {k: v for k, v in meta.items() if k != "io.modelcontextprotocol/serverInfo"}
        if meta:
            out["_meta"] = meta
        else:
            out.pop("_meta")
    if modern:
        out["resultType"] = "complete"
    return out


def _as_dict(result: HandlerResult) -> dict[str, Any]:
    if isinstance(result, dict):
        return dict(result)
    return result.model_dump(by_alias=True, exclude_none=True, mode="json")  # type: ignore[union-attr]


def _args_hash(arguments: Any) -> str:
    return hashlib.sha256(json.dumps(arguments or {}, sort_keys=True, default=str).encode()).hexdigest()


def _audit_entry(
    ctx: ServerRequestContext[Any, Any],
    outcome: str,
    code: int | None,
    error: str | None,
    latency_ms: float,
    note: CallNote,
) -> AuditEntry:
    params = ctx.params or {}
    target = args_hash = None
    if ctx.method == "tools/call":
        target = params.get("name")
        args_hash = _args_hash(params.get("arguments"))
    elif ctx.method == "prompts/get":
        target = params.get("name")
    elif ctx.method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
        target = params.get("uri")
    request = ctx.request
    scope = getattr(request, "scope", None) or {}
    client_params = getattr(ctx.session, "client_params", None)
    client_info = getattr(client_params, "client_info", None)
    return _noted_entry(
        note,
        principal=scope.get(USER_SCOPE_KEY) or "anonymous",
        client=f"{client_info.name}/{client_info.version}" if client_info else None,
        session_id=request.headers.get("mcp-session-id") if request is not None else None,
        protocol_version=ctx.protocol_version,
        method=ctx.method,
        target=target,
        args_sha256=args_hash,
        latency_ms=latency_ms,
        outcome=outcome,
        error_code=code,
        error=error,
    )


def _noted_entry(note: CallNote, *, latency_ms: float, error: str | None, **fields: Any) -> AuditEntry:
    """An audit entry with what the gateway decided (from the request's `CallNote`)."""
    return AuditEntry(
        latency_ms=round(latency_ms, 3),
        error=error[:2000] if error else None,
        decision=note.decision,
        redactions=note.redactions,
        redaction_kinds=dict(note.kinds) or None,
        upstream=note.upstream,
        prompt_version=note.prompt_version,
        prompt_label=note.prompt_label,
        **fields,
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
