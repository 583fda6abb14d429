"""The app builder: edits through `Builder`, conflicts that keep the edit, and the page in a real browser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from contextlab.apps import db, dsl
from contextlab.apps.builder import Builder, BuilderError, build_builder
from contextlab.apps.er import DestructiveChangeError
from contextlab.apps.service import create_app
from contextlab.apps.store import AppConflict, AppStore
from contextlab.state import StateStore
from tests.support.server import free_port

EXAMPLE = (Path(dsl.__file__).parent / "examples" / "expenses.yaml").read_text()
CHROMIUM = Path("/usr/bin/chromium")


def plain(text: str, name: str = "expenses") -> str:
    """The example without its flow (no BPMN file in these workspaces)."""
    doc, _ = dsl.parse(text.replace("name: expenses", f"name: {name}"))
    del doc["flows"]
    doc["pages"][0]["components"][1]["on_submit"] = [{"notify": "saved"}]
    doc["pages"][1]["components"] = [c for c in doc["pages"][1]["components"] if c["type"] != "tasks"]
    return dsl.to_yaml(doc)


@pytest.fixture
def store(tmp_path: Path) -> AppStore:
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    state.migrate()
    return AppStore(state, tmp_path / "apps")


@pytest.fixture
def builder(store: AppStore) -> Builder:
    create_app(store, dsl.parse(plain(EXAMPLE))[0], "ann")
    b = Builder(store, "ann")
    b.load("expenses")
    return b


def test_edits_save_as_a_new_version_and_migrate(builder: Builder, store: AppStore) -> None:
    builder.set_property("my_pending", "title", "Mine")
    builder.move("intro", 0, 0, 6, 1)
    added = builder.add_component("markdown", page=1)
    assert added["id"] == "markdown_1" and added["position"]["y"] == 8  # below the review page's others
    builder.remove_component("totals")
    builder.add_field("expenses", "project", {"type": "varchar", "max_length": 40})
    assert builder.issues() == []
    saved = builder.save("edited")
    assert saved.version == 2 and builder.base_version == 2
    doc = store.get("expenses").dsl
    ids = [c["id"] for c in doc["pages"][1]["components"]]
    assert "totals" not in ids and "markdown_1" in ids
    assert doc["pages"][0]["components"][2]["title"] == "Mine"
    with db.connect(store.data_dir / "expenses.duckdb") as con:
        columns = [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns").fetchall()]
    assert "project" in columns


def test_bad_edits_are_refused_with_a_reason(builder: Builder) -> None:
    with pytest.raises(BuilderError, match="unknown component type 'piechart'"):
        builder.add_component("piechart")
    with pytest.raises(BuilderError, match="no component 'nope'"):
        builder.set_property("nope", "title", "x")
    with pytest.raises(BuilderError, match="fixed"):
        builder.set_property("intro", "type", "table")
    builder.set_property("my_pending", "query", "missing")
    assert any("unknown query 'missing'" in i.message for i in builder.issues())


def test_a_concurrent_save_is_a_conflict_and_the_edit_stays(builder: Builder, store: AppStore) -> None:
    other = Builder(store, "bob")
    other.load("expenses")
    other.set_property("intro", "text", "Bob's text")
    other.save()
    builder.set_property("intro", "text", "Ann's text")
    with pytest.raises(AppConflict) as info:
        builder.save()
    assert "Bob's text" in info.value.diff
    assert builder.component("intro")["text"] == "Ann's text" and builder.base_version == 1  # nothing lost


def test_dropping_a_field_needs_confirmation(builder: Builder, store: AppStore) -> None:
    del builder.doc["data"]["tables"]["expenses"]["fields"]["description"]
    form = builder.component("expense_form")
    form["fields"] = [f for f in form["fields"] if f != "description"]
    with pytest.raises(DestructiveChangeError):
        builder.save()
    assert store.get("expenses").version == 1
    assert builder.save(confirm=True).version == 2


def test_a_draft_with_issues_is_shown_not_saved(store: AppStore) -> None:
    b = Builder(store, "ann", draft=lambda text: plain(EXAMPLE, "drafted").replace("type: chart", "type: piechart"))
    found = b.draft("an expense app")
    assert any("piechart" in i.message for i in found)
    assert b.base_version is None and store.list() == []
    assert "app:\n  name: drafted" in b.yaml_text()
    b2 = Builder(store, "ann", draft=lambda text: "app: [")
    assert "does not parse at line 1" in b2.draft("anything")[0].message and b2.doc is None


@pytest.fixture
def served(store: AppStore) -> Iterator[str]:
    import panel as pn

    port = free_port()

    def page() -> pn.viewable.Viewable:
        return build_builder(store, user="ann", draft=lambda text: plain(EXAMPLE, "trips"))

    server = pn.serve({"builder": page}, port=port, threaded=True, show=False, websocket_origin=[f"127.0.0.1:{port}"])
    try:
        yield f"http://127.0.0.1:{port}/builder"
    finally:
        server.stop()


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)")
def test_describe_create_and_edit_in_the_browser(served: str, store: AppStore, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(served)
            page.fill(".cl-describe textarea", "trips: employees log trips, managers review them")
            page.locator(".cl-draft button").click()
            page.locator(".cl-builder-status").get_by_text("Draft ready").wait_for()
            page.locator(".cl-save button").click()
            page.locator(".cl-builder-status").get_by_text("Saved version 1").wait_for()
            page.select_option(".cl-components select", "my_pending")
            page.fill(".cl-prop-title input", "Trips waiting")
            page.locator(".cl-apply button").click()
            page.locator(".cl-save button").click()
            page.locator(".cl-builder-status").get_by_text("Saved version 2").wait_for()
            page.screenshot(path=str(tmp_path / "builder.png"), full_page=True)

            # drag the bottom-right corner of `intro` on the layout grid to the left: it gets narrower
            page.get_by_text("Layout", exact=True).first.click()
            item = page.locator(".grid-stack-item").first
            item.wait_for()
            before = page.locator(".cl-yaml textarea").input_value()
            item.hover()
            page.wait_for_timeout(300)  # gridstack shows the resize handle on hover
            handle = item.locator(".ui-resizable-se").first.bounding_box()
            page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
            page.mouse.down()
            page.mouse.move(handle["x"] - 300, handle["y"] + 40, steps=10)
            page.mouse.up()
            expect(page.locator(".cl-yaml textarea")).not_to_have_value(before)  # the document followed the grid
            page.screenshot(path=str(tmp_path / "builder-layout.png"), full_page=True)
            page.locator(".cl-save button").click()
            page.locator(".cl-builder-status").get_by_text("Saved version 3").wait_for()
        finally:
            browser.close()
    saved = store.get("trips")
    assert saved.version == 3
    assert saved.dsl["pages"][0]["components"][2]["title"] == "Trips waiting"
    intro = saved.dsl["pages"][0]["components"][0]
    assert intro["id"] == "intro" and intro["position"]["w"] < 12  # resized on the grid, kept in the document
