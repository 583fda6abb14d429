"""The admin console: registry, prompts, audit, jobs and evaluations, and the Chat Hub of value events.

Every tab reads the control-plane state store when it is built and again on "Refresh"; nothing is cached
across sessions. `contextlab apps serve` mounts it at `/console` for admins.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import httpx
import pandas as pd
import panel as pn
from sqlalchemy import select
from sqlalchemy.orm import Session

from contextlab.state import StateStore
from contextlab.state.models import EventRecord, PipelineRunRow, UpstreamServerRow

WINDOWS = {"15 minutes": 0.25, "1 hour": 1, "24 hours": 24, "7 days": 24 * 7, "all": None}
OUTCOMES = ["all", "ok", "tool_error", "error", "denied"]


# ------------------------------------------------------------------------------------------------ data


def registry_frame(state: StateStore) -> pd.DataFrame:
    """Upstream servers with health, breaker state, latency, and their limits/options."""
    with Session(state.engine) as session:
        rows = list(session.scalars(select(UpstreamServerRow).order_by(UpstreamServerRow.name)))
    records = []
    for row in rows:
        health = row.health or {}
        records.append(
            {
                "server": row.name,
                "transport": row.transport,
                "target": row.url or " ".join(row.command or []),
                "enabled": row.enabled,
                "health": health.get("status", "unknown"),
                "breaker": health.get("breaker", "closed"),
                "latency_ms": health.get("latency_ms"),
                "last_error": health.get("last_error") or "",
                "limits": json.dumps(row.options or {}, sort_keys=True),
            }
        )
    columns = ["server", "transport", "target", "enabled", "health", "breaker", "latency_ms", "last_error", "limits"]
    return pd.DataFrame.from_records(records, columns=columns)


def audit_frame(
    state: StateStore,
    *,
    tool: str = "",
    principal: str = "",
    outcome: str = "all",
    hours: float | None = None,
    limit: int = 5000,
) -> pd.DataFrame:
    """Audit entries, newest first; `tool` matches part of the tool or method name."""
    since = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours) if hours else None
    rows = state.audit(
        outcome=None if outcome == "all" else outcome,
        principal=principal or None,
        since=since,
        limit=limit,
    )
    frame = pd.DataFrame.from_records(
        rows,
        columns=[
            "ts",
            "principal",
            "method",
            "target",
            "outcome",
            "latency_ms",
            "error",
            "decision",
            "client",
            "session_id",
        ],
    )
    if tool and not frame.empty:
        needle = tool.lower()
        hit = frame["target"].fillna("").str.lower().str.contains(needle, regex=False)
        hit |= frame["method"].fillna("").str.lower().str.contains(needle, regex=False)
        frame = frame[hit]
    return frame.reset_index(drop=True)


def latency_histogram(frame: pd.DataFrame, bins: int = 20) -> dict[str, Any]:
    """A Vega-Lite bar chart of the latencies in `frame`."""
    values = [{"latency_ms": float(v)} for v in frame.get("latency_ms", pd.Series(dtype=float)).dropna()]
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": values},
        "mark": "bar",
        "encoding": {
            "x": {"field": "latency_ms", "bin": {"maxbins": bins}, "title": "latency (ms)"},
            "y": {"aggregate": "count", "title": "calls"},
        },
        "width": "container",
        "height": 220,
    }


def latency_summary(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "No audit entries match these filters."
    lat = sorted(frame["latency_ms"].dropna())
    p95 = lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]
    errors = int((frame["outcome"] != "ok").sum())
    return (
        f"**{len(frame)}** calls · p50 **{statistics.median(lat):.1f} ms** · p95 **{p95:.1f} ms** · not ok **{errors}**"
    )


def runs_frame(state: StateStore, limit: int = 200) -> pd.DataFrame:
    """Pipeline runs (jobs), newest first."""
    with Session(state.engine) as session:
        rows = list(session.scalars(select(PipelineRunRow).order_by(PipelineRunRow.created_at.desc()).limit(limit)))
    columns = ["id", "pipeline", "status", "trigger", "attempt", "created_at", "duration_s", "mlflow_run_id", "error"]
    return pd.DataFrame.from_records([{c: getattr(r, c) for c in columns} for r in rows], columns=columns)


def mlflow_frame(tracking_uri: str, limit: int = 50) -> pd.DataFrame:
    """The latest MLflow runs with their metrics (columns `metrics.*`), newest first.

    Uses a client of its own: the process-wide tracking URI (and `$MLFLOW_TRACKING_URI`) stay as they are."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return pd.DataFrame()
    runs = client.search_runs(experiments, max_results=limit, order_by=["attributes.start_time DESC"])
    rows = [
        {
            "run_id": run.info.run_id,
            "tags.mlflow.runName": run.info.run_name,
            "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
            **{f"metrics.{k}": v for k, v in run.data.metrics.items()},
        }
        for run in runs
    ]
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class ValueEvent:
    """One Chat Hub card: what happened, in words, and what to do about it."""

    id: int
    ts: dt.datetime
    kind: str  # task accepted | approval requested | milestone | receipt | anomaly detected | recovery …
    title: str
    detail: str
    action: str | None  # approve | retry | trace
    payload: Mapping[str, Any]


