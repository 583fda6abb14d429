"""Cron schedules for pipelines: time zones, retries with exponential backoff, timeouts, concurrency
limits, failure alerts (webhook, SMTP email, event bus) and a retention policy for the history.

Schedules live in the state store. `tick()` fires what is due; a schedule that was missed while
nothing was running (downtime) fires once, not once per missed slot, because the next slot is
computed from now. Two schedulers sharing a store (the server's and `contextlab scheduler run`)
do not double-fire: a slot is claimed with a compare-and-set on `next_run_at`.
"""

from __future__ import annotations

import json
import logging
import re
import smtplib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from contextlab.pipelines.runner import (
    FINAL,
    QUEUED,
    RUNNING,
    PipelineError,
    PipelineRunner,
    notebook_parameters,
    resolve_notebook,
)
from contextlab.state.models import PipelineRunRow, PipelineScheduleRow

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ALERT = re.compile(r"^(webhook:https?://\S+|email:[^@\s]+@[^@\s]+|event(:[a-z][a-z0-9_.-]*)?)$")
MAX_BACKOFF_S = 6 * 3600.0


class ScheduleError(ValueError):
    """A schedule that cannot be saved; the message says which field and why."""


@dataclass(frozen=True)
class SmtpSettings:
    host: str = "localhost"
    port: int = 25
    sender: str = "contextlab@localhost"
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout_s: float = 10.0


@dataclass(frozen=True)
class RetentionPolicy:
    """Delete finished runs older than `max_age`, and all but the newest `keep_last` per pipeline."""

    max_age: timedelta | None = timedelta(days=30)
    keep_last: int | None = 200


def validate_cron(cron: str, tz: str = "UTC") -> ZoneInfo:
    """Check a cron expression (5 fields, or 6 with seconds) and an IANA time zone."""
    if not isinstance(cron, str) or not croniter.is_valid(cron):
        raise ScheduleError(
            f"cron {cron!r} is not a valid expression: give 5 fields (minute hour day month weekday), "
            "e.g. '0 2 * * *' for 02:00 every day."
        )
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleError(f"unknown time zone {tz!r}: use an IANA name such as UTC or Asia/Shanghai.") from exc


def next_fire(cron: str, tz: str, after: datetime) -> datetime:
    """The first slot of `cron` (read in `tz`) strictly after `after`, in UTC."""
    zone = validate_cron(cron, tz)
    local = _aware(after).astimezone(zone)
    return croniter(cron, local).get_next(datetime).astimezone(UTC)


def parse_alert(text: str) -> str:
    if not isinstance(text, str) or not _ALERT.match(text):
        raise ScheduleError(
            f"alert {text!r}: use webhook:http(s)://…, email:someone@example.com, or event[:topic.name]."
        )
    return text


