"""Run one notebook with papermill in a child process, with a whole-run timeout and cancellation.

`execute(spec)` is what every executor calls (the local pool in a thread, Dask on a worker): it
starts `python -m contextlab.pipelines.execute SPEC.json`, waits for it while watching the timeout
and a cancel marker file, kills the whole process tree (kernel included) when either fires, and
returns a `JobOutcome`. It touches neither the state store nor MLflow, so it can run anywhere the
run folder is reachable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

CANCEL_MARKER = "cancel"
OUTCOME_FILE = "outcome.json"
LOG_FILE = "log.txt"
REPORT_ENV = "CONTEXTLAB_RUN_DIR"
RUN_ID_ENV = "CONTEXTLAB_RUN_ID"

# Final statuses of a run (queued and running come before them).
SUCCEEDED, FAILED, CANCELLED, TIMED_OUT = "succeeded", "failed", "cancelled", "timed-out"


@dataclass(frozen=True)
class JobSpec:
    """Everything needed to run one notebook; plain data so it pickles to a Dask worker."""

    run_id: str
    notebook: str
    output_path: str
    run_dir: str
    parameters: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    kernel_name: str | None = None
    language: str = "python"
    cwd: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    progress: bool = False
    poll_s: float = 0.2


@dataclass(frozen=True)
class JobOutcome:
    run_id: str
    status: str
    started_at: datetime
    finished_at: datetime
    output_path: str | None
    error: str | None = None
    error_cell: int | None = None
    host: str = ""

    @property
    def duration_s(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()


def execute(spec: JobSpec) -> JobOutcome:
    """Run `spec` to completion, timeout or cancellation; never raises for a failing notebook."""
    run_dir = Path(spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_file = run_dir / "spec.json"
    spec_file.write_text(json.dumps(asdict(spec), default=str))
    (run_dir / OUTCOME_FILE).unlink(missing_ok=True)
    env = {**os.environ, **spec.env, REPORT_ENV: str(run_dir), RUN_ID_ENV: spec.run_id}
    started = datetime.now(UTC)
    deadline = time.monotonic() + spec.timeout_s if spec.timeout_s else None
    with open(run_dir / LOG_FILE, "ab") as log:
        child = subprocess.Popen(
            [sys.executable, "-m", "contextlab.pipelines.execute", str(spec_file)],
            stdout=log,
            stderr=None if spec.progress else log,
            env=env,
            cwd=spec.cwd or None,
        )
        stopped: str | None = None
        while child.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                stopped = TIMED_OUT
            elif (run_dir / CANCEL_MARKER).exists():
                stopped = CANCELLED
            if stopped:
                _kill_tree(child.pid)
                child.wait()
                break
            time.sleep(spec.poll_s)
    finished = datetime.now(UTC)
    output = spec.output_path if Path(spec.output_path).exists() else None
    host = os.uname().nodename
    if stopped == TIMED_OUT:
        return JobOutcome(
            spec.run_id,
            TIMED_OUT,
            started,
            finished,
            output,
            f"timed out after {spec.timeout_s:g} s; the process tree (kernel included) was stopped",
            _running_cell(output, spec.notebook),
            host,
        )
    if stopped == CANCELLED:
        cell = _running_cell(output, spec.notebook)
        return JobOutcome(spec.run_id, CANCELLED, started, finished, output, "cancelled", cell, host)
    try:
        result = json.loads((run_dir / OUTCOME_FILE).read_text())
    except (OSError, ValueError):
        tail = _tail(run_dir / LOG_FILE)
        return JobOutcome(
            spec.run_id,
            FAILED,
            started,
            finished,
            output,
            f"the runner process exited with code {child.returncode} before recording an outcome. {tail}".strip(),
            _running_cell(output, spec.notebook, last_started=True),
            host,
        )
    return JobOutcome(
        spec.run_id, result["status"], started, finished, output, result.get("error"), result.get("error_cell"), host
    )


def cancel(run_dir: str | Path) -> None:
    """Ask a running job to stop: `execute` sees the marker within `poll_s` and kills the process tree."""
    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    (path / CANCEL_MARKER).touch()


def _kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    procs = [*parent.children(recursive=True), parent]
    for proc in procs:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def _running_cell(output: str | None, source: str | None = None, *, last_started: bool = False) -> int | None:
    """The failing cell, as an index into the source notebook (papermill adds cells to its output).

    papermill marks the cell it was in as `running` or `failed`; after a kernel death the cell is
    marked `completed`, so `last_started` takes the last cell that is not `pending` instead.
    """
    if not output:
        return None
    try:
        cells = json.loads(Path(output).read_text()).get("cells", [])
    except (OSError, ValueError):
        return None
    states = [c.get("metadata", {}).get("papermill", {}).get("status") for c in cells]
    found = next((i for i, state in enumerate(states) if state in ("running", "failed")), None)
    if found is None and last_started:
        started = [i for i, state in enumerate(states) if state not in (None, "pending")]
        found = started[-1] if started else None
    if found is None:
        return None
    text = _source(cells[found])
    try:
        original = json.loads(Path(source).read_text()).get("cells", []) if source else []
    except (OSError, ValueError):
        original = []
    return next((i for i, cell in enumerate(original) if _source(cell) == text), found)


def _source(cell: dict[str, Any]) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else text


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "Log tail: " + " | ".join(text[-lines:]) if text else ""


def _child(spec_file: str) -> int:
    """The child process: papermill with the output notebook saved at each cell; outcome to a file."""
    import papermill
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    spec = JobSpec(**json.loads(Path(spec_file).read_text()))
    outcome: dict[str, Any] = {"status": SUCCEEDED}
    try:
        papermill.execute_notebook(
            spec.notebook,
            spec.output_path,
            parameters=spec.parameters,
            kernel_name=spec.kernel_name,
            language=spec.language,
            progress_bar=spec.progress,
            cwd=spec.cwd,
        )
    except PapermillExecutionError as exc:
        outcome = {
            "status": FAILED,
            "error": f"{exc.ename}: {exc.evalue}",
            "error_cell": _running_cell(spec.output_path, spec.notebook),
        }
    except DeadKernelError as exc:
        outcome = {
            "status": FAILED,
            "error": f"the kernel died while running the notebook ({exc}); look for memory or native-code crashes",
            "error_cell": _running_cell(spec.output_path, spec.notebook, last_started=True),
        }
    except Exception as exc:  # noqa: BLE001 - anything else is recorded as the run's error
        outcome = {
            "status": FAILED,
            "error": f"{type(exc).__name__}: {exc}",
            "error_cell": _running_cell(spec.output_path, spec.notebook),
        }
    Path(spec.run_dir, OUTCOME_FILE).write_text(json.dumps(outcome))
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
