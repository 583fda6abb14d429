"""The event bus: every event goes to the `events` outbox table first, then to in-process subscribers.

The table gives each event its id (increasing), so a subscriber that went away can resume with
`since=<last id seen>` and get what it missed, then the live events, with no gap or duplicate.

Delivery semantics:

* `publish` may be called from the asyncio loop thread or any worker thread. It writes one row
  (blocking, a few milliseconds on SQLite; use `apublish` from the loop to keep it free), then
  hands the event to subscribers in id order.
* Live fan-out is in-process only. Events written by another process sharing the database are seen
  through `since` (and replays), not live, so one server process should be the publisher.
* A `Subscription` holds at most `max_queue` undelivered events. When a slow consumer lets it fill
  up, it stops taking new events (`overflowed` becomes True), hands out what it holds, then ends;
  the consumer resumes with `subscribe(..., since=subscription.last_id)`. Resuming works as long as
  the missed events are still among the newest `retention` rows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from functools import cached_property
from typing import Any

from sqlalchemy import delete, insert, or_, select

from contextlab.state import StateStore
from contextlab.state.models import EventRecord

log = logging.getLogger(__name__)

# Dotted lowercase names with at least two parts: `registry.changed`, `provider.health`, `job.finished`.
TOPIC_PATTERN = re.compile(r"^[a-z][a-z0-9_-]*(?:\.[a-z][a-z0-9_-]*)+$")
# Globs over topics: `*` and `?` wildcards only, so each pattern has an exact SQL LIKE equivalent.
_GLOB_PATTERN = re.compile(r"^[a-z0-9_.*?-]+$")
_MAX_NAME = 128
_REPLAY_PAGE = 500


@dataclass(frozen=True)
class Event:
    """One published event. Subscribers share the instance: treat `payload` as read-only."""

    id: int
    ts: datetime
    topic: str
    tenant: str | None
    payload: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "topic": self.topic,
            "tenant": self.tenant,
            "payload": self.payload,
        }

    def to_json(self) -> str:
        """The event as compact JSON (one line); computed once, however many subscribers send it."""
        return self._json

    @cached_property
    def _json(self) -> str:
        # cached_property writes the instance __dict__ directly, which a frozen dataclass allows.
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)


def validate_topic(topic: str) -> str:
    if not isinstance(topic, str) or len(topic) > _MAX_NAME or not TOPIC_PATTERN.match(topic):
        raise ValueError(
            f"Invalid topic {topic!r}: use dotted lowercase names such as `registry.changed` or `job.finished`."
        )
    return topic


def validate_pattern(pattern: str) -> str:
    if not isinstance(pattern, str) or len(pattern) > _MAX_NAME or not _GLOB_PATTERN.match(pattern):
        raise ValueError(
            f"Invalid topic pattern {pattern!r}: use a topic or a glob with `*` and `?`, such as `registry.*` or `*`."
        )
    return pattern


def _validate_tenant(tenant: str | None) -> str | None:
    if tenant is not None and (not isinstance(tenant, str) or not tenant or len(tenant) > _MAX_NAME):
        raise ValueError(f"Invalid tenant {tenant!r}: use None (global) or a name of 1 to {_MAX_NAME} characters.")
    return tenant


def _matches(event: Event, pattern: str, tenant: str | None) -> bool:
    # A tenant sees its own events and global ones; no tenant (an admin) sees everything.
    if tenant is not None and event.tenant is not None and event.tenant != tenant:
        return False
    return pattern == "*" or fnmatchcase(event.topic, pattern)


def _like(pattern: str) -> str:
    # Exact for the pattern alphabet: `_` is literal in topics but a LIKE wildcard, so escape it.
    return pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_").replace("*", "%").replace("?", "_")


def _wake(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None]) -> None:
    """Resolve a consumer's waiter from whichever thread published."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        if not waiter.done():
            waiter.set_result(None)
        return
    try:
        loop.call_soon_threadsafe(_resolve, waiter)
    except RuntimeError:
        pass  # the consumer's loop is closed; nobody is waiting any more


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Subscription:
    """Events matching a topic glob and tenant, as an async iterator; first a replay if `since` was given.

    Iteration ends when the subscription is closed (by `close`, by `EventBus.close`, or after an
    overflow once the held events are handed out). `last_id` is the id to resume from.
    """

    def __init__(self, bus: EventBus, pattern: str, tenant: str | None, since: int | None, max_queue: int) -> None:
        self._bus = bus
        self.pattern = pattern
        self.tenant = tenant
        self.max_queue = max_queue
        self.last_id: int | None = since
        self.overflowed = False
        self._lock = threading.Lock()
        self._live: deque[Event] = deque()
        self._accepting = True
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._replaying = since is not None
        self._replay: deque[Event] = deque()
        self._cursor = since or 0

    @property
    def closed(self) -> bool:
        """No new events will be added (closed or overflowed); held ones may still be handed out."""
        return not self._accepting

    @property
    def done(self) -> bool:
        """Closed and nothing left to hand out: the next `next()` returns None at once."""
        return not self._accepting and not self._live and not self._replay and not self._replaying

    def close(self) -> None:
        """Stop now, dropping anything not yet handed out. Idempotent; callable from any thread."""
        with self._lock:
            self._accepting = False
            self._live.clear()
            self._replay.clear()
            self._replaying = False
            waiter, self._waiter = self._waiter, None
        self._bus._remove(self)
        if waiter is not None:
            _wake(*waiter)

    async def next(self, timeout: float | None = None) -> Event | None:
        """The next event; None after `timeout` seconds without one, or once the subscription is `done`."""
        while True:
            if self._replay:
                event = self._replay.popleft()
                self.last_id = event.id
                return event
            if self._replaying:
                page = await asyncio.to_thread(
                    self._bus.since, self._cursor, pattern=self.pattern, tenant=self.tenant, limit=_REPLAY_PAGE
                )
                if not self._replaying:  # closed while the page was read
                    return None
                self._replay.extend(page)
                if page:
                    self._cursor = page[-1].id
                if len(page) < _REPLAY_PAGE:
                    self._replaying = False
                continue
            loop = asyncio.get_running_loop()
            with self._lock:
                if self._live:
                    event = self._live.popleft()
                    if self.last_id is not None and event.id <= self.last_id:
                        continue  # already handed out by the replay
                    self.last_id = event.id
                    return event
                if not self._accepting:
                    return None
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiter = (loop, waiter)
            try:
                await asyncio.wait_for(waiter, timeout)
            except TimeoutError:
                return None
            finally:
                with self._lock:
                    if self._waiter is not None and self._waiter[1] is waiter:
                        self._waiter = None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        event = await self.next()
        if event is None:
            raise StopAsyncIteration
        return event

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def _offer(self, event: Event) -> bool:
        """Take a live event (called by the publisher, in id order). False if this subscription just overflowed."""
        if not _matches(event, self.pattern, self.tenant):
            return True
        with self._lock:
            if not self._accepting:
                return True
            if len(self._live) >= self.max_queue:
                self._accepting = False
                self.overflowed = True
            else:
                self._live.append(event)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            _wake(*waiter)
        return not self.overflowed


