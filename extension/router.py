"""The router: one catalog over every enabled upstream, calls routed to the owning server.

Tool, prompt and resource names are namespaced by the registered server name (`github__create_issue`),
so adding a server never renames another's tools. Each upstream keeps a pool of connections per
caller identity, a circuit breaker, bounded retries for idempotent calls, and caches for its lists
and for the results of tools marked cacheable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
import jsonschema
from sqlalchemy import select
from sqlalchemy.orm import Session

from contextlab.extension.poisoning import description_fingerprint, scan_tool
from contextlab.extension.principals import Caller, ToolTarget
from contextlab.extension.registry import Registry
from contextlab.extension.upstreams import (
    ConnectionSpec,
    HttpUpstreamConnection,
    StdioUpstreamConnection,
    UpstreamConnection,
    UpstreamError,
    UpstreamRPCError,
)
from contextlab.state import StateStore
from contextlab.state.models import ToolReviewRow

log = logging.getLogger(__name__)

SEPARATOR = "__"
UPSTREAM_URI_SCHEME = "upstream"
CATALOG_IDENTITY = "contextlab-gateway"
MAX_LIST_PAGES = 50


class BreakerOpen(Exception):
    def __init__(self, server: str, retry_in: float, last_error: str | None) -> None:
        cause = f" Last error: {last_error}" if last_error else ""
        super().__init__(
            f"Upstream {server!r} is unavailable (circuit breaker open after repeated failures); "
            f"the gateway will try it again in {retry_in:.0f} s.{cause}"
        )
        self.server = server
        self.retry_in = retry_in
        self.last_error = last_error


class CircuitBreaker:
    """closed → (N consecutive failures) → open → (cool-down) → half-open → one trial → closed or open."""

    def __init__(self, *, threshold: int = 5, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.last_error: str | None = None
        self._trial = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.cooldown else "open"

    def before_call(self, server: str) -> None:
        state = self.state
        if state == "open" or (state == "half-open" and self._trial):
            assert self.opened_at is not None
            raise BreakerOpen(server, max(0.0, self.cooldown - (self.clock() - self.opened_at)), self.last_error)
        if state == "half-open":
            self._trial = True

    def success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self._trial = False

    def abandon(self) -> None:
        """The call was cancelled before it could tell: let the next call be the trial."""
        self._trial = False

    def failure(self, reason: str | None = None) -> None:
        self.failures += 1
        self.last_error = reason
        if self._trial or self.failures >= self.threshold:
            self.opened_at = self.clock()
        self._trial = False


class TTLCache:
    """A bounded LRU whose entries expire."""

    def __init__(self, max_entries: int = 2048, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._data: OrderedDict[Any, tuple[float, Any]] = OrderedDict()

    def get(self, key: Any) -> Any | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[0] < self.clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return item[1]

    def put(self, key: Any, value: Any, ttl: float) -> None:
        self._data[key] = (self.clock() + ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


@dataclass
class Catalog:
    """What one upstream offered the last time it was listed."""

    tools: list[dict[str, Any]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    fetched_at: float = 0.0


@dataclass(frozen=True)
class Route:
    upstream: Upstream
    original: str
    tool: dict[str, Any]
    target: ToolTarget
    idempotent: bool
    cacheable: bool


class Upstream:
    """One registered server: its connections (per caller identity), breaker, catalog and caches."""

    def __init__(
        self,
        spec: ConnectionSpec,
        record: Mapping[str, Any],
        *,
        max_sessions: int = 64,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.spec = spec
        self.record = dict(record)
        self.name = spec.name
        self.max_sessions = max_sessions
        self.breaker = breaker or CircuitBreaker()
        self.catalog: Catalog | None = None
        self.catalog_error: str | None = None
        self.results = TTLCache()
        self.on_list_changed: Callable[[Upstream], None] | None = None
        self._connections: OrderedDict[str, UpstreamConnection] = OrderedDict()
        self._http: aiohttp.ClientSession | None = None
        if spec.transport == "http":
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64), raise_for_status=False)

    @property
    def attributes(self) -> dict[str, Any]:
        return dict(self.record.get("attributes") or {})

    @property
    def retries(self) -> int:
        return int(self.record.get("retries", 2))

    @property
    def per_caller(self) -> bool:
        return self.record.get("session_scope", "shared" if self.spec.transport == "stdio" else "caller") == "caller"

    def connection(self, identity: str) -> UpstreamConnection:
        if not self.per_caller:
            identity = CATALOG_IDENTITY  # one session (one process, for stdio) shared by every caller
        conn = self._connections.get(identity)
        if conn is None:
            if self._http is not None:
                conn = HttpUpstreamConnection(self.spec, self._http)
            else:
                conn = StdioUpstreamConnection(self.spec)
            conn.on_notification = self._notification
            self._connections[identity] = conn
            while len(self._connections) > self.max_sessions:
                _, oldest = self._connections.popitem(last=False)
                _spawn(oldest.close())
        else:
            self._connections.move_to_end(identity)
        return conn

    def _notification(self, message: Mapping[str, Any]) -> None:
        if str(message.get("method", "")).endswith("/list_changed") and self.catalog is not None:
            self.catalog.fetched_at = 0.0  # stale: the next listing refetches
            if self.on_list_changed is not None:
                self.on_list_changed(self)

    async def request(
        self, identity: str, method: str, params: Mapping[str, Any] | None = None, *, idempotent: bool = False
    ) -> dict[str, Any]:
        """One request through the breaker, retried with backoff when it is safe to retry."""
        attempt = 0
        while True:
            self.breaker.before_call(self.name)
            conn = self.connection(identity)
            try:
                result = await conn.request(method, params)
            except UpstreamRPCError:
                self.breaker.success()  # the server is alive and answered
                raise
            except UpstreamError as exc:
                self.breaker.failure(str(exc))
                if attempt >= self.retries or not (idempotent or exc.retryable):
                    raise
                attempt += 1
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
                continue
            except BaseException:
                self.breaker.abandon()  # cancelled (caller left, listing timed out): no verdict
                raise
            self.breaker.success()
            return result

    async def list_all(self, method: str, key: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(MAX_LIST_PAGES):
            result = await self.request(CATALOG_IDENTITY, method, {"cursor": cursor} if cursor else {}, idempotent=True)
            page = result.get(key)
            if not isinstance(page, list):
                raise UpstreamError(self.name, f"answered {method} without a {key!r} list")
            items.extend(item for item in page if isinstance(item, dict))
            cursor = result.get("nextCursor")
            if not cursor:
                break
        return items

    async def fetch_catalog(self) -> Catalog:
        conn = self.connection(CATALOG_IDENTITY)
        if not conn.connected:
            self.breaker.before_call(self.name)
            try:
                await conn.connect()
            except UpstreamError as exc:
                self.breaker.failure(str(exc))
                raise
            except BaseException:
                self.breaker.abandon()
                raise
            self.breaker.success()
        capabilities = conn.capabilities
        catalog = Catalog(fetched_at=time.monotonic())
        for tool in await self.list_all("tools/list", "tools"):
            problem = _tool_problem(tool)
            if problem:
                catalog.rejected.append({"tool": str(tool.get("name")), "reason": problem})
            else:
                catalog.tools.append(tool)
        if "prompts" in capabilities:
            with contextlib.suppress(UpstreamRPCError):
                catalog.prompts = await self.list_all("prompts/list", "prompts")
        if "resources" in capabilities:
            with contextlib.suppress(UpstreamRPCError):
                catalog.resources = await self.list_all("resources/list", "resources")
        return catalog

    async def health_check(self) -> dict[str, Any]:
        started = time.perf_counter()
        health: dict[str, Any] = {"checked_at": datetime.now(UTC).isoformat(), "breaker": self.breaker.state}
        try:
            conn = self.connection(CATALOG_IDENTITY)
            if not conn.connected:
                await conn.connect()
            try:
                await conn.request("ping", {})
            except UpstreamRPCError:
                pass  # 2026-07-28 servers may not serve ping; a JSON-RPC answer still shows it is alive
        except UpstreamError as exc:
            health.update(status="down", latency_ms=None, last_error=str(exc))
        else:
            health.update(
                status="up",
                latency_ms=round((time.perf_counter() - started) * 1000, 2),
                last_error=self.catalog_error,
                protocol_version=conn.protocol_version,
                server_info=conn.server_info,
            )
        if isinstance(conn := self._connections.get(CATALOG_IDENTITY), StdioUpstreamConnection):
            health["stderr_bytes"] = conn.stderr_bytes
            health["stderr_tail"] = list(conn.stderr_tail)[-5:]
        if self.catalog is not None:
            health["tools"] = len(self.catalog.tools)
            health["rejected_tools"] = self.catalog.rejected
            health["quarantined_tools"] = [q["tool"] for q in self.catalog.quarantined]
        return health

    async def close(self) -> None:
        connections, self._connections = list(self._connections.values()), OrderedDict()
        await asyncio.gather(*(conn.close() for conn in connections), return_exceptions=True)
        if self._http is not None:
            await self._http.close()


def _tool_problem(tool: Mapping[str, Any]) -> str | None:
    name = tool.get("name")
    if not isinstance(name, str) or not name or len(name) > 128 or SEPARATOR in name:
        return f"invalid tool name {name!r}"
    schema = tool.get("inputSchema")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return "inputSchema must be a JSON Schema object with type 'object'"
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
        if isinstance(tool.get("outputSchema"), dict):
            jsonschema.Draft202012Validator.check_schema(tool["outputSchema"])
    except jsonschema.SchemaError as exc:
        return f"invalid JSON Schema: {exc.message}"
    return None


class ToolReviews:
    """Quarantine decisions for flagged upstream tools, keyed by the description's fingerprint."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def check(self, server: str, tool: Mapping[str, Any]) -> list[dict[str, str]]:
        """The findings that keep this tool quarantined ([] when clean or approved as it is now)."""
        findings = scan_tool(tool)
        if not findings:
            return []
        fingerprint = description_fingerprint(tool)
        name = str(tool.get("name"))
        found = [{"kind": f.kind, "detail": f.detail, "excerpt": f.excerpt} for f in findings]
        with Session(self.store.engine) as session, session.begin():
            row = session.get(ToolReviewRow, (server, name))
            if row is not None and row.description_sha256 == fingerprint and row.status == "approved":
                return []
            if row is None:
                row = ToolReviewRow(server=server, tool=name)
                session.add(row)
            row.description_sha256 = fingerprint
            row.status = "quarantined"
            row.findings = found
            row.reviewer = None
            row.updated_at = datetime.now(UTC)
        return found

    def approve(self, server: str, tool: str, reviewer: str) -> dict[str, Any]:
        with Session(self.store.engine) as session, session.begin():
            row = session.get(ToolReviewRow, (server, tool))
            if row is None:
                raise KeyError(f"{server}{SEPARATOR}{tool} is not quarantined")
            row.status = "approved"
            row.reviewer = reviewer
            row.updated_at = datetime.now(UTC)
            return _review_dict(row)

    def list(self, status: str | None = None) -> list[dict[str, Any]]:
        query = select(ToolReviewRow).order_by(ToolReviewRow.server, ToolReviewRow.tool)
        if status:
            query = query.where(ToolReviewRow.status == status)
        with Session(self.store.engine) as session:
            return [_review_dict(row) for row in session.scalars(query)]


