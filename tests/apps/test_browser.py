"""The expense app end to end, in a real Jupyter server, a real Panel server and Debian's Chromium.

1. `contextlab apps new --describe …` drafts the app through a scripted OpenAI-compatible endpoint, with
   context read over MCP (and the first draft repaired);
2. a component is edited through the REST API (and a stale second edit gets 409 with the diff);
3. an employee submits the form in the browser: a bad amount is refused inline, a good one lands in DuckDB;
4. the app is published; the employee gets 403 on the managers' page, a manager opens it;
5. the approval flow waits for the manager across a restart of the apps server, then completes and records
   the outcome through the MCP tool `apps__run_query`;
6. the console shows the audit entries of those MCP calls.

Screenshots go to `$CONTEXTLAB_TEST_OUTPUT` (default: the test's tmp folder).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from contextlab.apps import db, dsl
from contextlab.apps.flows import FlowEngine
from contextlab.state import StateStore
from tests.support.fake_llm import FakeLLM
from tests.support.server import JupyterServer, free_port, isolated_env, start_server, stop_process

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (/usr/bin/chromium)")

EXAMPLES = Path(dsl.__file__).parent / "examples"
USERS = {
    "users": {
        "alice": {"password": "alice-pw", "roles": ["employee"]},
        "mia": {"password": "mia-pw", "roles": ["employee", "manager"]},
        "root": {"password": "root-pw", "roles": ["admin"]},
    }
}


def wait_for(predicate, what: str, timeout: float = 60.0):  # noqa: ANN001, ANN201 - test helper
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


class AppsServer:
    """`contextlab apps serve` in a subprocess (so it can be restarted like a real deployment)."""

    def __init__(self, root: Path, home: Path, mcp: JupyterServer) -> None:
        self.root, self.home, self.mcp = root, home, mcp
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log = home / f"apps-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        args = [
            sys.executable,
            "-m",
            "contextlab",
            "apps",
            "serve",
            "--workspace",
            str(self.root),
            "--port",
            str(self.port),
            "--users",
            str(self.root / "users.yaml"),
            "--cookie-secret",
            "test-secret",
            "--mcp-url",
            self.mcp.mcp_url,
            "--mcp-token",
            self.mcp.token,
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(args, env=isolated_env(self.home), stdout=log, stderr=subprocess.STDOUT)

        def up() -> bool:
            assert self.process.poll() is None, self.log.read_text()
            try:
                return httpx.get(f"{self.url}/login", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, "the apps server")

    def stop(self) -> None:
        stop_process(self.process)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CONTEXTLAB_TEST_OUTPUT") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[tuple[JupyterServer, Path, Path]]:
    root, home = tmp_path / "ws", tmp_path / "home"
    (root / "apps").mkdir(parents=True)
    home.mkdir()
    shutil.copy(EXAMPLES / "expense_approval.bpmn", root / "apps")
    (root / "users.yaml").write_text(yaml.safe_dump(USERS))
    server = start_server(root, home)
    try:
        yield server, root, home
    finally:
        server.stop()


@pytest.fixture
def browser() -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            yield chromium
        finally:
            chromium.close()


def login(browser, base: str, user: str, password: str, path: str):  # noqa: ANN001, ANN201
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(f"{base}{path}")
    page.wait_for_selector("input[name=username]")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.locator("button[type=submit], input[type=submit]").first.click()
    page.wait_for_load_state("networkidle")
    return page


def rows(path: Path, sql: str) -> list[tuple]:
    with db.connect(path) as con:
        return con.execute(sql).fetchall()


def test_expense_app_from_description_to_approval(workspace, browser, out: Path) -> None:  # noqa: ANN001
    server, root, home = workspace
    example = (EXAMPLES / "expenses.yaml").read_text()
    broken = example.replace("type: chart", "type: piechart")  # the repair loop must fix this
    replies = [f"```yaml\n{broken}```", f"```yaml\n{example}```"]

    # 1. natural language → a draft, with the workspace's context read over MCP
    with FakeLLM(replies) as llm:
        env = {**isolated_env(home), "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "test"}
        done = subprocess.run(
            [
                sys.executable, "-m", "contextlab", "apps", "new", "expenses", "--workspace", str(root),
                "--describe", "an expense approval app: employees submit expenses, managers approve those over 500",
                "--model", "openai:scripted", "--mcp-url", server.mcp_url, "--mcp-token", server.token,
            ],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "created app 'expenses' version 1" in done.stdout
        assert len(llm.requests) == 2  # the unknown component type was sent back and repaired
        assert "piechart" in str(llm.requests[1]["messages"])
    state = StateStore(f"sqlite:///{server.state_db}")
    assert state.audit(target="apps__list"), "the draft read the existing apps over MCP"

    # 2. edit a component (REST), and a stale edit of the same version is refused with the diff
    current = server.api("GET", "contextlab/api/apps/expenses").json()
    doc = current["dsl"]
    doc["pages"][0]["components"][2]["title"] = "My pending expenses"
    saved = server.api("PUT", "contextlab/api/apps/expenses", json={"dsl": doc, "base_version": 1})
    assert saved.status_code == 200, saved.text
    assert saved.json()["version"] == 2
    stale = dict(current["dsl"])
    stale["app"] = {**stale["app"], "title": "Someone else's title"}
    conflict = server.api("PUT", "contextlab/api/apps/expenses", json={"dsl": stale, "base_version": 1})
    assert conflict.status_code == 409
    assert "My pending expenses" in conflict.json()["diff"]
    assert server.api("GET", "contextlab/api/apps/expenses").json()["version"] == 2  # nothing lost

    # publish
    published = server.api("POST", "contextlab/api/apps/expenses/publish", json={})
    assert published.status_code == 200, published.text

    apps = AppsServer(root, home, server)
    apps.start()
    database = root / "apps" / "expenses.duckdb"
    try:
        # 3. the employee submits the form in the browser
        alice = login(browser, apps.url, "alice", "alice-pw", "/apps/expenses/submit")
        alice.wait_for_selector(".cl-field-amount input")
        assert alice.get_by_text("My pending expenses").count() >= 1  # the edited component
        alice.fill(".cl-field-employee input", "alice")
        alice.fill(".cl-field-amount input", "-5")
        alice.locator(".cl-expense_form-submit button").click()
        alice.wait_for_selector(".cl-error-amount >> text=/at least/i")
        alice.screenshot(path=str(out / "1-form-error.png"), full_page=True)
        assert rows(database, "SELECT count(*) FROM expenses") == [(0,)]

        alice.select_option(".cl-field-category select", "travel")
        alice.fill(".cl-field-amount input", "900")
        alice.fill(".cl-field-description textarea", "conference hotel")
        alice.locator(".cl-expense_form-submit button").click()
        alice.wait_for_selector(".cl-notice-success")
        wait_for(lambda: rows(database, "SELECT count(*) FROM expenses") == [(1,)], "the row in DuckDB")
        assert rows(database, "SELECT employee, amount, status FROM expenses") == [("alice", 900, "pending")]
        alice.screenshot(path=str(out / "2-submitted.png"), full_page=True)

        # 4. the employee may not open the managers' page
        forbidden = alice.goto(f"{apps.url}/apps/expenses/review")
        assert forbidden.status == 403
        alice.context.close()

        engine = FlowEngine(state)
        [waiting] = engine.list(app="expenses", status="waiting")
        assert waiting.data["amount"] == 900
    finally:
        apps.stop()  # 5. a restart between the submission and the approval

    apps = AppsServer(root, home, server)
    apps.start()
    try:
        mia = login(browser, apps.url, "mia", "mia-pw", "/apps/expenses/review")
        mia.wait_for_selector(".cl-task")
        mia.screenshot(path=str(out / "3-review.png"), full_page=True)
        mia.locator(".cl-task-field-approved input").check()
        mia.fill(".cl-task-field-comment input", "fine")
        mia.locator(".cl-task-complete button").click()
        mia.wait_for_selector(".cl-no-tasks")
        finished = engine.get(waiting.id)
        assert finished.status == "completed", finished.error
        assert finished.data["completed_by"] == {"Task_Approve": "mia"}
        assert rows(database, "SELECT status FROM expenses") == [("approved",)]
        mia.screenshot(path=str(out / "4-approved.png"), full_page=True)
        mia.context.close()

        # 6. the service task's MCP call is audited, and the console shows it
        [call] = state.audit(target="apps__run_query")
        assert call["outcome"] == "ok"
        admin = login(browser, apps.url, "root", "root-pw", "/console")
        admin.get_by_text("Audit", exact=True).first.click()
        audit = admin.locator(".cl-console-audit")
        audit.get_by_text("apps__run_query").first.wait_for()
        assert audit.get_by_text("apps__list").count() >= 1  # the Copilot's context calls of step 1
        admin.locator(".cl-console-latency canvas, .cl-console-latency svg").first.wait_for()
        admin.screenshot(path=str(out / "5-console-audit.png"), full_page=True)
        admin.get_by_text("Chat Hub", exact=True).first.click()
        hub = admin.locator(".cl-console-hub")
        hub.get_by_text("approval requested").first.wait_for()
        assert hub.get_by_text("receipt").count() >= 1  # the completed flow
        admin.screenshot(path=str(out / "6-console-hub.png"), full_page=True)
        manager = login(browser, apps.url, "mia", "mia-pw", "/apps")
        assert manager.goto(f"{apps.url}/console").status == 403  # the console is for admins
        manager.context.close()
    finally:
        apps.stop()
