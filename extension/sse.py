"""`GET {base_url}contextlab/api/events`: the event bus as Server-Sent Events.

Query: `topic` (a glob over topics, default `*`), `since` (resume after this event id; the
`Last-Event-ID` header, which browsers send when they reconnect, wins over it) and `once=1`
(send the stored backlog and close, for curl and scripts). Each event is one frame:
`id: <id>`, `event: <topic>`, `data: <json>`. A `: keep-alive` comment goes out when nothing
happened for `heartbeat` seconds. A consumer too slow to keep up gets an `overflow` frame and the
stream ends; EventSource reconnects on its own and resumes from the last id it saw.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from tornado import web
from tornado.iostream import StreamClosedError

from contextlab.extension.events import Event, EventBus, Subscription, validate_pattern

AUTH_RESOURCE = "contextlab"  # the same resource as the other ContextLab handlers
CONTENT_TYPE = "text/event-stream"
KEEP_ALIVE = ": keep-alive\n\n"
_BACKLOG_PAGE = 500


def format_event(event: Event) -> str:
    """One SSE frame. The JSON is a single line, so one `data:` line carries it."""
    return f"id: {event.id}\nevent: {event.topic}\ndata: {event.to_json()}\n\n"


def format_overflow(subscription: Subscription) -> str:
    # No `id:` line, so the client's Last-Event-ID stays at the last event it really got.
    return f"event: overflow\ndata: {json.dumps({'last_id': subscription.last_id})}\n\n"


async def stream_events(handler: web.RequestHandler, subscription: Subscription, *, heartbeat: float = 15.0) -> None:
    """Write the subscription's events to `handler` as SSE, flushing each, until it ends or the client leaves.

    Closing the subscription (e.g. from `on_connection_close`) ends the loop at once.
    """
    try:
        await handler.flush()  # the status line and headers, so the client knows it is connected
        while True:
            event = await subscription.next(timeout=heartbeat)
            if event is not None:
                handler.write(format_event(event))
            elif subscription.done:
                if subscription.overflowed:
                    handler.write(format_overflow(subscription))
                    await handler.flush()
                return
            else:
                handler.write(KEEP_ALIVE)
            await handler.flush()
    except StreamClosedError:
        return  # the client went away
    finally:
        subscription.close()


class EventsHandler(APIHandler):
    """Streams events the caller may see: `tenant_of(handler)` gives its tenant (None: all events)."""

    auth_resource = AUTH_RESOURCE

    def initialize(
        self,
        bus: EventBus,
        tenant_of: Callable[[web.RequestHandler], str | None],
        heartbeat: float = 15.0,
        max_queue: int = 1000,
    ) -> None:
        self.bus = bus
        self.tenant_of = tenant_of
        self.heartbeat = heartbeat
        self.max_queue = max_queue
        self._subscription: Subscription | None = None
        self._client_gone = False

    def on_connection_close(self) -> None:
        self._client_gone = True
        if self._subscription is not None:
            self._subscription.close()

    @web.authenticated
    @authorized
    async def get(self) -> None:
        pattern = self.get_query_argument("topic", "*")
        try:
            validate_pattern(pattern)
            since = self._since()
        except ValueError as error:
            self.set_status(400)
            self.finish(json.dumps({"message": str(error)}))
            return
        tenant = self.tenant_of(self)
        self.set_header("Content-Type", CONTENT_TYPE)
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream
        if self.get_query_argument("once", "") in ("1", "true", "yes"):
            await self._backlog(pattern, tenant, since or 0)
            return
        subscription = self.bus.subscribe(pattern, tenant=tenant, since=since, max_queue=self.max_queue)
        self._subscription = subscription
        if self._client_gone:
            subscription.close()
        try:
            await stream_events(self, subscription, heartbeat=self.heartbeat)
        finally:
            self._finish()

    async def _backlog(self, pattern: str, tenant: str | None, cursor: int) -> None:
        while not self._client_gone:
            page = await asyncio.to_thread(self.bus.since, cursor, pattern=pattern, tenant=tenant, limit=_BACKLOG_PAGE)
            for event in page:
                self.write(format_event(event))
            if len(page) < _BACKLOG_PAGE:
                break
            cursor = page[-1].id
            try:
                await self.flush()
            except StreamClosedError:
                return
        self._finish()

    def _since(self) -> int | None:
        raw = self.request.headers.get("Last-Event-ID") or self.get_query_argument("since", None)
        if raw is None or not raw.strip():
            return None
        raw = raw.strip()
        if not (raw.isascii() and raw.isdigit()):
            raise ValueError(f"Cannot resume after {raw!r}: Last-Event-ID and since take an event id (an integer).")
        return int(raw)

    def _finish(self) -> None:
        if self._finished:
            return
        try:
            self.finish(set_content_type=CONTENT_TYPE)
        except StreamClosedError:
            pass  # the client left; there is no one to finish for