def _review_dict(row: ToolReviewRow) -> dict[str, Any]:
    return {
        "server": row.server,
        "tool": row.tool,
        "status": row.status,
        "findings": row.findings,
        "reviewer": row.reviewer,
        "updated_at": row.updated_at.isoformat() if row.updated_at else None,
    }


class Router:
    """Keeps one `Upstream` per enabled registry entry and the merged routing table."""

    def __init__(
        self,
        registry: Registry,
        reviews: ToolReviews,
        *,
        list_ttl_seconds: float = 30.0,
        health_interval_seconds: float = 60.0,
        breaker_threshold: int = 5,
        breaker_cooldown_seconds: float = 30.0,
        max_sessions_per_upstream: int = 64,
    ) -> None:
        self.registry = registry
        self.reviews = reviews
        self.list_ttl_seconds = list_ttl_seconds
        self.health_interval_seconds = health_interval_seconds
        self.breaker_threshold = breaker_threshold
        self.breaker_cooldown_seconds = breaker_cooldown_seconds
        self.max_sessions_per_upstream = max_sessions_per_upstream
        self.upstreams: dict[str, Upstream] = {}
        self.routes: dict[str, Route] = {}
        self.prompt_routes: dict[str, tuple[Upstream, str]] = {}
        self.on_catalog_changed: list[Callable[[], None]] = []
        self.on_health: list[Callable[[str, dict[str, Any]], None]] = []
        self._refresh_lock = asyncio.Lock()
        self._sync_lock = asyncio.Lock()
        self._health_task: asyncio.Task[None] | None = None
        self._warm_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_status: dict[str, str] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.sync()
        self._warm_task = asyncio.create_task(self.refresh(), name="contextlab-upstream-catalogs")
        self._health_task = asyncio.create_task(self._health_loop(), name="contextlab-upstream-health")

    async def stop(self) -> None:
        for task in (self._health_task, self._warm_task):
            if task is not None:
                task.cancel()
        upstreams, self.upstreams = list(self.upstreams.values()), {}
        await asyncio.gather(*(u.close() for u in upstreams), return_exceptions=True)
        self.routes = {}

    async def sync(self, changed: str | None = None) -> None:
        """Bring the live upstreams in line with the registry; `changed` forces that one to reconnect."""
        async with self._sync_lock:  # registry changes may arrive faster than upstreams close
            await self._sync(changed)

    async def _sync(self, changed: str | None) -> None:
        wanted = {spec.name: (spec, record) for spec, record in self.registry.enabled_connections()}
        for name in list(self.upstreams):
            if name not in wanted or name == changed:
                await self.upstreams.pop(name).close()
        for name, (spec, record) in wanted.items():
            if name not in self.upstreams:
                upstream = Upstream(
                    spec,
                    record,
                    max_sessions=self.max_sessions_per_upstream,
                    breaker=CircuitBreaker(threshold=self.breaker_threshold, cooldown=self.breaker_cooldown_seconds),
                )
                upstream.on_list_changed = lambda _u: self._notify_changed()
                self.upstreams[name] = upstream
        self._rebuild_routes()
        self._notify_changed()

    def registry_listener(self, name: str, action: str) -> None:
        """Registry listener: reconcile on the router's loop (the registry may be changed from any thread)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(lambda: _spawn(self.sync(changed=name)))

    # -- catalog ---------------------------------------------------------------------------------
    async def refresh(self, *, force: bool = False) -> None:
        """Refetch the catalogs older than the list TTL, all upstreams concurrently."""
        now = time.monotonic()
        stale = [
            u
            for u in self.upstreams.values()
            if force or u.catalog is None or now - u.catalog.fetched_at > self.list_ttl_seconds
        ]
        if not stale:
            return
        async with self._refresh_lock:
            results = await asyncio.gather(*(self._fetch(u) for u in stale), return_exceptions=True)
        if any(results):
            self._rebuild_routes()

    async def _fetch(self, upstream: Upstream) -> bool:
        try:
            catalog = await asyncio.wait_for(upstream.fetch_catalog(), upstream.spec.timeout_seconds)
        except (UpstreamError, UpstreamRPCError, BreakerOpen, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                upstream.catalog_error = f"listing timed out after {upstream.spec.timeout_seconds:g} s"
            elif not (isinstance(exc, BreakerOpen) and upstream.catalog_error):  # keep the cause, not the symptom
                upstream.catalog_error = str(exc)
            log.warning("cannot list upstream %s: %s", upstream.name, upstream.catalog_error)
            if upstream.catalog is not None:
                upstream.catalog.fetched_at = time.monotonic()  # keep serving the last catalog; retry after the TTL
            return False
        clean = []
        for tool in catalog.tools:
            findings = await asyncio.to_thread(self.reviews.check, upstream.name, tool)
            if findings:
                catalog.quarantined.append({"tool": tool.get("name"), "findings": findings})
            else:
                clean.append(tool)
        catalog.tools = clean
        changed = upstream.catalog is None or _names(upstream.catalog) != _names(catalog)
        upstream.catalog = catalog
        upstream.catalog_error = None
        upstream.results.clear()
        if changed:
            self._notify_changed()
        return True

    def _rebuild_routes(self) -> None:
        routes: dict[str, Route] = {}
        prompts: dict[str, tuple[Upstream, str]] = {}
        for upstream in self.upstreams.values():
            if upstream.catalog is None:
                continue
            cacheable_globs = upstream.record.get("cacheable_tools") or []
            for tool in upstream.catalog.tools:
                original = tool["name"]
                public = f"{upstream.name}{SEPARATOR}{original}"
                annotations = tool.get("annotations") or {}
                routes[public] = Route(
                    upstream=upstream,
                    original=original,
                    tool={**tool, "name": public},
                    target=ToolTarget(
                        name=public, server=upstream.name, tool=original, upstream=True, attributes=upstream.attributes
                    ),
                    idempotent=bool(annotations.get("idempotentHint") or annotations.get("readOnlyHint")),
                    cacheable=any(fnmatchcase(original, g) for g in cacheable_globs),
                )
            for prompt in upstream.catalog.prompts:
                prompts[f"{upstream.name}{SEPARATOR}{prompt.get('name')}"] = (upstream, str(prompt.get("name")))
        self.routes = routes
        self.prompt_routes = prompts

    def _notify_changed(self) -> None:
        for callback in list(self.on_catalog_changed):
            try:
                callback()
            except Exception:
                log.exception("catalog change listener failed")

    def tools(self) -> list[tuple[dict[str, Any], ToolTarget]]:
        """Every routable upstream tool, renamed to its public name."""
        return [(route.tool, route.target) for route in self.routes.values()]

    def prompts(self) -> list[tuple[dict[str, Any], ToolTarget]]:
        out = []
        for public, (upstream, original) in self.prompt_routes.items():
            prompt = next(p for p in upstream.catalog.prompts if p.get("name") == original)  # type: ignore[union-attr]
            target = ToolTarget(public, upstream.name, original, upstream=True, attributes=upstream.attributes)
            out.append(({**prompt, "name": public}, target))
        return out

    def resources(self) -> list[tuple[dict[str, Any], ToolTarget]]:
        out = []
        for upstream in self.upstreams.values():
            for resource in upstream.catalog.resources if upstream.catalog else []:
                uri = str(resource.get("uri", ""))
                public = upstream_resource_uri(upstream.name, uri)
                target = ToolTarget(public, upstream.name, uri, upstream=True, attributes=upstream.attributes)
                out.append(
                    ({**resource, "uri": public, "name": f"{upstream.name}{SEPARATOR}{resource.get('name')}"}, target)
                )
        return out

    def quarantined(self, public_name: str) -> bool:
        server, _, tool = public_name.partition(SEPARATOR)
        upstream = self.upstreams.get(server)
        return bool(upstream and upstream.catalog and any(q["tool"] == tool for q in upstream.catalog.quarantined))

    # -- calls -----------------------------------------------------------------------------------
    async def call_tool(self, route: Route, caller: Caller, arguments: Mapping[str, Any]) -> dict[str, Any]:
        upstream = route.upstream
        key = None
        if route.cacheable:
            # Shared by every caller: the gateway has admitted this one already, and the upstream sees
            # the same credentials whoever calls.
            key = (route.original, json.dumps(arguments, sort_keys=True, default=str))
            cached = upstream.results.get(key)
            if cached is not None:
                return cached
        result = await upstream.request(
            caller.name,
            "tools/call",
            {"name": route.original, "arguments": dict(arguments)},
            idempotent=route.idempotent,
        )
        if key is not None and not result.get("isError"):
            upstream.results.put(key, result, float(upstream.record.get("cache_ttl_seconds", 60.0)))
        return result

    async def get_prompt(self, public_name: str, caller: Caller, arguments: Mapping[str, Any]) -> dict[str, Any]:
        upstream, original = self.prompt_routes[public_name]
        return await upstream.request(
            caller.name, "prompts/get", {"name": original, "arguments": dict(arguments)}, idempotent=True
        )

    async def read_resource(self, uri: str, caller: Caller) -> tuple[dict[str, Any], ToolTarget]:
        server, original = parse_upstream_resource_uri(uri)
        upstream = self.upstreams.get(server)
        if upstream is None:
            raise KeyError(uri)
        target = ToolTarget(uri, server, original, upstream=True, attributes=upstream.attributes)
        result = await upstream.request(caller.name, "resources/read", {"uri": original}, idempotent=True)
        for item in result.get("contents") or []:
            if isinstance(item, dict) and "uri" in item:
                item["uri"] = upstream_resource_uri(server, str(item["uri"]))
        return result, target

    # -- health ----------------------------------------------------------------------------------
    async def check_health(self, names: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
        chosen = [self.upstreams[n] for n in (names or self.upstreams) if n in self.upstreams]
        results = await asyncio.gather(*(self._health(u) for u in chosen))
        return {u.name: h for u, h in zip(chosen, results, strict=True)}

    async def _health(self, upstream: Upstream) -> dict[str, Any]:
        try:
            health = await asyncio.wait_for(upstream.health_check(), upstream.spec.timeout_seconds + 1)
        except TimeoutError:
            health = {
                "checked_at": datetime.now(UTC).isoformat(),
                "status": "down",
                "latency_ms": None,
                "last_error": f"no answer to ping within {upstream.spec.timeout_seconds:g} s",
                "breaker": upstream.breaker.state,
            }
        await asyncio.to_thread(self.registry.record_health, upstream.name, health)
        for callback in list(self.on_health):
            callback(upstream.name, health)
        return health

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self.health_interval_seconds)
            try:
                await self.check_health()
                await self.refresh()
            except Exception:
                log.exception("upstream health check failed")


_background: set[asyncio.Task[Any]] = set()


def _spawn(coro: Any) -> None:
    """Run a coroutine in the background, holding a reference so it is not collected mid-flight."""
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


def upstream_resource_uri(server: str, uri: str) -> str:
    """The gateway's URI for an upstream resource: `upstream://<server>/<percent-encoded original>`."""
    return f"{UPSTREAM_URI_SCHEME}://{server}/{quote(uri, safe='')}"


def parse_upstream_resource_uri(uri: str) -> tuple[str, str]:
    prefix = f"{UPSTREAM_URI_SCHEME}://"
    if not uri.startswith(prefix) or "/" not in uri[len(prefix) :]:
        raise KeyError(uri)
    server, _, encoded = uri[len(prefix) :].partition("/")
    return server, unquote(encoded)


def _names(catalog: Catalog) -> tuple[Any, ...]:
    return (
        sorted(json.dumps(t, sort_keys=True) for t in catalog.tools),
        sorted(str(p.get("name")) for p in catalog.prompts),
        sorted(str(r.get("uri")) for r in catalog.resources),
    )