def value_event(record: EventRecord) -> ValueEvent | None:
    """The value event an outbox event stands for, or None for plumbing (registry and prompt changes, …)."""
    p = record.payload or {}
    topic = record.topic
    what = p.get("app") or p.get("pipeline") or p.get("server") or p.get("schedule") or ""
    if topic == "flow.started":
        kind, title, action = "task accepted", f"{p.get('flow')} started in {what}", "trace"
    elif topic == "flow.task_waiting":
        task = p.get("task") or {}
        kind, title, action = "approval requested", f"{task.get('title') or task.get('name')} ({what})", "approve"
    elif topic == "flow.completed":
        kind, title, action = "receipt", f"{p.get('flow')} completed in {what}", "trace"
    elif topic == "flow.cancelled":
        kind, title, action = "receipt", f"{p.get('flow')} cancelled in {what}", "trace"
    elif topic == "flow.failed":
        kind, title, action = "anomaly detected", f"{p.get('flow')} failed in {what}", "retry"
    elif topic == "app.published":
        kind, title, action = "milestone", f"{what} version {p.get('version')} published", None
    elif topic == "pipeline.succeeded":
        kind, title, action = "receipt", f"pipeline {what} succeeded", "trace"
    elif topic in ("pipeline.failed", "pipeline.alert"):
        kind, title, action = "anomaly detected", f"pipeline {what} {p.get('status') or 'alert'}", "retry"
    elif topic == "pipeline.alert_failed":
        kind, title, action = "anomaly detected", f"alert {p.get('alert')} for pipeline {what} was not sent", None
    elif topic == "pipeline.skipped":
        kind, title, action = (
            "anomaly detected",
            f"schedule {p.get('schedule')} skipped a run ({p.get('reason')})",
            None,
        )
    elif topic == "pipeline.retry":
        kind, title, action = "recovery started", f"pipeline {what} retries (attempt {p.get('attempt')})", None
    elif topic == "provider.health":
        kind, title = _health_kind(p, what)
        action = "trace"
    else:
        return None
    detail = p.get("error") or p.get("last_error") or ""
    return ValueEvent(record.id, record.ts, kind, title, str(detail)[:300], action, p)


def _health_kind(payload: Mapping[str, Any], server: str) -> tuple[str, str]:
    """Upstream health: down or breaker open is an anomaly, half-open a recovery under way, up and closed done."""
    if payload.get("status") == "down" or payload.get("breaker") == "open":
        return "anomaly detected", f"upstream {server} is down"
    if payload.get("breaker") == "half-open":
        return "recovery started", f"upstream {server} is being probed (breaker half-open)"
    return "recovery done", f"upstream {server} is back up"


def value_events(state: StateStore, after: int = 0, limit: int = 200) -> list[ValueEvent]:
    """The newest value events (newest first), skipping every other topic."""
    with Session(state.engine) as session:
        query = select(EventRecord).where(EventRecord.id > after).order_by(EventRecord.id.desc()).limit(limit * 5)
        records = list(session.scalars(query))
    events = [e for e in map(value_event, records) if e is not None]
    return events[:limit]


def trace_frame(state: StateStore, event: ValueEvent, *, before_s: float = 120, after_s: float = 5) -> pd.DataFrame:
    """The audit rows behind a value event: those of its MCP session if the event names one, else the calls
    made in the `before_s` seconds before it (and `after_s` after, for clock skew)."""
    frame = audit_frame(state, hours=None, limit=2000)
    if frame.empty:
        return frame
    session_id = event.payload.get("session_id")
    if session_id:
        return frame[frame["session_id"] == session_id].reset_index(drop=True)
    ts = pd.to_datetime(frame["ts"], utc=True)
    at = pd.Timestamp(event.ts)
    at = at.tz_localize("UTC") if at.tzinfo is None else at
    keep = (ts <= at + pd.Timedelta(seconds=after_s)) & (ts >= at - pd.Timedelta(seconds=before_s))
    return frame[keep].reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ views


