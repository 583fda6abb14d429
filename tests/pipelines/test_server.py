"""Schedules fire inside a real ContextLab server; its REST API serves the run history."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from contextlab.pipelines.runner import PipelineRunner
from contextlab.pipelines.scheduler import Scheduler
from contextlab.state import StateStore
from tests.support.notebooks import standard_notebooks
from tests.support.server import start_server


@pytest.fixture(scope="module")
def pipeline_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("root")
    standard_notebooks(root / "notebooks")
    srv = start_server(
        root,
        tmp_path_factory.mktemp("home"),
        extra_args=["--ContextLab.providers=sql", "--ContextLab.pipeline_tick_seconds=0.5"],
    )
    yield srv
    srv.stop()


def test_a_schedule_fires_in_the_server_and_history_is_served(pipeline_server) -> None:
    root = pipeline_server.root
    # Another process (the CLI does the same) adds the schedule to the workspace store.
    store = StateStore(f"sqlite:///{root / '.contextlab' / 'state.db'}")
    runner = PipelineRunner(store, root / ".contextlab", notebook_dirs=[root / "notebooks"])
    Scheduler(runner).add("every-2s", "ok", "* * * * * */2", parameters={"x": 9}, tags={"origin": "server-test"})
    runner.close()
    store.close()

    deadline = time.monotonic() + 90
    runs: list = []
    while time.monotonic() < deadline:
        reply = pipeline_server.api("GET", "contextlab/api/pipelines/runs?tag=origin:server-test&status=succeeded")
        assert reply.status_code == 200, reply.text
        runs = reply.json()["runs"]
        if runs:
            break
        time.sleep(0.5)
    assert runs, pipeline_server.log_text()[-3000:]
    run = runs[0]
    assert run["schedule"] == "every-2s" and run["trigger"] == "schedule" and run["metrics"]["accuracy"] == 0.9
    one = pipeline_server.api("GET", f"contextlab/api/pipelines/runs/{run['id']}")
    assert one.status_code == 200 and one.json()["output_path"].endswith("output.ipynb")
    assert Path(one.json()["output_path"]).exists()
    page = pipeline_server.api("GET", f"contextlab/api/pipelines/runs/{run['id']}/notebook")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "data:image/png;base64" in page.text  # the inline plot
    assert "RunReport" in page.text  # the executed source is in the page
    raw = pipeline_server.api("GET", f"contextlab/api/pipelines/runs/{run['id']}/notebook?format=ipynb")
    assert raw.status_code == 200 and raw.json()["nbformat"] == 4
    schedules = pipeline_server.api("GET", "contextlab/api/pipelines/schedules").json()["schedules"]
    assert [s["name"] for s in schedules] == ["every-2s"]


def test_history_api_rejects_bad_queries(pipeline_server) -> None:
    bad = pipeline_server.api("GET", "contextlab/api/pipelines/runs?status=done")
    assert bad.status_code == 400 and "unknown status done" in bad.json()["error"]
    assert pipeline_server.api("GET", "contextlab/api/pipelines/runs?since=yesterday").status_code == 400
    assert pipeline_server.api("GET", "contextlab/api/pipelines/runs?tag=nocolon").status_code == 400
    missing = pipeline_server.api("GET", f"contextlab/api/pipelines/runs/{'0' * 32}")
    assert missing.status_code == 404
    assert pipeline_server.api("GET", f"contextlab/api/pipelines/runs/{'0' * 32}/notebook").status_code == 404
    anonymous = pipeline_server.api("GET", "contextlab/api/pipelines/runs", headers={"Accept": "application/json"})
    assert anonymous.status_code == 403
