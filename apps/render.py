"""PageDSL → Panel. One `AppSession` per browser session: it owns the widgets of one page, runs the
page's queries with the filter values, writes form rows, and carries out event actions.

Components: `table` (Tabulator, remote paging), `form` (widgets from the table's fields, checked against
the model before a row is written), `chart` (Vega-Lite), `indicator`, `markdown`, `button`, `filter`
and `tasks` (a flow's waiting user tasks for the viewer's roles). The page is a `GridSpec` on the
document's grid.
"""

from __future__ import annotations

import datetime as dt
import decimal
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import panel as pn

from contextlab.apps import db
from contextlab.apps.dsl import DEFAULT_SOURCE

log = logging.getLogger(__name__)

REF = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)\}$")
DEFAULT_HEIGHT = 4


class Forbidden(PermissionError):
    """The viewer lacks a role the page requires."""


class PageNotFound(LookupError):
    """No page at that route."""


@dataclass
class Viewer:
    """Who is looking: a user name and the roles they hold in this app."""

    user: str
    roles: set[str] = field(default_factory=set)

    def may_open(self, page: Mapping[str, Any]) -> bool:
        needed = set(page.get("roles") or [])
        return not needed or bool(needed & self.roles) or "admin" in self.roles


def find_page(doc: Mapping[str, Any], route: str | None) -> Mapping[str, Any]:
    pages = doc["pages"]
    if not route or route == "/":
        return pages[0]
    for page in pages:
        if page["route"] == route or page["id"] == route.strip("/"):
            return page
    raise PageNotFound(f"app {doc['app']['name']!r} has no page {route!r}; pages: {[p['route'] for p in pages]}")


def layout(page: Mapping[str, Any]) -> list[tuple[Mapping[str, Any], dict[str, int]]]:
    """Each component with its grid cell; components without a position stack full width below the rest."""
    columns = page.get("columns", 12)
    placed = [(c, dict(c["position"])) for c in page["components"] if c.get("position")]
    bottom = max((p["y"] + p["h"] for _, p in placed), default=0)
    out = list(placed)
    for comp in page["components"]:
        if comp.get("position"):
            continue
        h = 1 if comp["type"] in ("markdown", "button", "filter") else DEFAULT_HEIGHT
        out.append((comp, {"x": 0, "y": bottom, "w": columns, "h": h}))
        bottom += h
    return out


def vega_spec(comp: Mapping[str, Any], frame: pd.DataFrame) -> dict[str, Any]:
    """A Vega-Lite spec for a chart component over `frame`."""

    def enc(column: str) -> dict[str, Any]:
        kind = "nominal"
        if column in frame and pd.api.types.is_numeric_dtype(frame[column]):
            kind = "quantitative"
        elif column in frame and pd.api.types.is_datetime64_any_dtype(frame[column]):
            kind = "temporal"
        return {"field": column, "type": kind, "title": column.replace("_", " ")}

    records = _records(frame)
    mark = comp.get("mark", "bar")
    if mark == "arc":
        encoding = {"theta": enc(comp["y"]), "color": enc(comp["x"])}
    else:
        encoding = {"x": enc(comp["x"]), "y": enc(comp["y"])}
        if comp.get("color"):
            encoding["color"] = enc(comp["color"])
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "data": {"values": records},
        "mark": {"type": mark, "tooltip": True},
        "encoding": encoding,
        "width": "container",
        "height": "container",
    }


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in frame.to_dict(orient="records"):
        out.append({k: _jsonable(v) for k, v in row.items()})
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.date | dt.datetime | pd.Timestamp):
        return value.isoformat()
    if value is pd.NaT or (isinstance(value, float) and value != value):
        return None
    return value