def _table(frame: pd.DataFrame, css: str, page_size: int = 15) -> pn.widgets.Tabulator:
    return pn.widgets.Tabulator(
        frame,
        pagination="local",
        page_size=page_size,
        disabled=True,
        show_index=False,
        sizing_mode="stretch_width",
        css_classes=[css],
    )


def registry_tab(state: StateStore) -> pn.Column:
    table = _table(registry_frame(state), "cl-console-registry")
    note = pn.pane.Markdown("", css_classes=["cl-console-registry-note"])

    def refresh(_event: Any = None) -> None:
        frame = registry_frame(state)
        table.value = frame
        open_ = int((frame["breaker"] != "closed").sum()) if not frame.empty else 0
        note.object = (
            "No upstream MCP server is registered: `contextlab registry add` registers one."
            if frame.empty
            else f"{len(frame)} servers · {open_} breaker(s) not closed"
        )

    refresh()
    button = pn.widgets.Button(label="Refresh", css_classes=["cl-refresh"])
    button.on_click(refresh)
    return pn.Column(button, note, table, sizing_mode="stretch_width")


def prompts_tab(state: StateStore, user: str) -> pn.Column:
    from contextlab.extension.events import EventBus
    from contextlab.extension.prompts import CANARY, SERVED, PromptError, PromptStore

    prompts = PromptStore(state)
    bus = EventBus(state)
    # like the server's own PromptStore: every change is announced in the events outbox
    prompts.listeners.append(
        lambda prompt, action: bus.publish("prompts.changed", {"prompt": prompt, "action": action})
    )
    summary = pn.pane.Markdown("")
    pick = pn.widgets.Select(label="Tool description", options=[])
    versions = _table(pd.DataFrame(), "cl-console-prompt-versions", page_size=8)
    old = pn.widgets.IntInput(label="From version", value=1, start=1, width=120)
    new = pn.widgets.IntInput(label="To version", value=1, start=1, width=120)
    diff = pn.pane.Markdown("", css_classes=["cl-console-prompt-diff"])
    message = pn.pane.Markdown("")
    which = pn.widgets.Select(label="Label to roll back", options=[SERVED, CANARY], value=SERVED, width=160)
    rollback = pn.widgets.Button(label="Roll back the label", button_type="warning", css_classes=["cl-prompt-rollback"])

    def load_summary() -> None:
        data = prompts.summary()
        lines = []
        for name, entry in sorted(data.items()):
            labels = ", ".join(
                f"{label} → v{v['version']}" + (f" ({v['weight']:g}%)" if v.get("weight") is not None else "")
                for label, v in sorted(entry["labels"].items())
            )
            lines.append(f"| `{name}` | {entry['versions']} | {labels} |")
        summary.object = (
            "| tool | versions | labels (canary share) |\n|---|---|---|\n" + "\n".join(lines)
            if lines
            else "No tool description is versioned yet: `contextlab prompts` records one."
        )
        pick.options = sorted(data)
        if pick.value not in pick.options:
            pick.value = pick.options[0] if pick.options else None

    def show(_event: Any = None) -> None:
        if not pick.value:
            return
        rows = [v.to_dict() for v in prompts.versions(pick.value)]
        versions.value = pd.DataFrame(rows)[["version", "author", "message", "created_at"]] if rows else pd.DataFrame()
        if rows:
            new.value = rows[-1]["version"]
            old.value = max(1, new.value - 1)

    def show_diff(_event: Any = None) -> None:
        if pick.value:
            try:
                text = prompts.diff(pick.value, old.value, new.value)
            except PromptError as exc:
                text = str(exc)
            diff.object = f"```diff\n{text or '(no change)'}\n```"

    def roll_back(prompt: str, label: str) -> dict[str, Any]:
        # In a Jupyter server's environment (the console behind jupyter-server-proxy) the rollback goes
        # through its REST API, so the gateway's in-memory labels change at once; standalone it writes the store.
        url = os.environ.get("CONTEXTLAB_MCP_URL")
        if not url:
            return prompts.rollback(prompt, author=user, label=label).to_dict()
        from contextlab.kernels.api import api_base, auth_header

        target = f"{api_base(url)}contextlab/api/prompts/{quote(prompt, safe='')}/rollback"
        try:
            response = httpx.post(
                target, json={"label": label}, headers=auth_header(os.environ.get("CONTEXTLAB_TOKEN")), timeout=30
            )
        except httpx.HTTPError as exc:
            raise PromptError(f"the Jupyter server did not answer ({exc})") from exc
        finally:
            prompts.reload()
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code >= 400:
            raise PromptError(body.get("error") or f"HTTP {response.status_code}")
        prompts.reload()
        return body

    def do_rollback(_event: Any) -> None:
        try:
            label = SimpleNamespace(**roll_back(pick.value, which.value))
        except PromptError as exc:
            message.object = f"**Not rolled back:** {exc}"
            return
        if label.label == CANARY and not label.history:
            message.object = f"`{pick.value}`: canary removed; every caller sees `{SERVED}`."
        else:
            message.object = f"`{pick.value}`: label `{label.label}` now serves version {label.version}."
        load_summary()
        show()

    pick.param.watch(show, "value")
    for widget in (old, new):
        widget.param.watch(show_diff, "value")
    rollback.on_click(do_rollback)
    load_summary()
    show()
    show_diff()
    return pn.Column(
        summary, pick, versions, pn.Row(old, new), diff, pn.Row(which, rollback), message, sizing_mode="stretch_width"
    )


