"""`contextlab pipeline|schedule|jobs|scheduler` as a user runs them: real subprocesses on a workspace."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.notebooks import standard_notebooks


def cli(workspace: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "contextlab", *args, "--workspace", str(workspace)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ws")
    standard_notebooks(root / "notebooks")
    return root


def test_every_command_has_help() -> None:
    for command in (
        ["pipeline", "run"],
        ["pipeline", "list"],
        ["schedule", "add"],
        ["schedule", "list"],
        ["jobs", "list"],
        ["jobs", "show"],
        ["jobs", "purge"],
        ["scheduler", "run"],
    ):
        done = subprocess.run([sys.executable, "-m", "contextlab", *command, "--help"], capture_output=True, text=True)
        assert done.returncode == 0 and "--workspace" in done.stdout, command


def test_run_show_and_list(workspace: Path) -> None:
    done = cli(
        workspace, "pipeline", "run", "ok", "-p", "x", "6", "-p", "model", "local", "--tag", "who=ci", "--no-progress"
    )
    assert done.returncode == 0, done.stderr
    assert "status     succeeded" in done.stdout and "accuracy=0.6" in done.stdout
    run_id = done.stdout.split()[1]
    failed = cli(workspace, "pipeline", "run", "fails", "--json")
    assert failed.returncode == 1
    record = json.loads(failed.stdout)
    assert record["status"] == "failed" and record["error_cell"] == 3
    page = workspace / "run.html"
    shown = cli(workspace, "jobs", "show", run_id[:10], "--html", str(page))
    assert shown.returncode == 0 and f"run        {run_id}" in shown.stdout
    assert "data:image/png;base64" in page.read_text()
    listing = cli(workspace, "jobs", "list", "--status", "failed", "--since", "7d")
    assert listing.returncode == 0
    assert "fails" in listing.stdout and "ValueError: bad input 2" in listing.stdout and " ok " not in listing.stdout
    assert "page 1 of 1 (1 runs)" in listing.stdout
    tagged = json.loads(cli(workspace, "jobs", "list", "--tag", "who=ci", "--json").stdout)
    assert [r["id"] for r in tagged["runs"]] == [run_id]
    assert (workspace / ".contextlab" / "mlflow.db").exists()


def test_bad_requests_get_clear_messages(workspace: Path) -> None:
    unknown = cli(workspace, "pipeline", "run", "ok", "-p", "colour", "red")
    assert unknown.returncode == 2 and "unknown parameter colour for pipeline ok" in unknown.stderr
    cron = cli(workspace, "schedule", "add", "nightly", "--pipeline", "ok", "--cron", "0 25 * * *")
    assert cron.returncode == 2 and "cron '0 25 * * *' is not a valid expression" in cron.stderr
    since = cli(workspace, "jobs", "list", "--since", "yesterday")
    assert since.returncode == 2 and "give seconds or a duration like" in since.stderr
    missing = cli(workspace, "jobs", "show", "ffffffffff")
    assert missing.returncode == 1 and "no run 'ffffffffff'" in missing.stderr
    executor = cli(workspace, "pipeline", "run", "ok", "--executor", "spark://x")
    assert executor.returncode != 0 and "unknown executor 'spark://x'" in executor.stderr


def test_schedule_and_standalone_scheduler(workspace: Path) -> None:
    added = cli(
        workspace,
        "schedule",
        "add",
        "nightly-eval",
        "--pipeline",
        "ok",
        "--cron",
        "0 2 * * *",
        "--tz",
        "Asia/Shanghai",
        "--retries",
        "2",
        "--alert",
        "event",
        "-p",
        "x",
        "3",
    )
    assert added.returncode == 0, added.stderr
    assert "next run" in added.stdout and "18:00:00 UTC" in added.stdout  # 02:00 in Shanghai
    listed = json.loads(cli(workspace, "schedule", "list", "--json").stdout)
    assert listed[0]["name"] == "nightly-eval" and listed[0]["retries"] == 2 and listed[0]["alerts"] == ["event"]
    once = cli(workspace, "scheduler", "run", "--once", "--json")
    assert once.returncode == 0 and json.loads(once.stdout) == {"started": []}  # not due yet
    assert cli(workspace, "schedule", "disable", "nightly-eval").returncode == 0
    assert json.loads(cli(workspace, "schedule", "list", "--json").stdout)[0]["enabled"] is False
    assert cli(workspace, "schedule", "remove", "nightly-eval").returncode == 0
    gone = cli(workspace, "schedule", "remove", "nightly-eval")
    assert gone.returncode == 1 and "no schedule named 'nightly-eval'" in gone.stderr


def test_purge(workspace: Path) -> None:
    before = json.loads(cli(workspace, "jobs", "list", "--json").stdout)["total"]
    assert before >= 2
    done = cli(workspace, "jobs", "purge", "--keep-last", "0", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["deleted"] == before
    assert json.loads(cli(workspace, "jobs", "list", "--json").stdout)["total"] == 0
    assert cli(workspace, "jobs", "purge").returncode == 2
