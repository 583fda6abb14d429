"""The papermill runner against real kernels, a real SQLite state store and a real MLflow store."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mlflow import MlflowClient

from contextlab.pipelines.runner import PipelineError, PipelineRunner, packaged_pipelines
from contextlab.state import StateStore
from tests.support.notebooks import standard_notebooks


@pytest.fixture(scope="module")
def notebooks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return standard_notebooks(tmp_path_factory.mktemp("notebooks"))


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory, notebooks: Path):
    state = tmp_path_factory.mktemp("state")
    store = StateStore(f"sqlite:///{state / 'state.db'}")
    store.migrate()
    events: list[tuple[str, dict]] = []
    runner = PipelineRunner(
        store, state, notebook_dirs=[notebooks], publish=lambda topic, payload: events.append((topic, payload))
    )
    runner.events = events
    yield runner
    runner.close()
    store.close()


def test_success_records_everything_and_lands_in_mlflow(runner: PipelineRunner) -> None:
    record = runner.run("ok", {"x": 7, "model": "openai:gpt-4o-mini"}, tags={"team": "eval"})
    assert record["status"] == "succeeded", record["error"]
    assert record["parameters"] == {"x": 7, "model": "openai:gpt-4o-mini"}
    assert record["trigger"] == "manual" and record["attempt"] == 1
    assert record["started_at"] >= record["created_at"] and record["finished_at"] > record["started_at"]
    assert record["duration_s"] > 0
    assert record["metrics"] == {"loss": pytest.approx(1 / 3), "accuracy": pytest.approx(0.7)}
    output = Path(record["output_path"])
    executed = json.loads(output.read_text())
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert injected and "x = 7" in "".join(injected[0]["source"])

    client = MlflowClient(runner.tracking_uri)
    run = client.get_run(record["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["x"] == "7" and run.data.params["doubled"] == "14"
    assert run.data.metrics["accuracy"] == pytest.approx(0.7)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == pytest.approx([1, 0.5, 1 / 3])
    assert run.data.tags["contextlab.job_id"] == record["id"]
    assert run.data.tags["contextlab.pipeline"] == "ok" and run.data.tags["team"] == "eval"
    assert run.data.tags["contextlab.model"] == "openai:gpt-4o-mini"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"plots", "tables", "notebook"} <= artifacts
    plots = [a.path for a in client.list_artifacts(run.info.run_id, "plots")]
    assert plots == ["plots/accuracy_by_variant.png"]
    assert ("pipeline.succeeded", record["id"]) in [(t, p["id"]) for t, p in runner.events]
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'"
    )
    by_variant = {c.data.params["variant"]: c for c in children}
    assert set(by_variant) == {"stable", "canary"}
    assert by_variant["canary"].data.metrics["accuracy"] == pytest.approx(0.75)
    assert by_variant["canary"].info.run_name == "canary x openai:gpt-4o-mini"
    assert by_variant["stable"].data.tags["contextlab.job_id"] == record["id"]


def test_failing_cell_is_recorded_and_output_kept(runner: PipelineRunner) -> None:
    record = runner.run("fails", {"x": 41})
    assert record["status"] == "failed"
    assert record["error"] == "ValueError: bad input 42"
    assert record["error_cell"] == 3  # index in the source notebook: markdown, parameters, y = …, raise
    executed = json.loads(Path(record["output_path"]).read_text())
    statuses = [c["metadata"].get("papermill", {}).get("status") for c in executed["cells"] if c["cell_type"] == "code"]
    assert "failed" in statuses and statuses[-1] == "pending"  # the cell after the failure never ran
    assert MlflowClient(runner.tracking_uri).get_run(record["mlflow_run_id"]).info.status == "FAILED"
    assert ("pipeline.failed", record["id"]) in [(t, p["id"]) for t, p in runner.events]


def test_unknown_parameter_and_pipeline_are_refused_before_anything_is_recorded(runner: PipelineRunner) -> None:
    before = runner.history(limit=1000).total
    with pytest.raises(PipelineError, match=r"unknown parameter colour for pipeline ok\. It takes: model, x\."):
        runner.submit("ok", {"colour": "red"})
    with pytest.raises(PipelineError, match="unknown pipeline 'nope'.*Shipped pipelines"):
        runner.submit("nope")
    with pytest.raises(PipelineError, match="does not exist"):
        runner.submit("/tmp/missing-notebook.ipynb")
    with pytest.raises(PipelineError, match="timeout must be positive"):
        runner.submit("ok", timeout_s=0)
    assert runner.history(limit=1000).total == before


def test_kernel_death_fails_the_run_with_its_cell(runner: PipelineRunner) -> None:
    record = runner.run("dies")
    assert record["status"] == "failed"
    assert "kernel died" in record["error"]
    assert record["error_cell"] == 2
    assert Path(record["output_path"]).exists()


def test_timeout_stops_the_kernel_and_keeps_the_partial_notebook(runner: PipelineRunner) -> None:
    record = runner.run("slow", {"seconds": 120}, timeout_s=4)
    assert record["status"] == "timed-out"
    assert "timed out after 4 s" in record["error"]
    assert record["error_cell"] == 2
    executed = json.loads(Path(record["output_path"]).read_text())
    states = [c["metadata"]["papermill"]["status"] for c in executed["cells"] if c["cell_type"] == "code"]
    assert states[-1] == "running"


def test_cancel_a_running_run(runner: PipelineRunner) -> None:
    run_id = runner.submit("slow", {"seconds": 120})
    deadline = time.monotonic() + 60
    while runner.get(run_id)["status"] != "running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runner.cancel(run_id)
    record = runner.wait(run_id, timeout=60)
    assert record["status"] == "cancelled"
    assert not runner.cancel(run_id)  # already finished


def test_mlflow_unreachable_the_run_still_completes(tmp_path: Path, notebooks: Path) -> None:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    runner = PipelineRunner(store, tmp_path, tracking_uri="http://127.0.0.1:9", notebook_dirs=[notebooks])
    try:
        record = runner.run("ok", {"x": 3})
    finally:
        runner.close()
    assert record["status"] == "succeeded"
    assert record["mlflow_run_id"] is None
    assert "MLflow at http://127.0.0.1:9 is unreachable" in record["tracking_error"]
    assert record["metrics"]["accuracy"] == pytest.approx(0.3)


def test_history_filters_and_pages(runner: PipelineRunner) -> None:
    ids = [runner.run("ok", {"x": i}, tags={"batch": "paging"})["id"] for i in range(3)]
    page = runner.history(tags={"batch": "paging"}, limit=2)
    assert page.total == 3 and [r["id"] for r in page.runs] == ids[::-1][:2]
    assert [r["id"] for r in runner.history(tags={"batch": "paging"}, limit=2, offset=2).runs] == [ids[0]]
    failed = runner.history(status="failed", limit=100)
    assert failed.total >= 2 and {r["status"] for r in failed.runs} == {"failed"}
    assert runner.history(pipeline="ok", since=datetime.now(UTC) - timedelta(minutes=30)).total >= 3
    assert runner.history(pipeline="ok", until=datetime.now(UTC) - timedelta(days=1)).total == 0
    assert {r["status"] for r in runner.history(status=["failed", "timed-out"], limit=100).runs} == {
        "failed",
        "timed-out",
    }
    with pytest.raises(ValueError, match="unknown status done"):
        runner.history(status="done")
    with pytest.raises(ValueError, match="limit"):
        runner.history(limit=0)


def test_retention_deletes_rows_and_output_folders(tmp_path: Path, notebooks: Path) -> None:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    runner = PipelineRunner(store, tmp_path, tracking_uri="http://127.0.0.1:9", notebook_dirs=[notebooks])
    try:
        records = [runner.run("fails", {"x": i}) for i in range(3)]
        assert runner.purge(keep_last=1) == 2
        remaining = runner.history(limit=10).runs
        assert [r["id"] for r in remaining] == [records[-1]["id"]]
        assert not (tmp_path / "runs" / records[0]["id"]).exists()
        assert Path(records[-1]["output_path"]).exists()
        assert runner.purge(older_than=timedelta(days=1)) == 0
    finally:
        runner.close()


def test_concurrency_limit_queues_runs(tmp_path: Path, notebooks: Path) -> None:
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    runner = PipelineRunner(
        store, tmp_path, tracking_uri="http://127.0.0.1:9", notebook_dirs=[notebooks], max_concurrent=1
    )
    try:
        first = runner.submit("slow", {"seconds": 120})
        second = runner.submit("ok")
        seen = threading.Event()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not seen.is_set():
            if runner.get(first)["status"] == "running":
                seen.set()
            time.sleep(0.1)
        assert runner.get(second)["status"] == "queued"
        assert runner.cancel(second)  # cancelled while queued: it never starts
        assert runner.get(second)["status"] == "cancelled"
        runner.cancel(first)
        assert runner.wait(first, timeout=60)["status"] == "cancelled"
        assert runner.get(second)["started_at"] is None
    finally:
        runner.close()


def test_shipped_pipelines_are_listed() -> None:
    assert {"rag_build", "rag_eval", "mcp_prompt_eval", "copilot_eval", "delta_finetune"} <= set(packaged_pipelines())