class Scheduler:
    """Fires due schedules through a `PipelineRunner`, retries failures, alerts, and applies retention."""

    def __init__(
        self,
        runner: PipelineRunner,
        *,
        smtp: SmtpSettings | None = None,
        retention: RetentionPolicy | None = None,
        publish: Callable[[str, dict[str, Any]], Any] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        webhook_timeout_s: float = 10.0,
    ) -> None:
        self.runner = runner
        self.store = runner.store
        self.smtp = smtp or SmtpSettings()
        self.retention = retention
        self.publish = publish or runner.publish
        self.clock = clock
        self.webhook_timeout_s = webhook_timeout_s
        self.alerts_sent: list[dict[str, Any]] = []

    # -- schedules -----------------------------------------------------------------------------
    def add(
        self,
        name: str,
        pipeline: str,
        cron: str,
        *,
        tz: str = "UTC",
        parameters: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
        retries: int = 0,
        backoff_s: float = 60.0,
        timeout_s: float | None = None,
        max_concurrent: int = 1,
        alerts: list[str] | None = None,
        enabled: bool = True,
        replace: bool = False,
    ) -> dict[str, Any]:
        """Create (or with `replace`, overwrite) a schedule after checking every field."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise ScheduleError(f"schedule name {name!r}: letters, digits, _ . - (at most 128), starting alnum.")
        validate_cron(cron, tz)
        if not isinstance(retries, int) or retries < 0 or retries > 20:
            raise ScheduleError("retries must be an integer from 0 to 20.")
        if backoff_s <= 0:
            raise ScheduleError("backoff must be positive (seconds).")
        if timeout_s is not None and timeout_s <= 0:
            raise ScheduleError("timeout must be positive (seconds).")
        if not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ScheduleError("max_concurrent must be an integer ≥ 1.")
        checked_alerts = [parse_alert(a) for a in alerts or []]
        try:
            notebook = resolve_notebook(pipeline, self.runner.notebook_dirs)
            unknown = sorted(set(parameters or {}) - set(notebook_parameters(notebook)))
        except PipelineError as exc:
            raise ScheduleError(str(exc)) from exc
        if unknown:
            raise ScheduleError(f"unknown parameter(s) {', '.join(unknown)} for pipeline {pipeline}.")
        json.dumps(parameters or {})  # parameters must be JSON (they are stored and sent to papermill)
        now = self.clock()
        row = PipelineScheduleRow(
            name=name,
            pipeline=pipeline,
            cron=cron,
            tz=tz,
            parameters=dict(parameters or {}),
            tags=dict(tags or {}),
            retries=retries,
            backoff_s=float(backoff_s),
            timeout_s=timeout_s,
            max_concurrent=max_concurrent,
            alerts=checked_alerts,
            enabled=enabled,
            created_at=now,
            next_run_at=next_fire(cron, tz, now),
        )
        with Session(self.store.engine) as session, session.begin():
            existing = session.get(PipelineScheduleRow, name)
            if existing is not None and not replace:
                raise ScheduleError(f"schedule {name!r} exists; remove it first or pass replace=True (--replace).")
            session.merge(row)
        return self.get(name) or {}

    def get(self, name: str) -> dict[str, Any] | None:
        with Session(self.store.engine) as session:
            row = session.get(PipelineScheduleRow, name)
            return _schedule_dict(row) if row else None

    def list(self) -> list[dict[str, Any]]:
        with Session(self.store.engine) as session:
            return [_schedule_dict(r) for r in session.scalars(select(PipelineScheduleRow).order_by("name"))]

    def remove(self, name: str) -> bool:
        with Session(self.store.engine) as session, session.begin():
            return session.execute(delete(PipelineScheduleRow).where(PipelineScheduleRow.name == name)).rowcount > 0

    def set_enabled(self, name: str, enabled: bool) -> bool:
        """Enable or disable; re-enabling starts from the next slot after now (no catch-up)."""
        with Session(self.store.engine) as session, session.begin():
            row = session.get(PipelineScheduleRow, name)
            if row is None:
                return False
            row.enabled = enabled
            if not enabled:  # a pending retry is dropped with the schedule's slots
                row.retry_due = row.retry_attempt = row.retry_of = None
            if enabled:
                row.next_run_at = next_fire(row.cron, row.tz, self.clock())
            return True

    # -- firing --------------------------------------------------------------------------------
    def tick(self) -> list[str]:
        """Fire every due schedule and retry; apply retention. Returns the ids of the runs started."""
        now = self.clock()
        started: list[str] = []
        with Session(self.store.engine) as session:
            due = list(
                session.scalars(
                    select(PipelineScheduleRow).where(
                        PipelineScheduleRow.enabled.is_(True), PipelineScheduleRow.next_run_at <= now
                    )
                )
            )
        for row in due:
            if not self._claim(row, now):
                continue
            if self._in_flight(row.name) >= row.max_concurrent:
                log.warning("schedule %s skipped a slot: %d run(s) still in flight", row.name, row.max_concurrent)
                self._emit(
                    "pipeline.skipped", {"schedule": row.name, "pipeline": row.pipeline, "reason": "concurrency"}
                )
                continue
            run_id = self._fire(row.name, attempt=1, retry_of=None)
            if run_id:
                started.append(run_id)
        with Session(self.store.engine) as session:
            retries = list(
                session.execute(
                    select(
                        PipelineScheduleRow.name,
                        PipelineScheduleRow.retry_due,
                        PipelineScheduleRow.retry_attempt,
                        PipelineScheduleRow.retry_of,
                    ).where(
                        PipelineScheduleRow.enabled.is_(True),
                        PipelineScheduleRow.retry_due.is_not(None),
                        PipelineScheduleRow.retry_due <= now,
                    )
                )
            )
        for name, due, attempt, retry_of in retries:
            if self._claim_retry(name, due):
                run_id = self._fire(name, attempt=attempt, retry_of=retry_of)
                if run_id:
                    started.append(run_id)
        if self.retention is not None:
            self.runner.purge(older_than=self.retention.max_age, keep_last=self.retention.keep_last)
        return started

    def pending_retries(self) -> list[dict[str, Any]]:
        """Retries waiting for their backoff to pass (kept in the store, so they survive a restart)."""
        return [
            {"schedule": s["name"], "attempt": s["retry_attempt"], "due": s["retry_due"], "retry_of": s["retry_of"]}
            for s in sorted(self.list(), key=lambda s: s["retry_due"] or datetime.max.replace(tzinfo=UTC))
            if s["retry_due"] is not None
        ]

    def run_forever(self, stop: threading.Event, tick_s: float = 15.0) -> None:
        """The standalone loop (`contextlab scheduler run`): tick until `stop` is set."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("scheduler tick failed; trying again in %s s", tick_s)
            stop.wait(tick_s)

    def _claim(self, row: PipelineScheduleRow, now: datetime) -> bool:
        upcoming = next_fire(row.cron, row.tz, now)
        with Session(self.store.engine) as session, session.begin():
            result = session.execute(
                update(PipelineScheduleRow)
                .where(PipelineScheduleRow.name == row.name, PipelineScheduleRow.next_run_at == row.next_run_at)
                .values(next_run_at=upcoming, last_run_at=now)
            )
            return result.rowcount == 1

    def _claim_retry(self, name: str, due: datetime) -> bool:
        with Session(self.store.engine) as session, session.begin():
            result = session.execute(
                update(PipelineScheduleRow)
                .where(PipelineScheduleRow.name == name, PipelineScheduleRow.retry_due == due)
                .values(retry_due=None, retry_attempt=None, retry_of=None)
            )
            return result.rowcount == 1

    def _in_flight(self, schedule: str) -> int:
        with Session(self.store.engine) as session:
            rows = session.scalars(
                select(PipelineRunRow.id).where(
                    PipelineRunRow.schedule == schedule, PipelineRunRow.status.in_((QUEUED, RUNNING))
                )
            )
            return len(list(rows))

    def _fire(self, name: str, *, attempt: int, retry_of: str | None) -> str | None:
        schedule = self.get(name)
        if schedule is None:
            return None
        try:
            return self.runner.submit(
                schedule["pipeline"],
                schedule["parameters"],
                tags=schedule["tags"],
                timeout_s=schedule["timeout_s"],
                trigger="retry" if attempt > 1 else "schedule",
                schedule=name,
                attempt=attempt,
                retry_of=retry_of,
                on_done=self._on_done,
            )
        except PipelineError as exc:  # the notebook changed under the schedule
            log.error("schedule %s could not start: %s", name, exc)
            self._alert(schedule, {"id": None, "pipeline": schedule["pipeline"], "status": "failed", "error": str(exc)})
            return None

    def _on_done(self, record: dict[str, Any]) -> None:
        if record.get("status") not in FINAL or record.get("status") == "succeeded" or not record.get("schedule"):
            return
        if record["status"] == "cancelled":
            return
        schedule = self.get(record["schedule"])
        if schedule is None:
            return
        attempt = int(record.get("attempt") or 1)
        if attempt <= schedule["retries"]:
            delay = min(schedule["backoff_s"] * 2 ** (attempt - 1), MAX_BACKOFF_S)
            due = self.clock() + timedelta(seconds=delay)
            with Session(self.store.engine) as session, session.begin():
                session.execute(
                    update(PipelineScheduleRow)
                    .where(PipelineScheduleRow.name == schedule["name"])
                    .values(retry_due=due, retry_attempt=attempt + 1, retry_of=record["retry_of"] or record["id"])
                )
            self._emit(
                "pipeline.retry",
                {"schedule": schedule["name"], "run": record["id"], "attempt": attempt + 1, "due": due.isoformat()},
            )
            return
        self._alert(schedule, record)

    # -- alerts --------------------------------------------------------------------------------
    def _alert(self, schedule: dict[str, Any], record: dict[str, Any]) -> None:
        payload = {
            "schedule": schedule["name"],
            "pipeline": record.get("pipeline") or schedule["pipeline"],
            "run": record.get("id"),
            "status": record.get("status"),
            "attempt": record.get("attempt"),
            "error": record.get("error"),
            "error_cell": record.get("error_cell"),
            "output_path": record.get("output_path"),
            "mlflow_run_id": record.get("mlflow_run_id"),
        }
        for alert in schedule["alerts"]:
            kind, _, target = alert.partition(":")
            try:
                if kind == "webhook":
                    self._webhook(target, payload)
                elif kind == "email":
                    self._email(target, payload)
                else:
                    self._emit(target or "pipeline.alert", payload)
                self.alerts_sent.append({"alert": alert, **payload})
            except Exception as exc:  # an alert channel failing must not stop the others
                log.error("alert %s for schedule %s failed: %s", alert, schedule["name"], exc)
                self._emit("pipeline.alert_failed", {"alert": alert, "error": str(exc)[:500], **payload})

    def _webhook(self, url: str, payload: dict[str, Any]) -> None:
        import httpx

        body = {"text": _summary(payload), **payload}
        httpx.post(url, json=body, timeout=self.webhook_timeout_s).raise_for_status()

    def _email(self, to: str, payload: dict[str, Any]) -> None:
        message = EmailMessage()
        message["Subject"] = f"[ContextLab] {payload['pipeline']} {payload['status']} ({payload['schedule']})"
        message["From"] = self.smtp.sender
        message["To"] = to
        message.set_content(_summary(payload) + "\n\n" + json.dumps(payload, indent=2, default=str))
        with smtplib.SMTP(self.smtp.host, self.smtp.port, timeout=self.smtp.timeout_s) as smtp:
            if self.smtp.starttls:
                smtp.starttls()
            if self.smtp.username:
                smtp.login(self.smtp.username, self.smtp.password or "")
            smtp.send_message(message)

    def _emit(self, topic: str, payload: dict[str, Any]) -> None:
        if self.publish is not None:
            self.publish(topic, payload)


def _summary(payload: dict[str, Any]) -> str:
    cell = f" in cell {payload['error_cell']}" if payload.get("error_cell") is not None else ""
    return (
        f"Pipeline {payload['pipeline']} (schedule {payload['schedule']}) {payload['status']} after attempt "
        f"{payload.get('attempt')}{cell}: {payload.get('error') or 'no error recorded'}. "
        f"Run {payload.get('run')}; see `contextlab jobs show {payload.get('run')}`."
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _schedule_dict(row: PipelineScheduleRow) -> dict[str, Any]:
    out = {column.name: getattr(row, column.name) for column in PipelineScheduleRow.__table__.columns}
    for key in ("created_at", "next_run_at", "last_run_at", "retry_due"):
        if out[key] is not None:
            out[key] = _aware(out[key])
    return out