class AppSession:
    """The live page of one viewer."""

    def __init__(
        self,
        doc: Mapping[str, Any],
        data_dir: str | Path,
        viewer: Viewer,
        *,
        env: str | None = None,
        flows: Any = None,
        start_flow: Callable[[str, dict[str, Any], Viewer], Any] | None = None,
        url_for: Callable[[str], str] | None = None,
    ) -> None:
        self.doc = doc
        self.data_dir = Path(data_dir)
        self.viewer = viewer
        self.env = env
        self.flows = flows
        self.start_flow = start_flow
        self.url_for = url_for or (lambda route: route)
        self.tables = (doc.get("data") or {}).get("tables") or {}
        self.queries = doc.get("queries") or {}
        self.params: dict[str, dict[str, Any]] = {}  # component id → filter values
        self.views: dict[str, Any] = {}  # component id → Panel object
        self.refreshers: dict[str, Callable[[], None]] = {}
        self.selection: dict[str, dict[str, Any]] = {}
        self.messages = pn.Column(sizing_mode="stretch_width", css_classes=["cl-messages"])
        self.events: dict[str, list[Mapping[str, Any]]] = {}
        for event in doc.get("events") or []:
            self.events.setdefault(event["on"], []).extend(event["do"])

    # ----------------------------------------------------------------- page

    def page(self, route: str | None = None) -> pn.viewable.Viewable:
        """The Panel layout of the page at `route`; `Forbidden` if the viewer may not open it."""
        page = find_page(self.doc, route)
        if not self.viewer.may_open(page):
            raise Forbidden(
                f"{self.viewer.user!r} may not open page {page['route']!r}: it needs one of the roles "
                f"{', '.join(page.get('roles') or [])}"
            )
        for comp in page["components"]:
            if comp["type"] == "filter":
                for target in comp["targets"]:
                    self.params.setdefault(target, {})[comp["param"]] = comp.get("default")
        columns = page.get("columns", 12)
        cells = layout(page)
        rows = max((p["y"] + p["h"] for _, p in cells), default=1)
        row_height = page.get("row_height", 80)
        grid = pn.GridSpec(ncols=columns, nrows=rows, height=rows * row_height, sizing_mode="stretch_width")
        for comp, pos in cells:
            if comp.get("roles") and not (set(comp["roles"]) & self.viewer.roles or "admin" in self.viewer.roles):
                continue
            view = self.component(comp)
            self.views[comp["id"]] = view
            grid[pos["y"] : pos["y"] + pos["h"], pos["x"] : pos["x"] + pos["w"]] = view
        nav = self.navigation(page)
        header = pn.pane.Markdown(
            f"## {self.doc['app'].get('title') or self.doc['app']['name']} · {page.get('title') or page['id']}",
            sizing_mode="stretch_width",
        )
        return pn.Column(header, nav, self.messages, grid, sizing_mode="stretch_width", css_classes=["cl-page"])

    def navigation(self, current: Mapping[str, Any]) -> pn.viewable.Viewable:
        links = []
        for page in self.doc["pages"]:
            if not self.viewer.may_open(page):
                continue
            title = page.get("title") or page["id"]
            links.append(title if page is current else f"[{title}]({self.url_for(page['route'])})")
        who = f"signed in as **{self.viewer.user}** ({', '.join(sorted(self.viewer.roles)) or 'no roles'})"
        return pn.pane.Markdown(" · ".join(links) + f"  \n<small>{who}</small>", sizing_mode="stretch_width")

    def component(self, comp: Mapping[str, Any]) -> pn.viewable.Viewable:
        build = getattr(self, f"_build_{comp['type']}")
        try:
            return build(comp)
        except db.AppDataError as exc:
            return pn.pane.Alert(f"**{comp['id']}**: {exc}", alert_type="danger")

    # ----------------------------------------------------------------- data

    def source_path(self, source: str = DEFAULT_SOURCE) -> Path:
        return db.source_path(self.data_dir, self.doc, source, self.env)

    def run(self, name: str, values: Mapping[str, Any] | None = None) -> Any:
        query = self.queries[name]
        return db.run_query(self.source_path(query.get("source", DEFAULT_SOURCE)), query, values or {})

    def frame_for(self, comp: Mapping[str, Any]) -> pd.DataFrame:
        values = {**(comp.get("params") or {}), **self.params.get(comp["id"], {})}
        return self.run(comp["query"], values)

    # ----------------------------------------------------------------- components

    def _build_markdown(self, comp: Mapping[str, Any]) -> pn.viewable.Viewable:
        return pn.pane.Markdown(comp["text"], sizing_mode="stretch_both", css_classes=[f"cl-{comp['id']}"])

    def _build_table(self, comp: Mapping[str, Any]) -> pn.viewable.Viewable:
        frame = self.frame_for(comp)
        if comp.get("columns"):
            frame = frame[[c for c in comp["columns"] if c in frame]]
        table = pn.widgets.Tabulator(
            frame,
            pagination="remote",
            page_size=comp.get("page_size", 20),
            disabled=True,
            show_index=False,
            selectable=1 if comp.get("selectable") else False,
            sizing_mode="stretch_both",
            name=comp.get("title", ""),
            css_classes=[f"cl-{comp['id']}"],
        )

        def refresh() -> None:
            data = self.frame_for(comp)
            table.value = data[[c for c in comp["columns"] if c in data]] if comp.get("columns") else data

        def on_select(event: Any) -> None:
            if not event.new:
                self.selection.pop(comp["id"], None)
                return
            row = table.value.iloc[event.new[0]].to_dict()
            self.selection[comp["id"]] = {k: _jsonable(v) for k, v in row.items()}
            self.act(self.events.get(f"{comp['id']}.select", []), {comp["id"]: self.selection[comp["id"]]})

        table.param.watch(on_select, "selection")
        self.refreshers[comp["id"]] = refresh
        return _titled(comp, table)

    def _build_chart(self, comp: Mapping[str, Any]) -> pn.viewable.Viewable:
        pane = pn.pane.Vega(vega_spec(comp, self.frame_for(comp)), sizing_mode="stretch_both")
        pane.css_classes = [f"cl-{comp['id']}"]

        def refresh() -> None:
            pane.object = vega_spec(comp, self.frame_for(comp))

        self.refreshers[comp["id"]] = refresh
        return _titled(comp, pane)

    def _build_indicator(self, comp: Mapping[str, Any]) -> pn.viewable.Viewable:
        def value() -> Any:
            frame = self.frame_for(comp)
            if frame.empty or comp["value"] not in frame:
                return None
            return _jsonable(frame[comp["value"]].iloc[0])

        fmt = comp.get("format", "{value:,}")
        number = pn.indicators.Number(
            label=comp.get("title", comp["id"]),
            value=value() or 0,
            format=fmt,
            font_size="32pt",
            css_classes=[f"cl-{comp['id']}"],
        )

        def refresh() -> None:
            number.value = value() or 0

        self.refreshers[comp["id"]] = refresh
        return number

    def _build_button(self, comp: Mapping[str, Any]) -> pn.viewable.Viewable:
        button = pn.widgets.Button(
            label=comp["label"], button_type=comp.get("variant", "primary"), css_classes=[f"cl-{comp['id']}"]
        )
        actions = [*comp["on_click"], *self.events.get(f"{comp['id']}.click", [])]
        button.on_click(lambda _event: self.act(actions, dict(self.selection)))
        return button

    def _build_filter(self, comp: Mapping[str, Any]) -> pn.viewable.Viewable:
        label = comp.get("label") or comp["param"].replace("_", " ")
        kind, default = comp["widget"], comp.get("default")
        css = [f"cl-{comp['id']}"]
        if kind == "select":
            widget = pn.widgets.Select(
                label=label, options=list(comp.get("options") or []), value=default, css_classes=css
            )
        elif kind == "number":
            widget = pn.widgets.FloatInput(
                label=label, value=float(default) if default is not None else None, css_classes=css
            )
        elif kind == "date":
            widget = pn.widgets.DatePicker(label=label, css_classes=css)
        elif kind == "checkbox":
            widget = pn.widgets.Checkbox(label=label, value=bool(default), css_classes=css)
        else:
            widget = pn.widgets.TextInput(label=label, value=default or "", css_classes=css)

        def changed(event: Any) -> None:
            for target in comp["targets"]:
                self.params.setdefault(target, {})[comp["param"]] = event.new
                self.refresh(target)

        widget.param.watch(changed, "value")
        return widget

    def _build_form(self, comp: Mapping[str, Any]) -> pn.viewable.Viewable:
        table = self.tables[comp["table"]]
        names = comp.get("fields") or [n for n, f in table["fields"].items() if not f.get("generated")]
        widgets: dict[str, Any] = {}
        errors: dict[str, pn.pane.Markdown] = {}
        rows: list[Any] = []
        for name in names:
            spec = table["fields"][name]
            widgets[name] = field_widget(name, spec)
            errors[name] = pn.pane.Markdown(
                "",
                css_classes=["cl-field-error", f"cl-error-{name}"],
                visible=False,
                styles={"color": "#b00020"},
                margin=(0, 10),
            )
            rows.extend([widgets[name], errors[name]])
        form_error = pn.pane.Alert("", alert_type="danger", visible=False, css_classes=["cl-form-error"])
        submit = pn.widgets.Button(
            label=comp.get("submit_label", "Submit"), button_type="primary", css_classes=[f"cl-{comp['id']}-submit"]
        )
        actions = [*(comp.get("on_submit") or []), *self.events.get(f"{comp['id']}.submit", [])]
        path = self.source_path(table.get("source", DEFAULT_SOURCE))
        fields = {n: table["fields"][n] for n in table["fields"] if n in names or table["fields"][n].get("generated")}

        def on_submit(_event: Any) -> None:
            for pane in errors.values():
                pane.visible = False
            form_error.visible = False
            values = {name: widget_value(w) for name, w in widgets.items()}
            try:
                row = db.insert_row(path, comp["table"], fields, values)
            except db.FormErrors as exc:
                for name, message in exc.errors.items():
                    if name in errors:
                        errors[name].object = message
                        errors[name].visible = True
                    else:
                        form_error.object = message
                        form_error.visible = True
                return
            for name, widget in widgets.items():
                reset_widget(widget, table["fields"][name])
            self.act(actions, {"form": {k: _jsonable(v) for k, v in values.items()}, "row": _json_row(row)})

        submit.on_click(on_submit)
        body = pn.Column(*rows, form_error, submit, sizing_mode="stretch_width", css_classes=[f"cl-{comp['id']}"])
        return _titled(comp, body)

    def _build_tasks(self, comp: Mapping[str, Any]) -> pn.viewable.Viewable:
        box = pn.Column(sizing_mode="stretch_both", css_classes=[f"cl-{comp['id']}"])

        def refresh() -> None:
            box.objects = self.task_cards(comp["flow"])

        refresh()
        self.refreshers[comp["id"]] = refresh
        return _titled(comp, box)

    def task_cards(self, flow: str) -> list[Any]:
        if self.flows is None:
            return [pn.pane.Markdown("Flows are not available here.")]
        from contextlab.apps.flows import FlowError

        cards = []
        for task in self.flows.pending_tasks(
            self.viewer.roles | ({"admin"} if "admin" in self.viewer.roles else set())
        ):
            instance = self.flows.get(task.instance_id)
            if instance.flow != flow or (instance.app not in (None, self.doc["app"]["name"])):
                continue
            widgets = {f["name"]: task_widget(f) for f in task.fields}
            status = pn.pane.Markdown("", visible=False, styles={"color": "#b00020"})
            done = pn.widgets.Button(label="Complete", button_type="success", css_classes=["cl-task-complete"])

            def complete(_e: Any, task: Any = task, widgets: dict[str, Any] = widgets, status: Any = status) -> None:
                values = {name: widget_value(w) for name, w in widgets.items()}
                try:
                    self.flows.complete(task.instance_id, task.task_id, values, self.viewer.user, self.viewer.roles)
                except FlowError as exc:
                    status.object = str(exc)
                    status.visible = True
                    return
                self.notify(f"{task.title} done", "success")
                self.refresh_all()

            done.on_click(complete)
            summary = ", ".join(f"{k}: {v}" for k, v in task.data.items() if not isinstance(v, dict | list))[:300]
            cards.append(
                pn.Card(
                    pn.pane.Markdown(summary),
                    *widgets.values(),
                    status,
                    done,
                    title=f"{task.title} · {task.instance_id[:8]}",
                    collapsible=False,
                    css_classes=["cl-task"],
                    sizing_mode="stretch_width",
                )
            )
        return cards or [pn.pane.Markdown("Nothing is waiting for you.", css_classes=["cl-no-tasks"])]

    # ----------------------------------------------------------------- actions

    def refresh(self, cid: str) -> None:
        refresher = self.refreshers.get(cid)
        if refresher is None:
            return
        try:
            refresher()
        except db.AppDataError as exc:
            self.notify(f"{cid}: {exc}", "error")

    def refresh_all(self) -> None:
        for cid in list(self.refreshers):
            self.refresh(cid)

    def notify(self, text: str, level: str = "success") -> None:
        kind = {"error": "danger", "success": "success", "warning": "warning"}.get(level, "info")
        self.messages.objects = [pn.pane.Alert(text, alert_type=kind, css_classes=["cl-notice", f"cl-notice-{level}"])]

    def act(self, actions: list[Mapping[str, Any]], context: Mapping[str, Any]) -> None:
        """Run event actions in order; the first failure stops the rest and is shown."""
        refreshed = False
        for action in actions:
            try:
                if "run_query" in action:
                    params = {k: resolve(v, context) for k, v in (action.get("params") or {}).items()}
                    self.run(action["run_query"], params)
                elif "start_flow" in action:
                    if self.start_flow is None:
                        raise db.AppDataError("flows are not available in this server")
                    data = {**context.get("row", {}), **context.get("form", {})}
                    self.start_flow(action["start_flow"], data, self.viewer)
                elif "navigate" in action:
                    pn.state.location.pathname = self.url_for(action["navigate"])
                    pn.state.location.reload = True
                elif "notify" in action:
                    self.notify(action["notify"], action.get("level", "success"))
                elif "refresh" in action:
                    refreshed = True
                    for cid in action["refresh"]:
                        self.refresh(cid)
            except Exception as exc:  # shown to the user; the log keeps the trace
                log.warning("action %s failed: %s", action, exc)
                self.notify(f"Could not finish: {exc}", "error")
                return
        if not refreshed:
            self.refresh_all()


