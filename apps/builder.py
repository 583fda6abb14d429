"""The app builder: describe an app, edit its pages and data model, save versions, publish.

`Builder` holds one app document (the single source of truth) and the version it was loaded at; every
edit goes through it and every save is a compare-and-swap on that version, so a concurrent change by
someone else answers with a diff and the edit stays in the builder. `build_builder` is its Panel view,
served by `contextlab apps serve` at `/builder`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import panel as pn
import yaml

from contextlab.apps import dsl
from contextlab.apps.db import catalog
from contextlab.apps.store import AppConflict, AppNotFound, AppStore, AppVersion

# What a new component of each type starts with (ids and bindings are filled in by `add_component`).
DEFAULTS: dict[str, dict[str, Any]] = {
    "markdown": {"text": "New text"},
    "table": {"page_size": 10},
    "chart": {"mark": "bar"},
    "indicator": {},
    "form": {},
    "button": {"label": "Run", "on_click": [{"notify": "Done"}]},
    "filter": {"widget": "text", "targets": []},
    "tasks": {},
}
SIMPLE_PROPS = ("title", "query", "table", "page_size", "text", "label", "x", "y", "mark", "value", "flow")


class BuilderError(ValueError):
    """An edit that does not fit the document (unknown component, taken id, …)."""


class Builder:
    """One app being edited."""

    def __init__(self, store: AppStore, user: str, draft: Callable[[str], str] | None = None) -> None:
        self.store = store
        self.user = user
        self.draft_fn = draft
        self.doc: dict[str, Any] | None = None
        self.base_version: int | None = None  # None: not saved yet

    # -- loading ------------------------------------------------------------------------------------

    def load(self, name: str) -> None:
        saved = self.store.get(name)
        self.doc = copy.deepcopy(saved.dsl)
        self.base_version = saved.version

    def draft(self, description: str) -> list[dsl.DSLIssue]:
        """A new app from a description (nothing saved); returns the draft's issues."""
        if self.draft_fn is None:
            raise BuilderError("drafting from a description is not configured on this server")
        return self.set_yaml(self.draft_fn(description), new=True)

    def set_yaml(self, text: str, *, new: bool = False) -> list[dsl.DSLIssue]:
        """Replace the document with `text` if it parses; returns its issues (the document is kept even if
        it has semantic issues, so they can be fixed here)."""
        try:
            doc, document = dsl.parse(text)
        except dsl.DSLValidationError as exc:
            return list(exc.issues)
        if not isinstance(doc, dict):
            return [dsl.DSLIssue("(document root)", "the document must be a mapping")]
        self.doc = doc
        if new:
            self.base_version = None
        return dsl.validate(dsl.upgrade(doc), catalog=self._catalog(), document=document)

    def yaml_text(self) -> str:
        return dsl.to_yaml(self.doc) if self.doc is not None else ""

    def issues(self) -> list[dsl.DSLIssue]:
        if self.doc is None:
            return []
        try:
            return dsl.validate(dsl.upgrade(self.doc), catalog=self._catalog())
        except dsl.DSLValidationError as exc:
            return list(exc.issues)

    def _catalog(self) -> dict[str, Any]:
        return catalog(self.store.data_dir, self.doc) if self.doc is not None else {}

    # -- editing ------------------------------------------------------------------------------------

    def _doc(self) -> dict[str, Any]:
        if self.doc is None:
            raise BuilderError("open or draft an app first")
        return self.doc

    def component(self, cid: str) -> dict[str, Any]:
        for page in self._doc().get("pages", []):
            for comp in page.get("components", []):
                if comp.get("id") == cid:
                    return comp
        raise BuilderError(f"no component {cid!r}")

    def add_component(self, kind: str, page: int = 0) -> dict[str, Any]:
        """A new component of `kind` below the page's others, bound to the first fitting query/table."""
        if kind not in DEFAULTS:
            raise BuilderError(f"unknown component type {kind!r}; one of {', '.join(DEFAULTS)}")
        doc = self._doc()
        target = doc["pages"][page]
        taken = {c["id"] for p in doc["pages"] for c in p.get("components", [])}
        n = 1
        while f"{kind}_{n}" in taken:
            n += 1
        comp: dict[str, Any] = {"id": f"{kind}_{n}", "type": kind, **copy.deepcopy(DEFAULTS[kind])}
        queries = list(doc.get("queries") or {})
        tables = list((doc.get("data") or {}).get("tables") or {})
        if kind in ("table", "chart", "indicator") and queries:
            comp["query"] = queries[0]
        if kind == "chart":
            comp["x"], comp["y"] = "x", "y"
        if kind == "indicator":
            comp["value"] = "n"
        if kind == "form" and tables:
            comp["table"] = tables[0]
        if kind == "tasks" and doc.get("flows"):
            comp["flow"] = next(iter(doc["flows"]))
        if kind == "filter":
            comp["param"] = "value"
        bottom = max(
            (c["position"]["y"] + c["position"]["h"] for c in target["components"] if "position" in c), default=0
        )
        comp["position"] = {"x": 0, "y": bottom, "w": 12, "h": 2 if kind in ("markdown", "indicator") else 4}
        target["components"].append(comp)
        return comp

    def remove_component(self, cid: str) -> None:
        for page in self._doc()["pages"]:
            before = len(page["components"])
            page["components"] = [c for c in page["components"] if c.get("id") != cid]
            if len(page["components"]) != before:
                return
        raise BuilderError(f"no component {cid!r}")

    def set_property(self, cid: str, key: str, value: Any) -> None:
        comp = self.component(cid)
        if key in ("id", "type"):
            raise BuilderError("a component's id and type are fixed; add a new component instead")
        if value in (None, ""):
            comp.pop(key, None)
        else:
            comp[key] = value

    def move(self, cid: str, x: int, y: int, w: int, h: int) -> None:
        self.component(cid)["position"] = {"x": int(x), "y": int(y), "w": int(w), "h": int(h)}

    def add_field(self, table: str, name: str, spec: Mapping[str, Any]) -> None:
        tables = self._doc().setdefault("data", {}).setdefault("tables", {})
        fields = tables.setdefault(table, {"fields": {}}).setdefault("fields", {})
        if name in fields:
            raise BuilderError(f"table {table!r} already has a field {name!r}")
        fields[name] = dict(spec)

    # -- saving -------------------------------------------------------------------------------------

    def save(self, message: str = "", *, confirm: bool = False) -> AppVersion:
        """Create the app or save a new version (migrating its data); `AppConflict` keeps the edit here."""
        from contextlab.apps.service import create_app, save_app

        doc = self._doc()
        if self.base_version is None:
            saved = create_app(self.store, doc, self.user, message or "created in the builder")
        else:
            saved = save_app(
                self.store, doc["app"]["name"], doc, self.user, self.base_version, message, confirm=confirm
            )
        self.doc = copy.deepcopy(saved.dsl)
        self.base_version = saved.version
        return saved

    def publish(self) -> AppVersion:
        if self.base_version is None:
            raise BuilderError("save the app before publishing it")
        return self.store.publish_app(self._doc()["app"]["name"], self.base_version, self.user)

    def rollback(self, version: int) -> AppVersion:
        saved = self.store.rollback(self._doc()["app"]["name"], version, self.user, self.base_version)
        self.doc = copy.deepcopy(saved.dsl)
        self.base_version = saved.version
        return saved


