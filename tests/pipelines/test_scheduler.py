"""The scheduler: cron with time zones, missed slots, retries with backoff, concurrency, alerts, retention."""

from __future__ import annotations

import json
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from contextlab.extension.events import EventBus
from contextlab.pipelines.runner import PipelineRunner
from contextlab.pipelines.scheduler import (
    RetentionPolicy,
    ScheduleError,
    Scheduler,
    SmtpSettings,
    next_fire,
)
from contextlab.state import StateStore
from tests.support.notebooks import standard_notebooks


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture()
def setup(tmp_path: Path):
    notebooks = standard_notebooks(tmp_path / "notebooks")
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    bus = EventBus(store)
    runner = PipelineRunner(
        store, tmp_path / "state", tracking_uri="http://127.0.0.1:9", notebook_dirs=[notebooks], publish=bus.publish
    )
    clock = Clock(datetime(2026, 11, 22, 10, 0, 30, tzinfo=UTC))
    yield runner, bus, clock, tmp_path
    runner.close()
    bus.close()
    store.close()


def _wait_all(runner: PipelineRunner, ids: list[str]) -> list[dict]:
    return [runner.wait(run_id, timeout=120) for run_id in ids]


def test_next_fire_reads_cron_in_the_time_zone() -> None:
    after = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    # 02:00 in Shanghai (UTC+8) is 18:00 UTC the day before.
    assert next_fire("0 2 * * *", "Asia/Shanghai", after) == datetime(2026, 11, 22, 18, 0, tzinfo=UTC)
    assert next_fire("0 2 * * *", "UTC", after) == datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
    # Across a DST change: 02:30 New York is 07:30 UTC in winter.
    assert next_fire("30 2 * * *", "America/New_York", after) == datetime(2026, 11, 23, 7, 30, tzinfo=UTC)


def test_bad_schedules_are_refused_with_the_reason(setup) -> None:
    runner, _bus, clock, _ = setup
    scheduler = Scheduler(runner, clock=clock)
    with pytest.raises(ScheduleError, match=r"cron '61 \* \* \* \*' is not a valid expression"):
        scheduler.add("bad", "ok", "61 * * * *")
    with pytest.raises(ScheduleError, match="not a valid expression"):
        scheduler.add("bad", "ok", "every day")
    with pytest.raises(ScheduleError, match="unknown time zone 'Mars/Olympus'"):
        scheduler.add("bad", "ok", "0 2 * * *", tz="Mars/Olympus")
    with pytest.raises(ScheduleError, match="unknown pipeline"):
        scheduler.add("bad", "missing", "0 2 * * *")
    with pytest.raises(ScheduleError, match="unknown parameter"):
        scheduler.add("bad", "ok", "0 2 * * *", parameters={"nope": 1})
    with pytest.raises(ScheduleError, match="alert 'sms:123'"):
        scheduler.add("bad", "ok", "0 2 * * *", alerts=["sms:123"])
    with pytest.raises(ScheduleError, match="retries"):
        scheduler.add("bad", "ok", "0 2 * * *", retries=-1)
    with pytest.raises(ScheduleError, match="schedule name"):
        scheduler.add("../x", "ok", "0 2 * * *")
    assert scheduler.list() == []
    scheduler.add("good", "ok", "0 2 * * *")
    with pytest.raises(ScheduleError, match="exists"):
        scheduler.add("good", "ok", "0 3 * * *")
    assert scheduler.get("good")["cron"] == "0 2 * * *"


def test_a_missed_schedule_runs_once_after_downtime(setup) -> None:
    runner, _bus, clock, _ = setup
    scheduler = Scheduler(runner, clock=clock)
    scheduler.add("hourly", "ok", "0 * * * *", parameters={"x": 5}, tags={"suite": "nightly"})
    assert scheduler.tick() == []  # not due yet
    clock.now += timedelta(days=3, minutes=5)  # 72 slots missed while the server was down
    started = scheduler.tick()
    assert len(started) == 1
    assert scheduler.tick() == []  # the next slot is in the future
    (record,) = _wait_all(runner, started)
    assert record["status"] == "succeeded" and record["trigger"] == "schedule" and record["schedule"] == "hourly"
    assert record["parameters"]["x"] == 5 and record["tags"] == {"suite": "nightly"}
    row = scheduler.get("hourly")
    assert row["next_run_at"] == datetime(2026, 11, 25, 11, 0, tzinfo=UTC)
    assert row["last_run_at"] == clock.now


def test_two_schedulers_on_one_store_do_not_double_fire(setup) -> None:
    runner, _bus, clock, _ = setup
    first, second = Scheduler(runner, clock=clock), Scheduler(runner, clock=clock)
    first.add("once", "ok", "*/5 * * * *")
    clock.now += timedelta(minutes=5)
    started = first.tick() + second.tick()
    assert len(started) == 1
    _wait_all(runner, started)