def resolve(value: Any, context: Mapping[str, Any]) -> Any:
    """`{form.amount}` / `{row.id}` / `{<table>.<column>}` from the event's context; literals unchanged."""
    if not isinstance(value, str):
        return value
    match = REF.match(value)
    if match is None:
        return value
    scope, name = match.groups()
    if scope not in context:
        raise db.AppDataError(f"{value} refers to {scope!r}, which has nothing selected or submitted")
    if name not in context[scope]:
        raise db.AppDataError(f"{value}: {scope!r} has no field {name!r}")
    return context[scope][name]


def _json_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _jsonable(v) for k, v in row.items()}


def _titled(comp: Mapping[str, Any], body: Any) -> Any:
    if comp.get("title"):
        return pn.Column(pn.pane.Markdown(f"**{comp['title']}**", margin=(0, 10)), body, sizing_mode="stretch_both")
    return body


# --------------------------------------------------------------------------- form widgets


def field_widget(name: str, spec: Mapping[str, Any]) -> Any:
    """The input widget for a model field: its type picks the widget, its constraints set the bounds."""
    label = (spec.get("label") or name.replace("_", " ").capitalize()) + (" *" if spec.get("required") else "")
    css = [f"cl-field-{name}"]
    kind = spec["type"]
    default = spec.get("default")
    if "enum" in spec:
        options = [str(o) for o in spec["enum"]]
        if default is None:
            options = ["", *options]
        value = str(default) if default is not None else ""
        return pn.widgets.Select(label=label, options=options, value=value, css_classes=css)
    if kind in ("integer", "bigint"):
        return pn.widgets.IntInput(
            label=label,
            value=default if isinstance(default, int) else None,
            start=_bound(spec, "min"),
            end=_bound(spec, "max"),
            css_classes=css,
        )
    if kind in ("double", "decimal"):
        return pn.widgets.FloatInput(
            label=label,
            value=float(default) if isinstance(default, int | float) else None,
            start=spec.get("min"),
            end=spec.get("max"),
            css_classes=css,
        )
    if kind == "boolean":
        return pn.widgets.Checkbox(label=label, value=bool(default), css_classes=css)
    if kind == "date":
        return pn.widgets.DatePicker(label=label, css_classes=css)
    if kind == "timestamp":
        return pn.widgets.DatetimePicker(label=label, css_classes=css)
    if kind == "text":
        return pn.widgets.TextAreaInput(
            label=label, value=str(default or ""), max_length=spec.get("max_length", 5000), css_classes=css
        )
    return pn.widgets.TextInput(
        label=label, value=str(default or ""), max_length=spec.get("max_length", 1000), css_classes=css
    )


