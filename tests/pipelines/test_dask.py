"""The Dask executor against a real LocalCluster: pipeline runs and evaluation cases fan out over it."""

from __future__ import annotations

from pathlib import Path

import pytest
from distributed import LocalCluster

from contextlab.pipelines.executors import DaskExecutor, ExecutorError, LocalExecutor, case_executor, make_executor
from contextlab.pipelines.runner import PipelineRunner
from contextlab.state import StateStore
from tests.support.notebooks import standard_notebooks


def _square(n: int) -> int:
    return n * n


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, protocol="tcp://", dashboard_address=None
    ) as cluster:
        yield cluster


def test_pipeline_runs_on_the_cluster(cluster: LocalCluster, tmp_path: Path) -> None:
    notebooks = standard_notebooks(tmp_path / "nb")
    store = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    store.migrate()
    executor = make_executor(cluster.scheduler_address.replace("tcp://", "dask://"))
    assert isinstance(executor, DaskExecutor)
    runner = PipelineRunner(store, tmp_path / "state", executor=executor, notebook_dirs=[notebooks])
    try:
        ok = runner.run("ok", {"x": 2})
        failed = runner.run("fails")
    finally:
        runner.close()
    assert ok["status"] == "succeeded" and ok["executor"].startswith("dask://")
    assert ok["metrics"]["accuracy"] == pytest.approx(0.2)
    assert failed["status"] == "failed" and failed["error"] == "ValueError: bad input 2"
    assert Path(ok["output_path"]).exists()


def test_cases_fan_out_over_the_cluster(cluster: LocalCluster) -> None:
    pool = case_executor(cluster.scheduler_address)
    assert list(pool.map(_square, range(6))) == [0, 1, 4, 9, 16, 25]


def test_local_case_executor_and_bad_addresses() -> None:
    assert case_executor("local:1") is None
    local = make_executor("local:2")
    assert isinstance(local, LocalExecutor) and local.address == "local:2"
    assert list(local.case_executor().map(_square, [3, 4])) == [9, 16]
    local.close()
    with pytest.raises(ExecutorError, match="unknown executor 'spark://x'"):
        make_executor("spark://x")
    with pytest.raises(ExecutorError, match="local:N with N ≥ 1"):
        make_executor("local:0")
    with pytest.raises(ExecutorError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        DaskExecutor("dask://127.0.0.1:9", connect_timeout_s=1)