def test_retries_back_off_then_alert_every_channel(setup) -> None:
    runner, bus, clock, tmp = setup
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()

    class Inbox:
        messages: list = []

        async def handle_DATA(self, server, session, envelope):  # noqa: N802
            self.messages.append(envelope)
            return "250 OK"

    inbox = Inbox()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        smtp_port = probe.getsockname()[1]
    smtp = Controller(inbox, hostname="127.0.0.1", port=smtp_port)
    smtp.start()
    try:
        scheduler = Scheduler(runner, clock=clock, smtp=SmtpSettings(host="127.0.0.1", port=smtp_port))
        scheduler.add(
            "nightly",
            "flaky",
            "0 2 * * *",
            tz="Asia/Shanghai",
            parameters={"marker": str(tmp / "attempts"), "succeed_after": 5},
            retries=2,
            backoff_s=60,
            alerts=[
                f"webhook:http://127.0.0.1:{hook.server_port}/alert",
                "email:oncall@example.com",
                "event",
                "webhook:http://127.0.0.1:9/dead",  # a dead channel must not stop the others
            ],
        )
        last_event = bus.last_id()
        clock.now = datetime(2026, 11, 22, 18, 0, 1, tzinfo=UTC)
        (first,) = _wait_all(runner, scheduler.tick())
        assert first["status"] == "failed" and first["attempt"] == 1
        (retry,) = scheduler.pending_retries()
        assert retry["attempt"] == 2 and retry["due"] == clock.now + timedelta(seconds=60)
        clock.now += timedelta(seconds=59)
        assert scheduler.tick() == []  # backoff not over
        clock.now += timedelta(seconds=1)
        scheduler = Scheduler(runner, clock=clock, smtp=scheduler.smtp)  # a restart keeps the pending retry
        (second,) = _wait_all(runner, scheduler.tick())
        assert second["attempt"] == 2 and second["retry_of"] == first["id"] and second["trigger"] == "retry"
        assert scheduler.pending_retries()[0]["due"] == clock.now + timedelta(seconds=120)  # doubled
        assert received == []  # no alert while retries remain
        clock.now += timedelta(seconds=120)
        (third,) = _wait_all(runner, scheduler.tick())
        assert third["status"] == "failed" and third["attempt"] == 3
        assert scheduler.pending_retries() == []
        deadline = time.monotonic() + 10
        while (not received or not inbox.messages) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received[0]["schedule"] == "nightly" and received[0]["run"] == third["id"]
        assert received[0]["error"] == "RuntimeError: attempt 3 fails" and received[0]["error_cell"] == 2
        assert "oncall@example.com" in inbox.messages[0].rcpt_tos
        assert b"flaky failed (nightly)" in inbox.messages[0].content
        topics = [e.topic for e in bus.since(last_event, limit=100)]
        assert topics.count("pipeline.retry") == 2 and "pipeline.alert" in topics
        assert "pipeline.alert_failed" in topics
        assert (tmp / "attempts").read_text() == "3"
    finally:
        smtp.stop()
        hook.shutdown()


def test_a_retry_that_succeeds_sends_no_alert(setup) -> None:
    runner, _bus, clock, tmp = setup
    scheduler = Scheduler(runner, clock=clock)
    scheduler.add(
        "flaky",
        "flaky",
        "*/10 * * * *",
        parameters={"marker": str(tmp / "n"), "succeed_after": 1},
        retries=3,
        backoff_s=1,
        alerts=["event"],
    )
    clock.now += timedelta(minutes=10)
    (first,) = _wait_all(runner, scheduler.tick())
    clock.now += timedelta(seconds=1)
    (second,) = _wait_all(runner, scheduler.tick())
    assert (first["status"], second["status"]) == ("failed", "succeeded")
    assert scheduler.pending_retries() == [] and scheduler.alerts_sent == []


def test_concurrency_limit_skips_a_slot_while_a_run_is_in_flight(setup) -> None:
    runner, bus, clock, _ = setup
    scheduler = Scheduler(runner, clock=clock)
    scheduler.add("busy", "slow", "* * * * *", parameters={"seconds": 120}, timeout_s=60, max_concurrent=1)
    clock.now += timedelta(minutes=1)
    (running,) = scheduler.tick()
    clock.now += timedelta(minutes=1)
    assert scheduler.tick() == []
    assert "pipeline.skipped" in [e.topic for e in bus.since(0, limit=100)]
    runner.cancel(running)
    assert runner.wait(running, timeout=60)["status"] == "cancelled"


def test_disable_enable_and_remove(setup) -> None:
    runner, _bus, clock, _ = setup
    scheduler = Scheduler(runner, clock=clock)
    scheduler.add("s", "ok", "*/5 * * * *")
    assert scheduler.set_enabled("s", False)
    clock.now += timedelta(hours=1)
    assert scheduler.tick() == []
    assert scheduler.set_enabled("s", True)
    assert scheduler.get("s")["next_run_at"] > clock.now  # no catch-up for the disabled hour
    assert scheduler.remove("s") and not scheduler.remove("s")
    assert not scheduler.set_enabled("s", True)


def test_retention_runs_on_tick(setup) -> None:
    runner, _bus, clock, _ = setup
    ids = [runner.run("fails", {"x": i})["id"] for i in range(2)]
    scheduler = Scheduler(runner, clock=clock, retention=RetentionPolicy(max_age=None, keep_last=1))
    scheduler.tick()
    assert [r["id"] for r in runner.history().runs] == [ids[1]]
