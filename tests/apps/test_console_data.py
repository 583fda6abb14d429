"""The console's data: audit filters and latency histogram, value events, registry and prompt views."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from contextlab.apps import console
from contextlab.extension.events import EventBus
from contextlab.state import StateStore
from contextlab.state.models import UpstreamServerRow
from contextlab.state.store import AuditEntry


@pytest.fixture
def state(tmp_path: Path) -> StateStore:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    return store


def test_audit_filters_and_histogram(state: StateStore) -> None:
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=3)
    state.write_audit(
        [
            AuditEntry("alice", "tools/call", 5.0, "ok", target="apps__run_query"),
            AuditEntry("alice", "tools/call", 50.0, "ok", target="sql__query"),
            AuditEntry("bob", "tools/call", 500.0, "error", target="sql__query", error="boom"),
            AuditEntry("bob", "tools/list", 1.0, "ok"),
            AuditEntry("carol", "tools/call", 7.0, "ok", target="apps__list", ts=old),
        ]
    )
    assert len(console.audit_frame(state)) == 5
    assert console.audit_frame(state, tool="SQL__")["target"].tolist() == ["sql__query", "sql__query"]
    assert console.audit_frame(state, tool="tools/list")["principal"].tolist() == ["bob"]
    assert console.audit_frame(state, principal="bob", outcome="error")["error"].tolist() == ["boom"]
    assert "apps__list" not in console.audit_frame(state, hours=24)["target"].tolist()  # 3 days old

    frame = console.audit_frame(state, tool="sql")
    spec = console.latency_histogram(frame)
    assert sorted(v["latency_ms"] for v in spec["data"]["values"]) == [50.0, 500.0]
    assert spec["encoding"]["x"]["bin"] and spec["encoding"]["y"]["aggregate"] == "count"
    assert console.latency_summary(frame).startswith("**2** calls")
    assert "not ok **1**" in console.latency_summary(frame)
    assert console.latency_summary(frame.iloc[0:0]) == "No audit entries match these filters."


def test_value_events_leave_plumbing_out(state: StateStore) -> None:
    bus = EventBus(state)
    bus.publish("registry.changed", {"server": "x"})
    bus.publish("flow.task_waiting", {"app": "expenses", "flow": "approval", "task": {"title": "Approve expense"}})
    bus.publish("prompts.changed", {"prompt": "sql__query"})
    bus.publish("flow.failed", {"app": "expenses", "flow": "approval", "instance_id": "i1", "error": "tool down"})
    bus.publish("provider.health", {"server": "crm", "status": "down", "breaker": "open"})
    bus.publish("provider.health", {"server": "crm", "status": "up", "breaker": "closed"})
    bus.publish("pipeline.succeeded", {"pipeline": "rag_eval", "status": "succeeded"})
    events = console.value_events(state)
    assert [(e.kind, e.action) for e in events] == [
        ("receipt", "trace"),
        ("recovery done", "trace"),
        ("anomaly detected", "trace"),
        ("anomaly detected", "retry"),
        ("approval requested", "approve"),
    ]
    assert events[3].detail == "tool down" and events[4].title == "Approve expense (expenses)"


def test_registry_shows_health_breaker_and_limits(state: StateStore) -> None:
    now = dt.datetime.now(dt.UTC)
    with Session(state.engine) as session, session.begin():
        session.add(
            UpstreamServerRow(
                name="crm",
                transport="http",
                url="http://crm.local/mcp",
                options={"rate_limit": "60/minute"},
                health={"status": "down", "breaker": "open", "latency_ms": 12.5, "last_error": "refused"},
                created_at=now,
                updated_at=now,
            )
        )
    [row] = console.registry_frame(state).to_dict("records")
    assert (row["server"], row["health"], row["breaker"], row["last_error"]) == ("crm", "down", "open", "refused")
    assert "60/minute" in row["limits"]


def test_the_console_builds_on_an_empty_store(state: StateStore) -> None:
    view = console.build_console(state, user="root")
    tabs = view.objects[1]
    assert [name for name in tabs._names] == ["Registry", "Prompts", "Audit", "Jobs & evaluations", "Chat Hub"]
    [note] = view.select(lambda o: "cl-console-registry-note" in (getattr(o, "css_classes", None) or []))
    assert "contextlab registry add" in note.object  # an empty registry says how to fill it