# ---------------------------------------------------------------------------------------------- the view


def _issues_markdown(issues: list[dsl.DSLIssue]) -> str:
    if not issues:
        return "Valid: no issues."
    lines = [f"- `{i.path}`{f' (line {i.line})' if i.line else ''}: {i.message}" for i in issues]
    return f"**{len(issues)} issue(s):**\n" + "\n".join(lines)


def build_builder(
    store: AppStore, *, user: str, draft: Callable[[str], str] | None = None, app: str | None = None
) -> pn.viewable.Viewable:
    """The builder page."""
    from contextlab.apps.er import DestructiveChangeError, ERModelError
    from contextlab.apps.render import AppSession, Viewer
    from contextlab.apps.service import er_diagram

    b = Builder(store, user, draft)
    status = pn.pane.Markdown("", css_classes=["cl-builder-status"])
    issues = pn.pane.Markdown("", css_classes=["cl-builder-issues"])
    conflict = pn.pane.Markdown("", visible=False, css_classes=["cl-conflict"])
    confirm = pn.widgets.Button(
        label="Save anyway (the data is backed up first)", visible=False, css_classes=["cl-confirm"]
    )

    pick = pn.widgets.Select(label="App", options=[i.name for i in store.list()], value=app, width=220)
    open_ = pn.widgets.Button(label="Open", css_classes=["cl-open"])
    describe = pn.widgets.TextAreaInput(
        label="Describe a new app", placeholder="an expense approval app: …", height=80, css_classes=["cl-describe"]
    )
    draft_button = pn.widgets.Button(label="Draft app", button_type="primary", css_classes=["cl-draft"])
    describe.visible = draft_button.visible = draft is not None

    components = pn.widgets.Select(label="Component", options=[], width=260, css_classes=["cl-components"])
    props = {key: pn.widgets.TextInput(label=key, css_classes=[f"cl-prop-{key}"], width=220) for key in SIMPLE_PROPS}
    geometry = {k: pn.widgets.IntInput(label=k, start=0, width=70, css_classes=[f"cl-pos-{k}"]) for k in "xywh"}
    for key in ("x", "y"):  # `x`/`y` as chart fields are text; the position uses the number inputs
        props[key].label = f"chart {key}"
    apply_props = pn.widgets.Button(label="Apply", css_classes=["cl-apply"])
    new_kind = pn.widgets.Select(label="Add", options=list(DEFAULTS), width=140)
    add = pn.widgets.Button(label="Add component", css_classes=["cl-add"])
    remove = pn.widgets.Button(label="Remove component", button_type="danger", css_classes=["cl-remove"])

    yaml_editor = pn.widgets.TextAreaInput(label="PageDSL (YAML)", height=500, css_classes=["cl-yaml"])
    yaml_apply = pn.widgets.Button(label="Apply YAML", css_classes=["cl-yaml-apply"])
    model_editor = pn.widgets.TextAreaInput(label="data.tables (YAML)", height=300, css_classes=["cl-model"])
    model_apply = pn.widgets.Button(label="Apply data model", css_classes=["cl-model-apply"])
    mermaid = pn.pane.Markdown("", css_classes=["cl-er"])
    preview = pn.Column(sizing_mode="stretch_width")
    layout_page = pn.widgets.Select(label="Page", options={}, width=220, css_classes=["cl-layout-page"])
    from panel.layout.gridstack import GridStack

    layout = pn.Column(sizing_mode="stretch_width", css_classes=["cl-layout"])
    # Panel loads GridStack's script only for models on the page when it opens: keep one there.
    script_loader = GridStack(visible=False)
    versions = pn.pane.Markdown("")
    rollback_to = pn.widgets.IntInput(label="Roll back to version", start=1, width=160)
    rollback = pn.widgets.Button(label="Roll back", css_classes=["cl-rollback"])
    save = pn.widgets.Button(label="Save", button_type="success", css_classes=["cl-save"])
    publish = pn.widgets.Button(label="Publish", button_type="primary", css_classes=["cl-publish"])

    def sync() -> None:
        """Every view from the document."""
        doc = b.doc or {}
        ids = [c["id"] for p in doc.get("pages", []) for c in p.get("components", [])]
        components.options = ids
        if ids and components.value not in ids:
            components.value = ids[0]
        show_component()
        yaml_editor.value = b.yaml_text()
        model_editor.value = yaml.safe_dump((doc.get("data") or {}).get("tables") or {}, sort_keys=False)
        try:
            mermaid.object = f"```mermaid\n{er_diagram(doc)}\n```" if doc else ""
        except ERModelError as exc:
            mermaid.object = f"The data model cannot be drawn: {exc}"
        issues.object = _issues_markdown(b.issues()) if b.doc is not None else ""
        where = f"version {b.base_version}" if b.base_version else "not saved yet"
        status.object = f"**{doc.get('app', {}).get('name', '')}** · {where}" if doc else "Open or draft an app."
        show_versions()
        show_preview()
        pages = {p.get("title") or p["id"]: i for i, p in enumerate(doc.get("pages", []))}
        layout_page.options = pages
        if pages and layout_page.value not in pages.values():
            layout_page.value = 0
        layout.objects = []  # rebuilt when the Layout tab is opened

    def show_layout(_e: Any = None) -> None:
        """The page's components on a drag-and-resize grid; moves and resizes go back into the document."""
        if b.doc is None or layout_page.value is None or layout_page.value >= len(b.doc.get("pages", [])):
            layout.objects = []
            return
        page = b.doc["pages"][layout_page.value]
        grid = GridStack(
            ncols=page.get("columns", 12), allow_drag=True, allow_resize=True, height=600, sizing_mode="stretch_width"
        )
        cards: dict[str, str] = {}  # id of a card on the grid → component id
        for comp in page.get("components", []):
            pos = comp.get("position") or {"x": 0, "y": 0, "w": 12, "h": 2}
            card = pn.pane.Markdown(
                f"**{comp['id']}**  \n{comp['type']}",
                styles={"background": "#eef4fa", "border": "1px solid #9fb7cc", "padding": "4px"},
                css_classes=[f"cl-layout-{comp['id']}"],
                sizing_mode="stretch_both",
            )
            grid[pos["y"] : pos["y"] + pos["h"], pos["x"] : pos["x"] + pos["w"]] = card
            cards[str(id(card))] = comp["id"]

        def moved(event: Any) -> None:
            changed = False
            for item in event.new or []:
                cid = cards.get(str(item.get("id")))
                if cid is None:
                    continue
                x0, y0, x1, y1 = (int(item[k]) for k in ("x0", "y0", "x1", "y1"))
                pos = b.component(cid).get("position") or {}
                if (pos.get("x"), pos.get("y"), pos.get("w"), pos.get("h")) != (x0, y0, x1 - x0, y1 - y0):
                    b.move(cid, x0, y0, x1 - x0, y1 - y0)
                    changed = True
            if changed:
                yaml_editor.value = b.yaml_text()
                issues.object = _issues_markdown(b.issues())
                show_component()

        grid.param.watch(moved, "state")
        layout.objects = [grid]

    def show_component(_e: Any = None) -> None:
        if not components.value or b.doc is None:
            return
        comp = b.component(components.value)
        for key, widget in props.items():
            value = comp.get(key)
            widget.value = "" if value is None or isinstance(value, dict | list) else str(value)
        pos = comp.get("position") or {}
        for key, widget in geometry.items():
            widget.value = int(pos.get(key, 0))

    def show_versions() -> None:
        if b.base_version is None or b.doc is None:
            versions.object = ""
            return
        try:
            rows = store.versions(b.doc["app"]["name"])
        except AppNotFound:
            return
        lines = [f"| {v.version} | {v.author} | {v.message} | {v.created_at:%Y-%m-%d %H:%M} |" for v in rows]
        versions.object = "| version | by | message | at |\n|---|---|---|---|\n" + "\n".join(lines)

    def show_preview() -> None:
        if b.doc is None or b.issues():
            preview.objects = [pn.pane.Markdown("The preview shows once the app has no issues.")]
            return
        try:
            session = AppSession(dsl.upgrade(b.doc), store.data_dir, Viewer(user, {"admin"}))
            preview.objects = [session.page(None)]
        except Exception as exc:  # noqa: BLE001 - the preview explains, the builder stays usable
            preview.objects = [pn.pane.Alert(f"No preview: {exc}", alert_type="warning")]

    def guarded(fn: Callable[[], Any]) -> Callable[[Any], None]:
        def run(_e: Any) -> None:
            try:
                fn()
            except (BuilderError, dsl.DSLValidationError, AppNotFound, ERModelError) as exc:
                status.object = f"**Not done:** {exc}"

        return run

    def do_open() -> None:
        b.load(pick.value)
        conflict.visible = confirm.visible = False
        sync()

    def do_draft() -> None:
        found = b.draft(describe.value)
        sync()
        if b.doc is None:
            issues.object = _issues_markdown(found)
        status.object = "Draft ready: look it over, then **Save** to create the app." if not found else status.object

    def do_apply() -> None:
        cid = components.value
        for key, widget in props.items():
            raw = widget.value.strip()
            comp = b.component(cid)
            if raw == "" and key not in comp:
                continue
            value: Any = int(raw) if key == "page_size" and raw.isdigit() else raw
            if raw != str(comp.get(key, "")) and not isinstance(comp.get(key), dict | list):
                b.set_property(cid, key, value)
        b.move(cid, *(geometry[k].value for k in "xywh"))
        sync()

    def do_add() -> None:
        comp = b.add_component(new_kind.value)
        sync()
        components.value = comp["id"]

    def do_remove() -> None:
        b.remove_component(components.value)
        sync()

    def do_yaml() -> None:
        found = b.set_yaml(yaml_editor.value)
        sync()
        issues.object = _issues_markdown(found)

    def do_model() -> None:
        tables = yaml.safe_load(model_editor.value) or {}
        if not isinstance(tables, dict):
            raise BuilderError("the data model must map table names to {fields: …}")
        b._doc().setdefault("data", {})["tables"] = tables
        sync()

    def do_save(confirmed: bool = False) -> None:
        conflict.visible = confirm.visible = False
        try:
            saved = b.save(confirm=confirmed)
        except AppConflict as exc:
            conflict.object = (
                f"**Someone saved version {exc.current} while you edited version {exc.base}.** Nothing was "
                f"saved and your edit is still here. Their change against yours:\n```diff\n{exc.diff}\n```\n"
                "Open the app again to start from their version, or copy your change over."
            )
            conflict.visible = True
            return
        except DestructiveChangeError as exc:
            status.object = f"**Not saved:** {exc}"
            confirm.visible = True
            return
        except dsl.DSLValidationError as exc:
            issues.object = _issues_markdown(list(exc.issues))
            status.object = "**Not saved:** fix the issues first."
            return
        pick.options = [i.name for i in store.list()]
        sync()
        status.object = f"Saved version {saved.version} of **{saved.app}**."

    def do_publish() -> None:
        saved = b.publish()
        status.object = f"Published version {saved.version}: it is served at /apps/{saved.app}."

    def do_rollback() -> None:
        saved = b.rollback(rollback_to.value)
        sync()
        status.object = f"Version {rollback_to.value} is back, as version {saved.version}."

    open_.on_click(guarded(do_open))
    draft_button.on_click(guarded(do_draft))
    apply_props.on_click(guarded(do_apply))
    add.on_click(guarded(do_add))
    remove.on_click(guarded(do_remove))
    yaml_apply.on_click(guarded(do_yaml))
    model_apply.on_click(guarded(do_model))
    save.on_click(guarded(do_save))
    confirm.on_click(guarded(lambda: do_save(True)))
    publish.on_click(guarded(do_publish))
    rollback.on_click(guarded(do_rollback))
    components.param.watch(show_component, "value")
    layout_page.param.watch(show_layout, "value")

    if app:
        guarded(do_open)(None)
    else:
        sync()

    page_tab = pn.Column(
        pn.Row(components, new_kind, add, remove),
        pn.GridBox(*props.values(), ncols=4),
        pn.Row(*geometry.values(), apply_props),
        sizing_mode="stretch_width",
    )
    tabs = pn.Tabs(
        ("Page", page_tab),
        (
            "Layout",
            pn.Column(layout_page, pn.pane.Markdown("Drag and resize; the positions are saved with the app."), layout),
        ),
        ("Data model", pn.Column(model_editor, model_apply, mermaid, sizing_mode="stretch_width")),
        ("YAML", pn.Column(yaml_editor, yaml_apply, sizing_mode="stretch_width")),
        ("Preview", preview),
        ("Versions", pn.Column(versions, pn.Row(rollback_to, rollback))),
        dynamic=False,
        sizing_mode="stretch_width",
    )
    def on_tab(event: Any) -> None:
        if event.new == 1 and not layout.objects:
            show_layout()

    tabs.param.watch(on_tab, "active")
    return pn.Column(
        pn.pane.Markdown("## ContextLab app builder"),
        pn.Row(pick, open_),
        describe,
        draft_button,
        pn.Row(save, publish),
        status,
        conflict,
        confirm,
        issues,
        tabs,
        script_loader,
        sizing_mode="stretch_width",
        css_classes=["cl-builder"],
    )