def audit_tab(state: StateStore) -> pn.Column:
    tool = pn.widgets.TextInput(label="Tool or method contains", width=220)
    principal = pn.widgets.TextInput(label="Caller", width=160)
    outcome = pn.widgets.Select(label="Outcome", options=OUTCOMES, value="all", width=140)
    window = pn.widgets.Select(label="Window", options=list(WINDOWS), value="24 hours", width=140)
    table = _table(pd.DataFrame(), "cl-console-audit", page_size=20)
    summary = pn.pane.Markdown("", css_classes=["cl-console-audit-summary"])
    histogram = pn.pane.Vega(
        latency_histogram(pd.DataFrame()), sizing_mode="stretch_width", css_classes=["cl-console-latency"]
    )

    def refresh(_event: Any = None) -> None:
        frame = audit_frame(
            state, tool=tool.value, principal=principal.value, outcome=outcome.value, hours=WINDOWS[window.value]
        )
        table.value = frame
        summary.object = latency_summary(frame)
        histogram.object = latency_histogram(frame)

    for widget in (tool, principal, outcome, window):
        widget.param.watch(refresh, "value")
    button = pn.widgets.Button(label="Refresh", css_classes=["cl-refresh"])
    button.on_click(refresh)
    refresh()
    return pn.Column(
        pn.Row(tool, principal, outcome, window, button), summary, histogram, table, sizing_mode="stretch_width"
    )


def jobs_tab(state: StateStore, mlflow_uri: str | None) -> pn.Column:
    runs = _table(pd.DataFrame(), "cl-console-jobs")
    durations = pn.pane.Vega(None, sizing_mode="stretch_width")
    metrics = pn.Column(sizing_mode="stretch_width")

    def refresh(_event: Any = None) -> None:
        frame = runs_frame(state)
        runs.value = frame
        points = [
            {"created_at": str(r.created_at), "duration_s": r.duration_s, "status": r.status, "pipeline": r.pipeline}
            for r in frame.itertuples()
            if pd.notna(r.duration_s)
        ]
        durations.object = {
            "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
            "data": {"values": points},
            "mark": {"type": "point", "filled": True},
            "encoding": {
                "x": {"field": "created_at", "type": "temporal", "title": "started"},
                "y": {"field": "duration_s", "type": "quantitative", "title": "duration (s)"},
                "color": {"field": "status", "type": "nominal"},
                "tooltip": [{"field": "pipeline"}, {"field": "status"}, {"field": "duration_s"}],
            },
            "width": "container",
            "height": 200,
        }
        metrics.objects = [_mlflow_view(mlflow_uri)]

    button = pn.widgets.Button(label="Refresh", css_classes=["cl-refresh"])
    button.on_click(refresh)
    refresh()
    return pn.Column(button, "### Job history", runs, durations, "### Latest evaluations (MLflow)", metrics)


def _mlflow_view(mlflow_uri: str | None) -> Any:
    if not mlflow_uri:
        return pn.pane.Markdown("No MLflow tracking URI is configured: start the console with `--mlflow-uri`.")
    try:
        frame = mlflow_frame(mlflow_uri)
    except Exception as exc:  # noqa: BLE001 - the console shows why MLflow could not be read
        return pn.pane.Alert(f"MLflow at {mlflow_uri} could not be read: {exc}", alert_type="warning")
    metric_cols = [c for c in frame.columns if c.startswith("metrics.")]
    if frame.empty or not metric_cols:
        return pn.pane.Markdown(f"No runs with metrics in {mlflow_uri} yet.")
    keep = ["run_id", "tags.mlflow.runName", "start_time", *metric_cols]
    shown = frame[[c for c in keep if c in frame.columns]].copy()
    long = shown.melt(id_vars=[c for c in ("run_id", "start_time") if c in shown], value_vars=metric_cols).dropna()
    long["variable"] = long["variable"].str.removeprefix("metrics.")
    chart = {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": json.loads(long.to_json(orient="records", date_format="iso"))},
        "mark": {"type": "line", "point": True},
        "encoding": {
            "x": {"field": "start_time", "type": "temporal", "title": "run"},
            "y": {"field": "value", "type": "quantitative"},
            "color": {"field": "variable", "type": "nominal", "title": "metric"},
        },
        "width": "container",
        "height": 220,
    }
    return pn.Column(pn.pane.Vega(chart, sizing_mode="stretch_width"), _table(shown, "cl-console-mlflow", 10))


