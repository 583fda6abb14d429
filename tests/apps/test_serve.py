"""Several published apps side by side in one Panel server; roles decide who opens what (HTTP 403)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from contextlab.apps import dsl
from contextlab.apps.serve import AppServer, Users
from contextlab.apps.service import create_app
from contextlab.apps.store import AppStore
from contextlab.state import StateStore
from tests.support.server import free_port

EXAMPLE = (Path(dsl.__file__).parent / "examples" / "expenses.yaml").read_text()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, AppServer]]:
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    state.migrate()
    store = AppStore(state, tmp_path / "apps")
    for name in ("north", "south"):
        doc, _ = dsl.parse(
            EXAMPLE.replace("name: expenses", f"name: {name}").replace("expenses.duckdb", f"{name}.duckdb")
        )
        doc["app"]["title"] = f"{name.capitalize()} expenses"
        del doc["flows"]
        doc["pages"][0]["components"][1]["on_submit"] = [{"notify": "saved"}]
        doc["pages"][1]["components"] = [c for c in doc["pages"][1]["components"] if c["type"] != "tasks"]
        saved = create_app(store, doc, "tester")
        if name == "north":
            store.publish_app(name, saved.version, "tester")
    create_app(store, {**doc, "app": {**doc["app"], "name": "draft_only"}}, "tester")
    port = free_port()
    server = AppServer(store, Users(anonymous_roles={"employee"}), tools={"console": (lambda v: "console", {"ops"})})
    handle = server.serve(port=port, threaded=True, basic_auth=False)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        handle.stop()


def index_text(server: AppServer) -> str:
    return server.index().objects[0].object


def test_published_apps_coexist_and_roles_are_enforced(served: tuple[str, AppServer]) -> None:
    base, server = served
    store = server.store
    assert "North expenses" in index_text(server) and "South expenses" not in index_text(server)
    assert "draft_only" not in index_text(server) and "Console" not in index_text(server)
    index = httpx.get(f"{base}/apps", timeout=30)
    assert index.status_code == 200
    assert httpx.get(f"{base}/apps/north/submit", timeout=30).status_code == 200
    assert httpx.get(f"{base}/apps/north/review", timeout=30).status_code == 403  # managers only
    assert httpx.get(f"{base}/console", timeout=30).status_code == 403  # the `ops` role or admin

    store.publish_app("south", None, "tester")  # published while the server runs: served at once
    assert "South expenses" in index_text(server)
    assert httpx.get(f"{base}/apps/south/submit", timeout=30).status_code == 200
    assert httpx.get(f"{base}/apps/south/review", timeout=30).status_code == 403