def _bound(spec: Mapping[str, Any], key: str) -> int | None:
    value = spec.get(key)
    return int(value) if isinstance(value, int | float) and float(value).is_integer() else None


def task_widget(spec: Mapping[str, Any]) -> Any:
    """A widget for a flow task's form field."""
    kind = spec.get("type", "string")
    label = spec.get("label") or spec["name"].replace("_", " ").capitalize()
    css = [f"cl-task-field-{spec['name']}"]
    if kind == "boolean":
        return pn.widgets.Checkbox(label=label, css_classes=css)
    if kind == "select":
        return pn.widgets.Select(label=label, options=list(spec.get("options") or []), css_classes=css)
    if kind == "integer":
        return pn.widgets.IntInput(label=label, value=None, css_classes=css)
    if kind == "number":
        return pn.widgets.FloatInput(label=label, value=None, css_classes=css)
    return pn.widgets.TextInput(label=label, css_classes=css)


def widget_value(widget: Any) -> Any:
    value = widget.value
    if isinstance(value, str) and value == "" and isinstance(widget, pn.widgets.Select):
        return None
    return value


def reset_widget(widget: Any, spec: Mapping[str, Any]) -> None:
    default = spec.get("default")
    if isinstance(widget, pn.widgets.Checkbox):
        widget.value = bool(default)
    elif isinstance(widget, pn.widgets.Select):
        widget.value = str(default) if default is not None else ("" if "" in widget.options else widget.value)
    elif isinstance(widget, pn.widgets.TextInput | pn.widgets.TextAreaInput):
        widget.value = str(default or "")
    else:
        widget.value = None