ACTION_LABELS = {"approve": "Approve…", "retry": "Retry", "trace": "Open trace"}
KIND_COLORS = {
    "task accepted": "#1f77b4",
    "approval requested": "#ff7f0e",
    "milestone": "#9467bd",
    "receipt": "#2ca02c",
    "anomaly detected": "#d62728",
    "recovery started": "#bcbd22",
    "recovery done": "#17becf",
}


def chat_hub_tab(
    state: StateStore,
    *,
    app_url: Callable[[str], str] | None = None,
    retry: Callable[[ValueEvent], str] | None = None,
) -> pn.Column:
    feed = pn.Column(sizing_mode="stretch_width", css_classes=["cl-console-hub"])
    trace = pn.Column(sizing_mode="stretch_width")
    seen: dict[str, int] = {"last": 0}

    def card(event: ValueEvent) -> Any:
        color = KIND_COLORS.get(event.kind, "#555")
        header = f"<b style='color:{color}'>{event.kind}</b> · {event.ts:%Y-%m-%d %H:%M:%S} UTC"
        body: list[Any] = [pn.pane.HTML(header), pn.pane.Markdown(f"**{event.title}**")]
        if event.detail:
            body.append(pn.pane.Markdown(f"`{event.detail}`"))
        if event.action == "approve" and event.payload.get("app"):
            url = app_url(event.payload["app"]) if app_url else f"/apps/{event.payload['app']}"
            body.append(pn.pane.Markdown(f"[{ACTION_LABELS['approve']}]({url})", css_classes=["cl-hub-approve"]))
        elif event.action in ("retry", "trace"):
            button = pn.widgets.Button(label=ACTION_LABELS[event.action], css_classes=[f"cl-hub-{event.action}"])

            def act(_e: Any, event: ValueEvent = event) -> None:
                if event.action == "retry":
                    text = retry(event) if retry else "Retry is not available here."
                    trace.objects = [pn.pane.Markdown(text)]
                else:
                    show_trace(event)

            button.on_click(act)
            body.append(button)
        return pn.Card(*body, hide_header=True, sizing_mode="stretch_width", css_classes=["cl-hub-card"])

    def show_trace(event: ValueEvent) -> None:
        window = trace_frame(state, event)
        trace.objects = [
            pn.pane.Markdown(f"**MCP calls behind:** {event.title}"),
            _table(window, "cl-hub-trace-table", 10) if not window.empty else pn.pane.Markdown("No MCP calls then."),
        ]

    def refresh(_event: Any = None) -> None:
        events = value_events(state)
        if events and events[0].id == seen["last"]:
            return
        seen["last"] = events[0].id if events else 0
        feed.objects = [card(e) for e in events] or [
            pn.pane.Markdown("Nothing yet: flows, publishing, pipelines and upstream health show up here.")
        ]

    refresh()
    if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
        pn.state.add_periodic_callback(refresh, period=2000)
    return pn.Column(pn.Row(feed, trace, sizing_mode="stretch_width"), sizing_mode="stretch_width")


def build_console(
    state: StateStore,
    *,
    user: str = "admin",
    mlflow_uri: str | None = None,
    app_url: Callable[[str], str] | None = None,
    retry: Callable[[ValueEvent], str] | None = None,
) -> pn.viewable.Viewable:
    """The console as Panel tabs."""
    tabs = pn.Tabs(
        ("Registry", registry_tab(state)),
        ("Prompts", prompts_tab(state, user)),
        ("Audit", audit_tab(state)),
        ("Jobs & evaluations", jobs_tab(state, mlflow_uri)),
        ("Chat Hub", chat_hub_tab(state, app_url=app_url, retry=retry)),
        dynamic=False,
        sizing_mode="stretch_width",
    )
    header = pn.pane.Markdown(f"## ContextLab console\n<small>signed in as **{user}**</small>")
    return pn.Column(header, tabs, sizing_mode="stretch_width", css_classes=["cl-console"])
