"""The admin console against a real state store: each tab's data, the Chat Hub's value events and actions,
and the audit tab in Debian's Chromium.

Screenshots go to `$CONTEXTLAB_TEST_OUTPUT` (default: the test's tmp folder).
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import panel as pn
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from contextlab.apps import console
from contextlab.extension.events import EventBus
from contextlab.extension.prompts import DescriptionContent, PromptStore
from contextlab.state import StateStore
from contextlab.state.models import EventRecord, PipelineRunRow, UpstreamServerRow
from contextlab.state.store import AuditEntry
from tests.support.server import free_port

CHROMIUM = Path("/usr/bin/chromium")
NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    yield store
    store.close()


def _audit(state: StateStore) -> None:
    state.write_audit(
        [
            AuditEntry("alice", "tools/call", 3.0, "ok", target="crm__lookup", session_id="s-1"),
            AuditEntry("alice", "tools/call", 8.0, "ok", target="crm__lookup", session_id="s-1"),
            AuditEntry("bob", "tools/call", 120.0, "tool_error", target="crm__update", error="bad id"),
            AuditEntry("bob", "tools/call", 950.0, "denied", target="sql__drop", decision="policy:no-ddl"),
            AuditEntry("carol", "resources/read", 15.0, "ok", session_id="s-2"),
            AuditEntry("carol", "tools/call", 40.0, "ok", target="old__tool", ts=NOW - dt.timedelta(hours=30)),
        ]
    )


def _all_by_css(view: pn.viewable.Viewable, css: str) -> list[Any]:
    found = view.select(lambda o: css in (getattr(o, "css_classes", None) or []))
    return list({id(o): o for o in found}.values())  # `select` may meet an object twice


def _by_css(view: pn.viewable.Viewable, css: str) -> Any:
    [found] = _all_by_css(view, css)
    return found


def _widget(view: pn.viewable.Viewable, kind: type, name: str) -> Any:
    [found] = [w for w in view.select(kind) if w.name == name]
    return found


def _add_run(state: StateStore, run_id: str, status: str, duration: float | None, minutes_ago: int) -> None:
    created = NOW - dt.timedelta(minutes=minutes_ago)
    with Session(state.engine) as session, session.begin():
        session.add(
            PipelineRunRow(
                id=run_id,
                pipeline="pipelines/rag_eval.ipynb",
                status=status,
                trigger="schedule",
                executor="local",
                created_at=created,
                duration_s=duration,
                error="cell 3 raised" if status == "failed" else None,
            )
        )


# ------------------------------------------------------------------------------------------------ audit


def test_audit_tab_filters_drive_table_summary_and_histogram(state: StateStore) -> None:
    _audit(state)
    tab = console.audit_tab(state)
    table = _by_css(tab, "cl-console-audit")
    histogram = _by_css(tab, "cl-console-latency")
    summary = _by_css(tab, "cl-console-audit-summary")
    assert isinstance(table, pn.widgets.Tabulator) and isinstance(histogram, pn.pane.Vega)

    # default window is 24 hours: the 30-hour-old call is out
    assert sorted(table.value["latency_ms"]) == [3.0, 8.0, 15.0, 120.0, 950.0]
    assert "old__tool" not in set(table.value["target"])
    spec = histogram.object
    assert spec["mark"] == "bar" and spec["encoding"]["x"]["bin"] == {"maxbins": 20}
    assert spec["encoding"]["y"]["aggregate"] == "count"
    assert sorted(v["latency_ms"] for v in spec["data"]["values"]) == [3.0, 8.0, 15.0, 120.0, 950.0]
    assert summary.object.startswith("**5** calls") and "not ok **2**" in summary.object

    _widget(tab, pn.widgets.TextInput, "Tool or method contains").value = "CRM__"
    assert table.value["target"].tolist() == ["crm__update", "crm__lookup", "crm__lookup"]  # newest first
    assert sorted(v["latency_ms"] for v in histogram.object["data"]["values"]) == [3.0, 8.0, 120.0]

    _widget(tab, pn.widgets.Select, "Outcome").value = "tool_error"
    assert table.value[["principal", "error"]].values.tolist() == [["bob", "bad id"]]
    assert [v["latency_ms"] for v in histogram.object["data"]["values"]] == [120.0]

    _widget(tab, pn.widgets.Select, "Outcome").value = "all"
    _widget(tab, pn.widgets.TextInput, "Tool or method contains").value = "resources/"
    _widget(tab, pn.widgets.TextInput, "Caller").value = "carol"
    assert table.value["method"].tolist() == ["resources/read"]

    _widget(tab, pn.widgets.TextInput, "Tool or method contains").value = ""
    _widget(tab, pn.widgets.Select, "Window").value = "all"
    assert set(table.value["target"].dropna()) == {"old__tool"}  # carol's call of 30 hours ago is back

    _widget(tab, pn.widgets.TextInput, "Caller").value = "nobody"
    assert table.value.empty and histogram.object["data"]["values"] == []
    assert summary.object == "No audit entries match these filters."


def test_audit_refresh_reads_new_rows(state: StateStore) -> None:
    tab = console.audit_tab(state)
    table = _by_css(tab, "cl-console-audit")
    assert table.value.empty
    state.write_audit([AuditEntry("dana", "tools/call", 42.0, "ok", target="metrics__query")])
    refresh = next(b for b in tab.select(pn.widgets.Button) if b.label == "Refresh")
    refresh.clicks += 1
    assert table.value["target"].tolist() == ["metrics__query"]


# ------------------------------------------------------------------------------------------------ chat hub

RAW_TOPICS = ("registry.changed", "prompts.changed", "page.updated", "tools.list_changed")


def _publish_all(state: StateStore) -> EventBus:
    bus = EventBus(state)
    bus.publish("registry.changed", {"server": "crm", "action": "added"})
    bus.publish("flow.started", {"app": "expenses", "flow": "approval", "instance_id": "i1", "status": "running"})
    bus.publish("page.updated", {"app": "expenses", "version": 2})
    bus.publish(
        "flow.task_waiting",
        {"app": "expenses", "flow": "approval", "instance_id": "i1", "task": {"name": "Task_Approve"}},
    )
    bus.publish("app.published", {"app": "expenses", "version": 2, "by": "root"})
    bus.publish("prompts.changed", {"prompt": "crm__lookup", "action": "version"})
    bus.publish("provider.health", {"server": "crm", "status": "down", "breaker": "open", "last_error": "refused"})
    bus.publish("provider.health", {"server": "crm", "status": "up", "breaker": "half-open"})
    bus.publish("provider.health", {"server": "crm", "status": "up", "breaker": "closed"})
    bus.publish("pipeline.failed", {"id": "r1", "pipeline": "rag_eval", "status": "failed", "error": "cell 3"})
    bus.publish("pipeline.retry", {"schedule": "nightly", "run": "r1", "attempt": 2})
    bus.publish("pipeline.succeeded", {"id": "r2", "pipeline": "rag_eval", "status": "succeeded"})
    bus.publish("flow.completed", {"app": "expenses", "flow": "approval", "instance_id": "i1"})
    bus.publish("tools.list_changed", {})
    return bus


def test_value_events_map_real_topics_and_leave_raw_ones_out(state: StateStore) -> None:
    _publish_all(state)
    events = console.value_events(state)
    assert [(e.kind, e.action) for e in reversed(events)] == [
        ("task accepted", "trace"),  # flow.started
        ("approval requested", "approve"),  # flow.task_waiting
        ("milestone", None),  # app.published
        ("anomaly detected", "trace"),  # breaker opened
        ("recovery started", "trace"),  # breaker half-open
        ("recovery done", "trace"),  # breaker closed
        ("anomaly detected", "retry"),  # pipeline.failed
        ("recovery started", None),  # pipeline.retry
        ("receipt", "trace"),  # pipeline.succeeded
        ("receipt", "trace"),  # flow.completed
    ]
    payloads = [e.payload for e in events]
    assert not any(p.get("action") in ("added", "version") for p in payloads)  # registry/prompt plumbing
    assert all(e.payload != {"app": "expenses", "version": 2} for e in events)  # page.updated (a draft save)
    by_title = {e.title: e for e in events}
    assert by_title["Task_Approve (expenses)"].kind == "approval requested"
    assert by_title["upstream crm is down"].detail == "refused"
    assert "pipeline nightly retries (attempt 2)" in by_title  # the retry event names its schedule
    newest = events[0].id
    assert console.value_events(state, after=newest) == []
    assert len(console.value_events(state, limit=3)) == 3


def test_chat_hub_cards_and_their_actions(state: StateStore) -> None:
    _publish_all(state)
    retried: list[console.ValueEvent] = []

    def retry(event: console.ValueEvent) -> str:
        retried.append(event)
        return f"retried {event.payload['pipeline']}"

    hub = console.chat_hub_tab(state, app_url=lambda app: f"https://apps.example/{app}/tasks", retry=retry)
    feed = _by_css(hub, "cl-console-hub")
    cards = [c for c in feed.objects if isinstance(c, pn.Card)]
    assert len(cards) == 10
    text = " ".join(o.object for c in cards for o in c.select(pn.pane.Markdown))
    for raw in ("registry", "prompts.changed", "page.updated"):
        assert raw not in text

    approve = _by_css(hub, "cl-hub-approve")
    assert "(https://apps.example/expenses/tasks)" in approve.object

    [retry_button] = [b for b in hub.select(pn.widgets.Button) if b.label == "Retry"]
    retry_button.clicks += 1
    assert [e.payload["id"] for e in retried] == ["r1"]
    assert any("retried rag_eval" in getattr(o, "object", "") for o in hub.select(pn.pane.Markdown))


def test_open_trace_shows_the_audit_rows_of_the_event(state: StateStore) -> None:
    _audit(state)
    bus = EventBus(state)
    bus.publish("flow.failed", {"app": "crm", "flow": "sync", "instance_id": "i9", "session_id": "s-1", "error": "x"})
    bus.publish("pipeline.succeeded", {"id": "r3", "pipeline": "rag_eval", "status": "succeeded"})
    by_session, recent = sorted(console.value_events(state), key=lambda e: e.id)

    assert console.trace_frame(state, by_session)["session_id"].tolist() == ["s-1", "s-1"]
    window = console.trace_frame(state, recent)
    assert "old__tool" not in set(window["target"])  # 30 hours before the event: out of the trace window
    assert len(window) == 5

    later = console.ValueEvent(0, NOW + dt.timedelta(hours=1), "receipt", "t", "", "trace", {})
    assert console.trace_frame(state, later).empty

    hub = console.chat_hub_tab(state)
    [trace_button] = [b for b in hub.select(pn.widgets.Button) if b.label == "Open trace"]
    trace_button.clicks += 1
    table = _by_css(hub, "cl-hub-trace-table")
    assert len(table.value) == 5 and "crm__lookup" in set(table.value["target"])


def test_chat_hub_on_an_empty_store_says_what_will_show(state: StateStore) -> None:
    hub = console.chat_hub_tab(state)
    feed = _by_css(hub, "cl-console-hub")
    [note] = feed.objects
    assert "Nothing yet" in note.object
    EventBus(state).publish("registry.changed", {"server": "x"})  # plumbing only: still nothing to show
    assert console.value_events(state) == []


# ------------------------------------------------------------------------------------------------ registry


def test_registry_tab_lists_servers_and_refreshes(state: StateStore) -> None:
    tab = console.registry_tab(state)
    table = _by_css(tab, "cl-console-registry")
    note = _by_css(tab, "cl-console-registry-note")
    assert table.value.empty and "contextlab registry add" in note.object
    with Session(state.engine) as session, session.begin():
        for name, health in (
            ("crm", {"status": "up", "breaker": "closed", "latency_ms": 4.2}),
            ("wiki", {"status": "down", "breaker": "open", "last_error": "timeout"}),
        ):
            session.add(
                UpstreamServerRow(
                    name=name,
                    transport="stdio" if name == "wiki" else "http",
                    url=None if name == "wiki" else "https://crm.example/mcp",
                    command=["wiki-mcp", "--ro"] if name == "wiki" else None,
                    options={"retries": 1, "cacheable_tools": ["search"]} if name == "wiki" else {},
                    health=health,
                    created_at=NOW,
                    updated_at=NOW,
                )
            )
    next(b for b in tab.select(pn.widgets.Button) if b.label == "Refresh").clicks += 1
    rows = table.value.set_index("server").to_dict("index")
    assert rows["crm"]["target"] == "https://crm.example/mcp" and rows["crm"]["latency_ms"] == 4.2
    assert rows["wiki"]["target"] == "wiki-mcp --ro" and rows["wiki"]["breaker"] == "open"
    assert '"retries": 1' in rows["wiki"]["limits"]
    assert note.object == "2 servers · 1 breaker(s) not closed"


# ------------------------------------------------------------------------------------------------ prompts


def test_prompts_tab_labels_canary_diff_and_rollback(state: StateStore) -> None:
    prompts = PromptStore(state)
    prompts.create_version(
        "crm__lookup",
        DescriptionContent("Look up a customer by id."),
        author="ann",
        baseline=DescriptionContent("Look up a customer."),
    )
    prompts.create_version("crm__lookup", DescriptionContent("Look up one customer by CRM id."), author="ann")
    prompts.create_version(
        "crm__lookup", DescriptionContent("Find a customer by CRM id or e-mail."), author="bo", canary_weight=25
    )
    tab = console.prompts_tab(state, "root")
    summary = tab.objects[0].object
    assert "`crm__lookup` | 4 |" in summary
    assert "canary → v4 (25%)" in summary and "stable → v3" in summary

    versions = _by_css(tab, "cl-console-prompt-versions")
    assert versions.value["version"].tolist() == [1, 2, 3, 4]
    assert versions.value["author"].tolist() == ["upstream", "ann", "ann", "bo"]

    diff = _by_css(tab, "cl-console-prompt-diff")
    _widget(tab, pn.widgets.IntInput, "From version").value = 1
    _widget(tab, pn.widgets.IntInput, "To version").value = 3
    assert diff.object.startswith("```diff\n") and diff.object.endswith("\n```")
    assert "--- crm__lookup@v1" in diff.object and "+++ crm__lookup@v3" in diff.object
    assert "-Look up a customer." in diff.object and "+Look up one customer by CRM id." in diff.object
    _widget(tab, pn.widgets.IntInput, "To version").value = 9
    assert "9" in diff.object and "+++" not in diff.object  # a missing version is said, not raised

    rollback = next(b for b in tab.select(pn.widgets.Button) if b.label.startswith("Roll back"))
    rollback.clicks += 1
    assert {label.label: label.version for label in prompts.labels("crm__lookup")}["stable"] == 2
    assert "now serves version 2" in tab.objects[-1].object
    assert "stable → v2" in tab.objects[0].object  # the summary followed

    _widget(tab, pn.widgets.Select, "Label to roll back").value = "canary"
    rollback.clicks += 1
    assert "canary" not in {label.label for label in prompts.labels("crm__lookup")}
    assert "canary removed" in tab.objects[-1].object and "canary →" not in tab.objects[0].object
    rollback.clicks += 1  # nothing left to roll back: said, not raised
    assert tab.objects[-1].object.startswith("**Not rolled back:**")

    with Session(state.engine) as session:  # each change is announced in the outbox, as the server does
        changes = session.scalars(select(EventRecord.payload).where(EventRecord.topic == "prompts.changed")).all()
    assert [c["action"] for c in changes] == ["rollback", "unlabel:canary"]
    assert console.value_events(state) == []  # plumbing, not a value event


def test_prompts_tab_on_an_empty_store(state: StateStore) -> None:
    tab = console.prompts_tab(state, "root")
    assert "No tool description is versioned yet" in tab.objects[0].object


# ------------------------------------------------------------------------------------------------ jobs


def test_jobs_tab_history_and_duration_plot(state: StateStore) -> None:
    _add_run(state, "r-old", "succeeded", 12.5, minutes_ago=30)
    _add_run(state, "r-new", "failed", 3.0, minutes_ago=5)
    _add_run(state, "r-run", "running", None, minutes_ago=1)
    frame = console.runs_frame(state)
    assert frame["id"].tolist() == ["r-run", "r-new", "r-old"]  # newest first
    assert frame.set_index("id").loc["r-new", "error"] == "cell 3 raised"

    tab = console.jobs_tab(state, None)
    runs = _by_css(tab, "cl-console-jobs")
    assert runs.value["status"].tolist() == ["running", "failed", "succeeded"]
    [plot] = [v for v in tab.select(pn.pane.Vega) if v.object and v.object.get("mark", {}).get("type") == "point"]
    points = {p["duration_s"]: p["status"] for p in plot.object["data"]["values"]}
    assert points == {3.0: "failed", 12.5: "succeeded"}  # the running job has no duration yet
    texts = " ".join(str(o.object) for o in tab.select(pn.pane.Markdown))
    assert "No MLflow tracking URI is configured" in texts


def test_jobs_tab_says_when_mlflow_has_nothing_or_cannot_be_read(tmp_path: Path) -> None:
    empty = console._mlflow_view(f"sqlite:///{tmp_path / 'no-runs.db'}")
    assert not isinstance(empty, pn.pane.Alert) and "No runs with metrics" in empty.object
    assert "no-runs.db" in empty.object  # names the store it looked at
    broken = console._mlflow_view("bogus://nowhere")
    assert isinstance(broken, pn.pane.Alert) and "could not be read" in broken.object


# ------------------------------------------------------------------------------------------------ whole console


def test_jobs_tab_plots_mlflow_metrics(state: StateStore, tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    try:
        for score in (0.5, 0.75):
            with mlflow.start_run():
                mlflow.log_metric("hit_at_5", score)
    finally:
        mlflow.set_tracking_uri(None)
    frame = console.mlflow_frame(uri)
    assert sorted(frame["metrics.hit_at_5"]) == [0.5, 0.75]
    view = console._mlflow_view(uri)
    spec = view.objects[0].object
    assert {v["variable"] for v in spec["data"]["values"]} == {"hit_at_5"} and len(spec["data"]["values"]) == 2
    assert "could not be read" in console._mlflow_view("bogus://nowhere").object


def test_the_console_has_five_tabs_and_builds_on_an_empty_store(state: StateStore) -> None:
    view = console.build_console(state, user="root")
    tabs = next(iter(view.select(pn.Tabs)))
    assert list(tabs._names) == ["Registry", "Prompts", "Audit", "Jobs & evaluations", "Chat Hub"]
    assert "signed in as **root**" in view.objects[0].object
    refreshes = [b for b in view.select(pn.widgets.Button) if b.label == "Refresh"]
    assert len(refreshes) == 3  # registry, audit, jobs; prompts and the hub refresh by themselves
    assert _by_css(view, "cl-console-audit").value.empty


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)")
def test_the_audit_tab_in_the_browser(state: StateStore, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    tool = f"crm__lookup_{uuid.uuid4().hex[:6]}"
    state.write_audit(
        [AuditEntry("alice", "tools/call", float(ms), "ok", target=tool) for ms in (2, 5, 9, 30, 31, 80, 400)]
    )
    EventBus(state).publish("pipeline.succeeded", {"id": "r1", "pipeline": "rag_eval", "status": "succeeded"})
    out = Path(os.environ.get("CONTEXTLAB_TEST_OUTPUT", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = pn.serve(
        {"console": lambda: console.build_console(state)},
        port=port,
        threaded=True,
        show=False,
        websocket_origin=[f"127.0.0.1:{port}"],
    )
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/console")
                page.get_by_text("Audit", exact=True).first.click()
                audit = page.locator(".cl-console-audit")
                audit.get_by_text(tool).first.wait_for()
                assert audit.get_by_text(tool).count() == 7
                page.locator(".cl-console-latency canvas, .cl-console-latency svg").first.wait_for()
                page.screenshot(path=str(out / "console-audit.png"), full_page=True)
                page.get_by_text("Chat Hub", exact=True).first.click()
                hub = page.locator(".cl-console-hub")
                hub.get_by_text("pipeline rag_eval succeeded").first.wait_for()
                assert hub.get_by_text("receipt").count() >= 1
                page.get_by_text("Open trace", exact=True).first.click()
                trace = page.locator(".cl-hub-trace-table")
                trace.get_by_text(tool).first.wait_for()  # the MCP calls made before the receipt
                assert trace.get_by_text(tool).count() == 7
                # the hub is live: an event published now shows up without a reload
                EventBus(state).publish("flow.failed", {"app": "crm", "flow": "sync", "error": "upstream refused"})
                hub.get_by_text("sync failed in crm").first.wait_for()
                assert hub.get_by_text("anomaly detected").count() >= 1
                page.screenshot(path=str(out / "console-hub.png"), full_page=True)
            finally:
                browser.close()
    finally:
        server.stop()
    assert (out / "console-audit.png").stat().st_size > 0
