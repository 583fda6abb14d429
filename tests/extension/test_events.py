"""The event bus (outbox table, subscriptions, replay, listeners) and its Server-Sent Events handler."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from jupyter_server.auth import AllowAllAuthorizer
from sqlalchemy import func, select
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application

from contextlab.extension.events import Event, EventBus
from contextlab.extension.sse import EventsHandler
from contextlab.state.models import EventRecord
from tests.support.identity import HeaderUserIdentityProvider


@pytest.fixture
def bus(store):
    bus = EventBus(store)
    yield bus
    bus.close()


async def collect(subscription, count: int, timeout: float = 5.0) -> list[Event]:
    events = []
    async with asyncio.timeout(timeout):
        while len(events) < count:
            event = await subscription.next()
            assert event is not None, f"the subscription ended after {len(events)} events"
            events.append(event)
    return events


def row_count(store) -> int:
    with store.engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(EventRecord))


# --- publishing ---------------------------------------------------------------------------------


def test_publish_stores_the_event_and_returns_it(bus, store):
    first = bus.publish("registry.changed", {"server": "github", "tools": ("a", "b")})
    second = bus.publish("job.finished", tenant="acme")
    assert second.id > first.id
    assert first.topic == "registry.changed" and first.tenant is None
    assert first.payload == {"server": "github", "tools": ["a", "b"]}  # as JSON, the same live and replayed
    assert second.payload == {}
    assert first.ts.tzinfo is not None
    assert json.loads(first.to_json()) == {
        "id": first.id,
        "ts": first.ts.isoformat().replace("+00:00", "Z"),
        "topic": "registry.changed",
        "tenant": None,
        "payload": {"server": "github", "tools": ["a", "b"]},
    }
    assert bus.since(0) == [first, second]
    assert bus.last_id() == second.id
    assert row_count(store) == 2


@pytest.mark.parametrize("topic", ["", "registry", "Registry.changed", "registry.", ".changed", "a..b", "a.b c", "a.*"])
def test_invalid_topics_are_rejected(bus, topic):
    with pytest.raises(ValueError, match="dotted lowercase"):
        bus.publish(topic, {})


def test_payload_must_be_json(bus, store):
    with pytest.raises(ValueError):
        bus.publish("job.finished", {"when": datetime.now(UTC)})
    with pytest.raises(ValueError):
        bus.publish("job.finished", {"x": float("nan")})
    with pytest.raises(TypeError):
        bus.publish("job.finished", ["not", "a", "mapping"])
    assert row_count(store) == 0


@pytest.mark.parametrize("pattern", ["", "registry.[ab]", "Registry.*", "a b", "%"])
def test_invalid_patterns_are_rejected(bus, pattern):
    with pytest.raises(ValueError, match="topic pattern"):
        bus.subscribe(pattern)


def test_events_survive_a_new_bus_on_the_same_database(store):
    first = EventBus(store)
    published = [first.publish("page.updated", {"n": n}) for n in range(3)]
    first.close()

    second = EventBus(store)
    assert second.since(0) == published
    assert second.publish("page.updated", {"n": 3}).id == published[-1].id + 1

    async def replay() -> list[Event]:
        async with second.subscribe("page.*", since=published[0].id) as subscription:
            return await collect(subscription, 3)

    assert [event.payload["n"] for event in asyncio.run(replay())] == [1, 2, 3]


# --- filtering ----------------------------------------------------------------------------------


def test_since_filters_by_pattern_tenant_and_limit(bus):
    bus.publish("registry.changed", {"i": 1})
    bus.publish("registry.changed", {"i": 2}, tenant="acme")
    bus.publish("registry.changed", {"i": 3}, tenant="other")
    bus.publish("provider.health", {"i": 4})
    bus.publish("job_x.finished", {"i": 5})
    bus.publish("jobax.finished", {"i": 6})  # `_` in a pattern is literal, not SQL's any-character

    def ids(**kwargs) -> list[int]:
        return [event.payload["i"] for event in bus.since(0, **kwargs)]

    assert ids() == [1, 2, 3, 4, 5, 6]
    assert ids(pattern="registry.*") == [1, 2, 3]
    assert ids(pattern="registry.*", tenant="acme") == [1, 2]
    assert ids(tenant="other") == [1, 3, 4, 5, 6]
    assert ids(pattern="job_x.*") == [5]
    assert ids(pattern="job?x.finished") == [5, 6]
    assert ids(pattern="*.finished", limit=1) == [5]
    assert [event.payload["i"] for event in bus.since(bus.since(0)[2].id)] == [4, 5, 6]


def test_live_subscriptions_filter_by_pattern_and_tenant(bus):
    async def scenario() -> dict[str, list[int]]:
        subscriptions = {
            "admin-all": bus.subscribe("*"),
            "acme-registry": bus.subscribe("registry.*", tenant="acme"),
            "other-all": bus.subscribe("*", tenant="other"),
            "health": bus.subscribe("provider.health"),
        }
        bus.publish("registry.changed", {"i": 1})
        bus.publish("registry.changed", {"i": 2}, tenant="acme")
        bus.publish("registry.changed", {"i": 3}, tenant="other")
        bus.publish("provider.health", {"i": 4}, tenant="acme")
        bus.publish("page.updated", {"i": 5})
        seen: dict[str, list[int]] = {}
        for name, subscription in subscriptions.items():
            seen[name] = []
            while (event := await subscription.next(timeout=0.05)) is not None:
                seen[name].append(event.payload["i"])
            subscription.close()
        return seen

    assert asyncio.run(scenario()) == {
        "admin-all": [1, 2, 3, 4, 5],
        "acme-registry": [1, 2],
        "other-all": [1, 3, 5],
        "health": [4],
    }
    assert bus.subscriber_count == 0


# --- live delivery ------------------------------------------------------------------------------


def test_publish_from_a_worker_thread_wakes_an_async_subscriber(bus):
    async def scenario() -> list[Event]:
        subscription = bus.subscribe("job.*")
        waiting = asyncio.create_task(collect(subscription, 2))
        await asyncio.sleep(0.05)  # the consumer is parked on its waiter
        await asyncio.to_thread(bus.publish, "job.finished", {"n": 1})
        await bus.apublish("job.finished", {"n": 2})
        return await waiting

    assert [event.payload["n"] for event in asyncio.run(scenario())] == [1, 2]


def test_next_times_out_and_close_ends_iteration(bus):
    async def scenario() -> None:
        subscription = bus.subscribe("*")
        assert await subscription.next(timeout=0.01) is None
        assert not subscription.done
        consumer = asyncio.create_task(anext(subscription, "ended"))
        await asyncio.sleep(0.01)
        threading.Thread(target=subscription.close).start()  # from another thread, while awaited
        assert await asyncio.wait_for(consumer, 2) == "ended"
        assert subscription.done and not subscription.overflowed
        bus.publish("job.finished", {})
        assert await subscription.next(timeout=0.01) is None

    asyncio.run(scenario())
    assert bus.subscriber_count == 0


def test_bus_close_ends_every_subscription(bus):
    async def scenario() -> list[str]:
        subscriptions = [bus.subscribe("*"), bus.subscribe("job.*", since=0)]
        consumers = [asyncio.create_task(anext(sub, "ended")) for sub in subscriptions]
        await asyncio.sleep(0.01)
        bus.close()
        return await asyncio.wait_for(asyncio.gather(*consumers), 2)

    assert asyncio.run(scenario()) == ["ended", "ended"]


def test_overflow_closes_the_subscription_and_resuming_fills_the_gap(bus):
    async def scenario() -> None:
        subscription = bus.subscribe("*", max_queue=3)
        published = [bus.publish("job.finished", {"n": n}) for n in range(6)]
        assert subscription.overflowed and subscription.closed
        assert bus.subscriber_count == 0
        held = [event async for event in subscription]  # what it held, then the end
        assert held == published[:3]
        assert subscription.done
        assert subscription.last_id == published[2].id

        resumed = bus.subscribe("*", since=subscription.last_id)
        assert await collect(resumed, 3) == published[3:]
        resumed.close()

    asyncio.run(scenario())


# --- replay then live ---------------------------------------------------------------------------


def test_replay_then_live_without_gaps_or_duplicates_deterministic(bus, monkeypatch):
    """Events published while the replay reads land both in the replay and in the live queue."""
    for n in range(1200):  # more than two replay pages
        bus.publish("page.updated", {"n": n})
    original_since = bus.since
    calls = 0

    def racing_since(*args, **kwargs):
        nonlocal calls
        calls += 1
        bus.publish("page.updated", {"n": f"before-page-{calls}"})  # seen by this read and offered live
        page = original_since(*args, **kwargs)
        bus.publish("page.updated", {"n": f"after-page-{calls}"})  # only live (or in the next page)
        return page

    monkeypatch.setattr(bus, "since", racing_since)

    async def scenario() -> list[Event]:
        subscription = bus.subscribe("page.*", since=0, max_queue=10_000)
        events = await collect(subscription, 1200 + 2 * 3)
        assert await subscription.next(timeout=0.05) is None
        subscription.close()
        return events

    events = asyncio.run(scenario())
    ids = [event.id for event in events]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    assert calls == 3


def test_replay_then_live_with_a_concurrent_publisher_thread(bus):
    for n in range(700):
        bus.publish("page.updated", {"n": n})
    bus.publish("job.finished", {"skip": True})  # filtered out by the pattern
    total = 700 + 400

    async def scenario() -> list[Event]:
        started = threading.Event()

        def publisher() -> None:
            started.wait()
            for n in range(700, total):
                bus.publish("page.updated", {"n": n})
                if n % 50 == 0:
                    bus.publish("job.finished", {"skip": True})

        thread = threading.Thread(target=publisher)
        thread.start()
        subscription = bus.subscribe("page.*", since=0, max_queue=10_000)
        started.set()
        try:
            return await collect(subscription, total, timeout=30)
        finally:
            subscription.close()
            await asyncio.to_thread(thread.join)

    events = asyncio.run(scenario())
    assert [event.payload["n"] for event in events] == list(range(total))
    assert all(a.id < b.id for a, b in zip(events, events[1:], strict=False))


def test_subscribe_since_the_newest_id_gets_only_new_events(bus):
    bus.publish("job.finished", {"n": 0})

    async def scenario() -> list[Event]:
        async with bus.subscribe("*", since=bus.last_id()) as subscription:
            assert await subscription.next(timeout=0.05) is None
            bus.publish("job.finished", {"n": 1})
            return await collect(subscription, 1)

    assert [event.payload["n"] for event in asyncio.run(scenario())] == [1]


# --- retention ----------------------------------------------------------------------------------


def test_prune_keeps_the_newest_rows_and_ids_keep_growing(store):
    bus = EventBus(store, retention=5, prune_every=10_000)
    published = [bus.publish("job.finished", {"n": n}) for n in range(12)]
    assert bus.prune() == 7
    assert bus.prune() == 0
    assert bus.since(0) == published[7:]
    assert bus.publish("job.finished", {"n": 12}).id == published[-1].id + 1


def test_publish_prunes_every_so_often(store):
    bus = EventBus(store, retention=3, prune_every=4)
    for n in range(4):
        bus.publish("job.finished", {"n": n})
    assert row_count(store) == 3
    with pytest.raises(ValueError):
        EventBus(store, retention=0)


# --- listeners ----------------------------------------------------------------------------------


def test_listeners_get_matching_events_in_order(bus, caplog):
    seen: list[tuple[str, int]] = []
    remove = bus.add_listener("registry.*", lambda event: seen.append(("registry", event.payload["n"])))
    bus.add_listener("*", lambda event: seen.append(("acme", event.payload["n"])), tenant="acme")

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    bus.add_listener("*", broken)

    bus.publish("registry.changed", {"n": 1})
    bus.publish("registry.changed", {"n": 2}, tenant="other")
    bus.publish("job.finished", {"n": 3}, tenant="acme")
    remove()
    bus.publish("registry.changed", {"n": 4})
    assert seen == [("registry", 1), ("acme", 1), ("registry", 2), ("acme", 3), ("acme", 4)]
    assert "listener bug" in caplog.text


def test_a_listener_that_publishes_keeps_subscribers_in_id_order(bus):
    bus.add_listener("registry.changed", lambda event: bus.publish("registry.notified", {"of": event.id}))

    async def scenario() -> list[Event]:
        first = bus.subscribe("registry.*")
        last = bus.subscribe("registry.*")
        bus.publish("registry.changed", {})
        one, two = await collect(first, 2), await collect(last, 2)
        assert one == two
        return one

    changed, notified = asyncio.run(scenario())
    assert (changed.topic, notified.topic) == ("registry.changed", "registry.notified")
    assert notified.id == changed.id + 1 and notified.payload == {"of": changed.id}


def test_listener_with_a_loop_runs_on_that_loop(bus):
    async def scenario() -> tuple[Event, bool]:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[tuple[Event, bool]] = loop.create_future()
        bus.add_listener(
            "registry.*", lambda event: got.set_result((event, asyncio.get_running_loop() is loop)), loop=loop
        )
        await asyncio.to_thread(bus.publish, "registry.changed", {"server": "github"})
        return await asyncio.wait_for(got, 2)

    event, on_loop = asyncio.run(scenario())
    assert event.payload == {"server": "github"} and on_loop


# --- Server-Sent Events -------------------------------------------------------------------------

TOKEN = "test-token"


@contextlib.asynccontextmanager
async def sse_server(bus: EventBus, **options) -> AsyncIterator[str]:
    """A bare Tornado app (no Jupyter server) serving EventsHandler with Jupyter's auth classes."""
    tenant_of = options.pop("tenant_of", lambda handler: None)
    identity = HeaderUserIdentityProvider(token=TOKEN)
    app = Application(
        [(r"/contextlab/api/events", EventsHandler, {"bus": bus, "tenant_of": tenant_of, **options})],
        identity_provider=identity,
        authorizer=AllowAllAuthorizer(identity_provider=identity),
        base_url="/",
    )
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    try:
        yield f"http://127.0.0.1:{port}/contextlab/api/events"
    finally:
        server.stop()
        await server.close_all_connections()


