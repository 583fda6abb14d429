"""The app store: versions, conflicts with a diff, rollback, publishing, export/import, events."""

from __future__ import annotations

import copy
import threading
from pathlib import Path

import pytest

from contextlab.apps import dsl
from contextlab.apps.store import AppConflict, AppError, AppExists, AppNotFound, AppStore
from contextlab.extension.events import EventBus
from contextlab.state import StateStore

EXAMPLE = Path(dsl.__file__).parent / "examples" / "expenses.yaml"


@pytest.fixture
def state(tmp_path):
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def bus(state):
    return EventBus(state)


@pytest.fixture
def apps(state, bus, tmp_path):
    return AppStore(state, tmp_path / "apps", publish=bus.publish)


@pytest.fixture
def doc() -> dict:
    return dsl.load(EXAMPLE.read_text())


def edited(doc: dict, title: str) -> dict:
    out = copy.deepcopy(doc)
    out["app"]["title"] = title
    return out


def test_every_save_is_a_version_and_emits_page_updated(apps, bus, doc):
    v1 = apps.create(doc, "ann")
    v2 = apps.save("expenses", edited(doc, "Expenses v2"), "ann", base_version=1, message="retitle")
    assert (v1.version, v2.version, v2.parent_version) == (1, 2, 1)
    assert apps.get("expenses").dsl["app"]["title"] == "Expenses v2"
    assert apps.get("expenses", 1).dsl["app"]["title"] == "Expense approvals"
    assert [v.version for v in apps.versions("expenses")] == [2, 1]
    events = bus.since(0, pattern="page.*")
    assert [(e.topic, e.payload["version"]) for e in events] == [("page.updated", 1), ("page.updated", 2)]
    assert events[1].payload["message"] == "retitle"


def test_saving_unchanged_content_writes_nothing(apps, doc):
    apps.create(doc, "ann")
    same = apps.save("expenses", apps.get("expenses").dsl, "ann", base_version=1)
    assert same.version == 1 and len(apps.versions("expenses")) == 1


def test_second_concurrent_save_gets_a_conflict_with_the_diff_and_nothing_is_lost(apps, doc):
    apps.create(doc, "ann")
    apps.save("expenses", edited(doc, "Ann's title"), "ann", base_version=1)
    with pytest.raises(AppConflict) as err:
        apps.save("expenses", edited(doc, "Bob's title"), "bob", base_version=1)
    conflict = err.value
    assert (conflict.base, conflict.current) == (1, 2)
    assert "-  title: Ann's title" in conflict.diff and "+  title: Bob's title" in conflict.diff
    assert conflict.attempted["app"]["title"] == "Bob's title"
    assert "base_version=2" in str(conflict)
    assert apps.get("expenses").dsl["app"]["title"] == "Ann's title"
    assert len(apps.versions("expenses")) == 2


def test_racing_writers_one_wins_one_conflicts(apps, doc):
    apps.create(doc, "ann")
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def writer(i: int) -> None:
        barrier.wait()
        try:
            apps.save("expenses", edited(doc, f"title {i}"), f"user{i}", base_version=1)
            outcomes.append("saved")
        except AppConflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict", "conflict", "conflict", "saved"]
    assert [v.version for v in apps.versions("expenses")] == [2, 1]


def test_rollback_is_a_new_version_with_old_content(apps, doc):
    apps.create(doc, "ann")
    apps.save("expenses", edited(doc, "Broken"), "ann", base_version=1)
    back = apps.rollback("expenses", 1, "ann")
    assert back.version == 3 and back.message == "rollback to version 1"
    assert apps.get("expenses").dsl["app"]["title"] == "Expense approvals"
    assert apps.get("expenses", 2).dsl["app"]["title"] == "Broken"


def test_invalid_documents_are_refused_before_anything_is_written(apps, doc):
    apps.create(doc, "ann")
    bad = copy.deepcopy(doc)
    bad["pages"][0]["components"][0]["type"] = "carousel"
    with pytest.raises(dsl.DSLValidationError, match="unknown component type 'carousel'"):
        apps.save("expenses", bad, "ann", base_version=1)
    with pytest.raises(AppExists):
        apps.create(doc, "bob")
    with pytest.raises(AppError, match="base_version"):
        apps.save("expenses", edited(doc, "x"), "ann", base_version=None)
    assert len(apps.versions("expenses")) == 1


def test_publish_a_version_and_read_it_back(apps, doc):
    apps.create(doc, "ann")
    with pytest.raises(AppNotFound, match="not published"):
        apps.published("expenses")
    apps.save("expenses", edited(doc, "Draft"), "ann", base_version=1)
    apps.publish_app("expenses", 1)
    assert apps.published("expenses").dsl["app"]["title"] == "Expense approvals"
    assert apps.info("expenses").published_version == 1
    apps.unpublish("expenses")
    assert apps.info("expenses").published_version is None


def test_export_import_round_trip_with_version_check(apps, doc, state, tmp_path):
    apps.create(doc, "ann")
    text = apps.export_text("expenses")
    other = AppStore(state, tmp_path / "apps")
    other.delete("expenses")
    imported = other.import_text(text, "bob")
    assert imported.version == 1 and imported.dsl["queries"] == doc["queries"]
    again = other.import_text(text.replace("Expense approvals", "Imported again"), "bob")
    assert again.version == 2
    with pytest.raises(dsl.DSLVersionError, match="upgrade ContextLab"):
        other.import_text(text.replace('dsl: "1.0"', 'dsl: "1.9"').replace("dsl: '1.0'", "dsl: '1.9'"), "bob")
    assert other.get("expenses").version == 2


def test_unknown_apps_and_versions(apps, doc):
    with pytest.raises(AppNotFound, match="no app named 'nope'"):
        apps.get("nope")
    apps.create(doc, "ann")
    with pytest.raises(AppNotFound, match="has no version 9"):
        apps.get("expenses", 9)
