"""The apps inside JupyterLab: jupyter-server-proxy starts the apps server behind Jupyter's auth."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from contextlab.apps import dsl
from contextlab.apps.service import create_app
from contextlab.apps.store import AppStore
from contextlab.state import StateStore, sqlite_url_for_workspace
from tests.support.server import JupyterServer, start_server

CHROMIUM = Path("/usr/bin/chromium")
EXAMPLE = (Path(dsl.__file__).parent / "examples" / "expenses.yaml").read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    root = tmp_path_factory.mktemp("ws")
    state = StateStore(sqlite_url_for_workspace(root / ".contextlab"))
    state.migrate()
    store = AppStore(state, root / "apps")
    doc, _ = dsl.parse(EXAMPLE)
    del doc["flows"]
    doc["pages"][0]["components"][1]["on_submit"] = [{"notify": "saved"}]
    doc["pages"][1]["components"] = [c for c in doc["pages"][1]["components"] if c["type"] != "tasks"]
    saved = create_app(store, doc, "tester")
    store.publish_app(saved.app, saved.version, "tester")
    state.close()
    srv = start_server(root, tmp_path_factory.mktemp("home"), base_url="/hub/user/ann/")
    yield srv
    srv.stop()


def get(url: str, **kwargs) -> httpx.Response:  # noqa: ANN003
    return httpx.get(url, timeout=30, follow_redirects=False, **kwargs)


def test_the_launcher_entry_is_registered(server: JupyterServer) -> None:
    info = get(f"{server.url}server-proxy/servers-info", headers=server.auth).json()
    [entry] = [s for s in info["server_processes"] if s["name"] == "contextlab-apps"]
    assert entry["launcher_entry"]["title"] == "ContextLab Apps"
    assert entry["launcher_entry"]["path_info"] == "contextlab-apps/apps"


def test_the_proxy_needs_jupyter_auth_and_serves_the_apps(server: JupyterServer) -> None:
    url = f"{server.url}contextlab-apps/apps/expenses/submit"
    assert get(url).status_code in (302, 403)  # no token: Jupyter refuses (or sends to its login)
    deadline = time.monotonic() + 90
    while True:  # the first request starts the apps server
        response = get(url, headers=server.auth)
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert response.status_code == 200, response.text[:500]
    assert "bokeh" in response.text.lower()
    moved = get(f"{server.url}contextlab/apps/expenses", headers=server.auth)
    assert moved.status_code == 302
    assert moved.headers["location"].endswith("/hub/user/ann/contextlab-apps/apps/expenses")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)")
def test_a_page_renders_through_the_proxy(server: JupyterServer, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            page = browser.new_page()
            page.goto(f"{server.url}contextlab/apps/expenses/submit?token={server.token}")
            page.wait_for_selector(".cl-field-amount input", timeout=90_000)  # the websocket works through it
            assert page.get_by_text("signed in as").count() >= 1
            page.screenshot(path=str(tmp_path / "apps-in-jupyter.png"), full_page=True)
        finally:
            browser.close()


def test_console_rollback_goes_through_the_jupyter_server(
    server: JupyterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind the proxy the console inherits the server's endpoint: a rollback changes the live gateway."""
    import panel as pn

    from contextlab.apps import console

    for text in ("Query the shop, read-only.", "Query the shop (new wording)."):
        made = server.api("POST", "contextlab/api/prompts/sql__query/versions", json={"description": text})
        assert made.status_code == 201, made.text

    def stable() -> int:
        labels = server.api("GET", "contextlab/api/prompts/sql__query").json()["labels"]
        return next(label["version"] for label in labels if label["label"] == "stable")

    before = stable()
    monkeypatch.setenv("CONTEXTLAB_MCP_URL", server.mcp_url)
    monkeypatch.setenv("CONTEXTLAB_TOKEN", server.token)
    state = StateStore(sqlite_url_for_workspace(server.root / ".contextlab"))
    tab = console.prompts_tab(state, "ann")
    rollback = next(b for b in tab.select(pn.widgets.Button) if b.label.startswith("Roll back"))
    rollback.clicks += 1
    assert stable() == before - 1  # the server's own view moved, not just the database
    assert f"now serves version {before - 1}" in tab.objects[-1].object
    state.close()