@dataclass(frozen=True)
class _Listener:
    pattern: str
    tenant: str | None
    callback: Callable[[Event], Any]
    loop: asyncio.AbstractEventLoop | None


class EventBus:
    """Publishes events through the `events` outbox table to subscribers and listeners.

    Keeps the newest `retention` events (pruned every `prune_every` publishes, or by `prune`).
    """

    def __init__(self, store: StateStore, *, retention: int = 10_000, prune_every: int = 1000) -> None:
        if retention < 1:
            # The newest row must survive pruning: SQLite would otherwise hand out its id again.
            raise ValueError("retention must be at least 1.")
        self._store = store
        self.retention = retention
        self._prune_every = max(1, prune_every)
        self._since_prune = 0
        # Held across insert and fan-out, so subscribers get events in id order.
        self._publish_lock = threading.RLock()
        self._dispatching = False
        self._fanout: deque[Event] = deque()
        self._members_lock = threading.Lock()
        self._subscriptions: tuple[Subscription, ...] = ()
        self._listeners: tuple[_Listener, ...] = ()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscriptions)

    def publish(self, topic: str, payload: Mapping[str, Any] | None = None, *, tenant: str | None = None) -> Event:
        """Store an event and deliver it; returns it with its id. Blocks for one database write."""
        topic = validate_topic(topic)
        tenant = _validate_tenant(tenant)
        data = _json_copy(payload)
        prune = False
        with self._publish_lock:
            ts = datetime.now(UTC)
            with self._store.engine.begin() as connection:
                result = connection.execute(insert(EventRecord).values(ts=ts, topic=topic, tenant=tenant, payload=data))
                event = Event(id=int(result.inserted_primary_key[0]), ts=ts, topic=topic, tenant=tenant, payload=data)
            self._since_prune += 1
            if self._since_prune >= self._prune_every:
                self._since_prune = 0
                prune = True
            self._fanout.append(event)
            # A listener that publishes re-enters here; its event waits in `_fanout` for this loop, in order.
            if not self._dispatching:
                self._dispatching = True
                try:
                    while self._fanout:
                        self._deliver(self._fanout.popleft())
                finally:
                    self._dispatching = False
        if prune:
            try:
                self.prune()
            except Exception:
                log.exception("could not prune the events table")
        return event

    async def apublish(
        self, topic: str, payload: Mapping[str, Any] | None = None, *, tenant: str | None = None
    ) -> Event:
        """`publish` from a worker thread, so the event loop does not wait on the database."""
        return await asyncio.to_thread(self.publish, topic, payload, tenant=tenant)

    def subscribe(
        self, pattern: str = "*", *, tenant: str | None = None, since: int | None = None, max_queue: int = 1000
    ) -> Subscription:
        """Live events whose topic matches `pattern` (a glob) for `tenant`, after a replay of ids > `since`.

        The subscription starts taking live events now; the replay is read when it is first iterated.
        """
        validate_pattern(pattern)
        _validate_tenant(tenant)
        if since is not None and (not isinstance(since, int) or since < 0):
            raise ValueError(f"since must be an event id (an integer >= 0), not {since!r}.")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1.")
        subscription = Subscription(self, pattern, tenant, since, max_queue)
        # Every event published before this line is committed, so the replay will read it; every
        # later one is offered live. Live ids the replay already gave are skipped.
        with self._members_lock:
            self._subscriptions = (*self._subscriptions, subscription)
        return subscription

    def add_listener(
        self,
        pattern: str,
        callback: Callable[[Event], Any],
        *,
        tenant: str | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Callable[[], None]:
        """Call `callback(event)` for each matching event; returns a function that removes the listener.

        Without `loop` the callback runs in the publishing thread, in id order, and must be quick
        and thread-safe. With `loop` it is scheduled there (`call_soon_threadsafe`). Exceptions are
        logged, never raised into the publisher.
        """
        validate_pattern(pattern)
        _validate_tenant(tenant)
        listener = _Listener(pattern, tenant, callback, loop)
        with self._members_lock:
            self._listeners = (*self._listeners, listener)

        def remove() -> None:
            with self._members_lock:
                self._listeners = tuple(item for item in self._listeners if item is not listener)

        return remove

    def since(self, last_id: int, *, pattern: str = "*", tenant: str | None = None, limit: int = 500) -> list[Event]:
        """Stored events with id > `last_id` matching `pattern` and `tenant`, oldest first, at most `limit`."""
        validate_pattern(pattern)
        _validate_tenant(tenant)
        if limit < 1:
            raise ValueError("limit must be at least 1.")
        query = select(EventRecord).where(EventRecord.id > last_id).order_by(EventRecord.id).limit(limit)
        if tenant is not None:
            query = query.where(or_(EventRecord.tenant == tenant, EventRecord.tenant.is_(None)))
        if pattern != "*":
            query = query.where(EventRecord.topic.like(_like(pattern), escape="\\"))
        with self._store.engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [
            Event(
                id=row["id"],
                ts=_utc(row["ts"]),
                topic=row["topic"],
                tenant=row["tenant"],
                payload=row["payload"] if row["payload"] is not None else {},
            )
            for row in rows
        ]

    def last_id(self) -> int:
        """The id of the newest stored event (0 if none): a starting point for `since`."""
        with self._store.engine.connect() as connection:
            return connection.scalar(select(EventRecord.id).order_by(EventRecord.id.desc()).limit(1)) or 0

    def prune(self) -> int:
        """Delete all but the newest `retention` events; returns how many were deleted."""
        with self._store.engine.begin() as connection:
            oldest_kept = connection.scalar(
                select(EventRecord.id).order_by(EventRecord.id.desc()).offset(self.retention - 1).limit(1)
            )
            if oldest_kept is None:
                return 0
            return connection.execute(delete(EventRecord).where(EventRecord.id < oldest_kept)).rowcount or 0

    def close(self) -> None:
        """End every subscription (their iterations stop) and drop the listeners; for server shutdown."""
        with self._members_lock:
            subscriptions, self._subscriptions = self._subscriptions, ()
            self._listeners = ()
        for subscription in subscriptions:
            subscription.close()

    def _remove(self, subscription: Subscription) -> None:
        with self._members_lock:
            self._subscriptions = tuple(item for item in self._subscriptions if item is not subscription)

    def _deliver(self, event: Event) -> None:
        for subscription in self._subscriptions:
            if not subscription._offer(event):
                self._remove(subscription)
        for listener in self._listeners:
            if not _matches(event, listener.pattern, listener.tenant):
                continue
            if listener.loop is not None:
                try:
                    listener.loop.call_soon_threadsafe(_call_listener, listener.callback, event)
                except RuntimeError:
                    log.warning("event listener %r: its event loop is closed", listener.callback)
            else:
                _call_listener(listener.callback, event)


def _call_listener(callback: Callable[[Event], Any], event: Event) -> None:
    try:
        callback(event)
    except Exception:
        log.exception("event listener %r failed on %s #%d", callback, event.topic, event.id)


def _json_copy(payload: Mapping[str, Any] | None) -> dict[str, Any]:
    # Live subscribers and replays must see the same payload, so it goes through JSON here too.
    if payload is None:
        return {}
    if not isinstance(payload, Mapping):
        raise TypeError(f"An event payload is a mapping, not {type(payload).__name__}.")
    try:
        return json.loads(json.dumps(dict(payload), allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"An event payload must be JSON: {error}.") from error


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; events are written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