def auth(user: str = "admin", **headers: str) -> dict[str, str]:
    return {"Authorization": f"token {TOKEN}", "X-Test-User": user, **headers}


def frame(event: Event) -> str:
    return f"id: {event.id}\nevent: {event.topic}\ndata: {event.to_json()}\n\n"


class FrameReader:
    """Reads an SSE response chunk by chunk and splits it into frames (each ending with a blank line)."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_text()
        self._buffer = ""

    async def frames(self, count: int, timeout: float = 5.0, *, keep_alives: bool = True) -> list[str]:
        found: list[str] = []
        async with asyncio.timeout(timeout):
            while len(found) < count:
                if "\n\n" in self._buffer:
                    head, self._buffer = self._buffer.split("\n\n", 1)
                    if keep_alives or head != ": keep-alive":
                        found.append(head + "\n\n")
                    continue
                self._buffer += await anext(self._chunks)
        return found

    async def rest(self, timeout: float = 5.0) -> str:
        """Everything up to the end of the response."""
        async with asyncio.timeout(timeout):
            async for chunk in self._chunks:
                self._buffer += chunk
        rest, self._buffer = self._buffer, ""
        return rest


def test_sse_once_returns_the_backlog_with_exact_framing(bus):
    events = [
        bus.publish("registry.changed", {"server": "github", "text": "line\nbreak"}),
        bus.publish("job.finished", {"job": 1}),
        bus.publish("registry.changed", {"server": "jira"}, tenant="acme"),
    ]

    async def scenario() -> None:
        async with sse_server(bus) as url, httpx.AsyncClient() as client:
            response = await client.get(url, params={"topic": "registry.*", "once": "1"}, headers=auth())
            assert response.status_code == 200
            assert response.headers["content-type"] == "text/event-stream"
            assert response.headers["cache-control"] == "no-cache"
            assert response.text == frame(events[0]) + frame(events[2])
            assert response.text.startswith(
                f'id: {events[0].id}\nevent: registry.changed\ndata: {{"id":{events[0].id},"ts":"'
            )

            resumed = await client.get(url, params={"once": "1", "since": events[0].id}, headers=auth())
            assert resumed.text == frame(events[1]) + frame(events[2])
            header = await client.get(url, params={"once": "1", "since": 0}, headers=auth(**{"Last-Event-ID": "2"}))
            assert header.text == frame(events[2])  # Last-Event-ID wins over ?since=

    asyncio.run(scenario())


def test_sse_streams_live_events_resumes_and_sends_keep_alives(bus):
    first = bus.publish("registry.changed", {"n": 1})
    second = bus.publish("registry.changed", {"n": 2})

    async def scenario() -> None:
        async with sse_server(bus, heartbeat=0.2) as url, httpx.AsyncClient(timeout=10) as client:
            headers = auth(**{"Last-Event-ID": str(first.id)})
            async with client.stream("GET", url, params={"topic": "registry.*"}, headers=headers) as response:
                assert response.status_code == 200
                assert response.headers["content-type"] == "text/event-stream"
                reader = FrameReader(response)
                # A keep-alive may come between frames on a slow machine; only the events matter here.
                assert await reader.frames(1, keep_alives=False) == [frame(second)]  # replayed after Last-Event-ID
                bus.publish("job.finished", {})  # another topic: not sent
                live = await asyncio.to_thread(bus.publish, "registry.changed", {"n": 3})
                assert await reader.frames(1, keep_alives=False) == [frame(live)]
                assert await reader.frames(1) == [": keep-alive\n\n"]
                assert bus.subscriber_count == 1
        # The client hung up: the handler notices and drops its subscription.
        async with asyncio.timeout(5):
            while bus.subscriber_count:
                await asyncio.sleep(0.02)

    asyncio.run(scenario())


def test_sse_scopes_events_to_the_callers_tenant(bus):
    bus.publish("registry.changed", {"n": 1}, tenant="acme")
    bus.publish("registry.changed", {"n": 2}, tenant="other")
    bus.publish("registry.changed", {"n": 3})

    def tenant_of(handler) -> str | None:
        user = handler.current_user.username
        return None if user == "admin" else user

    async def scenario() -> None:
        async with sse_server(bus, tenant_of=tenant_of) as url, httpx.AsyncClient() as client:

            async def payloads(user: str) -> list[int]:
                response = await client.get(url, params={"once": "1"}, headers=auth(user))
                return [
                    json.loads(line[6:])["payload"]["n"] for line in response.text.splitlines() if line[:5] == "data:"
                ]

            assert await payloads("acme") == [1, 3]
            assert await payloads("other") == [2, 3]
            assert await payloads("admin") == [1, 2, 3]

    asyncio.run(scenario())


def test_sse_overflow_sends_a_marker_and_ends(bus):
    async def scenario() -> None:
        async with sse_server(bus, max_queue=2, heartbeat=5) as url, httpx.AsyncClient(timeout=10) as client:
            async with client.stream("GET", url, headers=auth()) as response:
                reader = FrameReader(response)
                # Publish more than the queue holds before the handler's task gets to run again.
                events = [bus.publish("job.finished", {"n": n}) for n in range(5)]
                got = await reader.frames(3)
                assert got == [
                    frame(events[0]),
                    frame(events[1]),
                    f'event: overflow\ndata: {{"last_id": {events[1].id}}}\n\n',
                ]
                assert await reader.rest() == ""  # then the stream ends
        assert bus.subscriber_count == 0

    asyncio.run(scenario())


def test_sse_rejects_bad_requests_and_anonymous_callers(bus):
    async def scenario() -> None:
        async with sse_server(bus) as url, httpx.AsyncClient() as client:
            anonymous = await client.get(url, params={"once": "1"})
            assert anonymous.status_code == 403
            bad_topic = await client.get(url, params={"topic": "Bad Topic"}, headers=auth())
            assert bad_topic.status_code == 400 and "topic pattern" in bad_topic.json()["message"]
            bad_since = await client.get(url, params={"since": "x"}, headers=auth())
            assert bad_since.status_code == 400 and "event id" in bad_since.json()["message"]

    asyncio.run(scenario())
    assert bus.subscriber_count == 0
