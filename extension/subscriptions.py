"""Resource change notifications for both protocol eras.

2026-07-28 clients open `subscriptions/listen` (the SDK serves it from a `SubscriptionBus`);
2025-11-25 clients call `resources/subscribe` and get `notifications/resources/updated` on their
session's standalone stream. Providers expose a version per resource URI; while anyone listens,
the watcher polls those versions and announces what changed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.server.subscriptions import InMemorySubscriptionBus, ResourcesListChanged, ResourceUpdated, ServerEvent
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, EmptyResult, SubscribeRequestParams, UnsubscribeRequestParams

from contextlab.providers.base import Provider

log = logging.getLogger(__name__)


class CountingBus(InMemorySubscriptionBus):
    """The in-process bus, also telling how many listen streams are open (so idle servers do not poll)."""

    def __init__(self) -> None:
        super().__init__()
        self.listeners = 0

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        unsubscribe = super().subscribe(listener)
        self.listeners += 1
        done = False

        def release() -> None:
            nonlocal done
            if not done:
                done = True
                self.listeners -= 1
            unsubscribe()

        return release


class ResourceWatcher:
    """Polls the providers' resource versions while anyone is subscribed and announces changes."""

    def __init__(
        self,
        server: MCPServer,
        providers: list[Provider],
        bus: CountingBus,
        interval: float,
        extra_versions: Callable[[], dict[str, Hashable]] | None = None,
    ) -> None:
        self.providers = providers
        self.extra_versions = extra_versions
        self.bus = bus
        self.interval = interval
        # uri -> session id -> that session's ServerSession (its connection-scoped stream survives the request)
        self._legacy: dict[str, dict[str, Any]] = {}
        self._baseline: dict[str, Hashable] | None = None
        # MCPServer has no public hook for these two handshake-era methods; the low-level server does.
        lowlevel = server._lowlevel_server  # noqa: SLF001
        lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, self._subscribe)
        lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, self._unsubscribe)

    async def versions(self) -> dict[str, Hashable]:
        def collect() -> dict[str, Hashable]:
            found: dict[str, Hashable] = {}
            for provider in self.providers:
                found.update(provider.resource_versions())
            if self.extra_versions is not None:
                found.update(self.extra_versions())
            return found

        return await asyncio.to_thread(collect)

    async def ensure_baseline(self) -> dict[str, Hashable]:
        if self._baseline is None:
            self._baseline = await self.versions()
        return self._baseline

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll_once()
            except Exception:
                log.exception("resource watcher poll failed")

    async def poll_once(self) -> None:
        if not self._legacy and self.bus.listeners == 0:
            self._baseline = None
            return
        previous = await self.ensure_baseline()
        current = await self.versions()
        self._baseline = current
        for uri in sorted(previous):
            if current.get(uri) != previous[uri]:
                await self._announce(uri)
        if current.keys() != previous.keys():
            await self.bus.publish(ResourcesListChanged())
            by_session = {key: s for sessions in self._legacy.values() for key, s in sessions.items()}
            for session in by_session.values():
                await self._send(session, lambda s: s.send_resource_list_changed())

    async def _announce(self, uri: str) -> None:
        await self.bus.publish(ResourceUpdated(uri=uri))
        for session_id, session in list(self._legacy.get(uri, {}).items()):
            if not await self._send(session, lambda s: s.send_resource_updated(uri)):
                self._legacy[uri].pop(session_id, None)

    @staticmethod
    async def _send(session: Any, send: Callable[[Any], Any]) -> bool:
        try:
            await send(session)
            return True
        except Exception as exc:  # the client went away; its subscription goes with it
            log.debug("dropping a resource subscription: %s", exc)
            return False

    async def _subscribe(self, ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        uri = str(params.uri)
        versions = await self.versions()
        if uri not in versions:
            raise MCPError(INVALID_PARAMS, f"No resource {uri!r} to subscribe to. Call resources/list for the URIs.")
        if self._baseline is None:
            self._baseline = versions
        self._legacy.setdefault(uri, {})[_session_key(ctx)] = ctx.session
        return EmptyResult()

    async def _unsubscribe(self, ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        sessions = self._legacy.get(str(params.uri), {})
        sessions.pop(_session_key(ctx), None)
        if not sessions:
            self._legacy.pop(str(params.uri), None)
        return EmptyResult()


def _session_key(ctx: ServerRequestContext[Any, Any]) -> str:
    request = ctx.request
    session_id = request.headers.get("mcp-session-id") if request is not None else None
    return session_id or str(id(ctx.session))
