"""The pipeline runner: papermill runs recorded in the state store and tracked in MLflow.

A run moves queued → running → succeeded | failed | cancelled | timed-out. For each run the store
keeps its parameters, tags, timings, output notebook, MLflow run id, tracking error (if MLflow was
unreachable the run still completes), and the error with its failing cell.
"""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from contextlab.pipelines.execute import CANCELLED, FAILED, SUCCEEDED, TIMED_OUT, JobOutcome, JobSpec, cancel
from contextlab.pipelines.executors import JobExecutor, LocalExecutor
from contextlab.pipelines.report import load_report
from contextlab.pipelines.tracking import Tracker, TrackingUnavailable, default_artifact_root, default_tracking_uri
from contextlab.state import StateStore
from contextlab.state.models import PipelineRunRow

log = logging.getLogger(__name__)

QUEUED, RUNNING = "queued", "running"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, TIMED_OUT)
FINAL = (SUCCEEDED, FAILED, CANCELLED, TIMED_OUT)


class PipelineError(ValueError):
    """A run request that cannot start (unknown pipeline, unknown parameter); nothing was recorded."""


def packaged_pipelines() -> list[str]:
    """Names of the notebooks shipped in contextlab.notebooks."""
    folder = resources.files("contextlab.notebooks")
    return sorted(p.name.removesuffix(".ipynb") for p in folder.iterdir() if p.name.endswith(".ipynb"))


def resolve_notebook(pipeline: str, search: Iterable[Path] = ()) -> Path:
    """A pipeline name (a shipped notebook, or one in a search folder) or a path to an .ipynb file."""
    candidate = Path(pipeline).expanduser()
    if candidate.suffix == ".ipynb":
        if candidate.is_file():
            return candidate.resolve()
        raise PipelineError(f"notebook {pipeline} does not exist.")
    for folder in search:
        path = Path(folder) / f"{pipeline}.ipynb"
        if path.is_file():
            return path.resolve()
    shipped = resources.files("contextlab.notebooks") / f"{pipeline}.ipynb"
    if shipped.is_file():
        return Path(str(shipped))
    raise PipelineError(
        f"unknown pipeline {pipeline!r}. Shipped pipelines: {', '.join(packaged_pipelines())}; "
        "or give a path to a notebook (.ipynb)."
    )


def notebook_parameters(notebook: Path, kernel_name: str | None = None) -> dict[str, dict[str, Any]]:
    """The parameters a notebook declares in its `parameters` cell (name → type, default, help)."""
    import nbformat
    from papermill.translators import papermill_translators

    try:
        nb = nbformat.read(str(notebook), as_version=4)
    except (OSError, ValueError) as exc:
        raise PipelineError(f"cannot read notebook {notebook}: {exc}") from exc
    index = next((i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), None)
    if index is None:
        return {}
    kernelspec = nb.metadata.get("kernelspec", {})
    language = nb.metadata.get("language_info", {}).get("name") or kernelspec.get("language") or "python"
    translator = papermill_translators.find_translator(kernel_name or kernelspec.get("name", "python3"), language)
    return {p.name: p._asdict() for p in translator.inspect(nb.cells[index])}


@dataclass(frozen=True)
class HistoryPage:
    runs: list[dict[str, Any]]
    total: int
    limit: int
    offset: int


class PipelineRunner:
    """Submits runs to an executor, records them in the state store and mirrors them to MLflow."""

    def __init__(
        self,
        store: StateStore,
        state_dir: str | Path,
        *,
        tracking_uri: str | None = None,
        executor: JobExecutor | None = None,
        max_concurrent: int = 2,
        kernel_name: str | None = None,
        cwd: str | Path | None = None,
        notebook_dirs: Iterable[Path] = (),
        env: dict[str, str] | None = None,
        publish: Callable[[str, dict[str, Any]], Any] | None = None,
        progress: bool = False,
    ) -> None:
        self.store = store
        self.state_dir = Path(state_dir).resolve()
        self.runs_dir = self.state_dir / "runs"
        self.tracking_uri = tracking_uri or default_tracking_uri(self.state_dir)
        self.tracker = Tracker(self.tracking_uri, default_artifact_root(self.state_dir))
        self.executor = executor or LocalExecutor()
        self.kernel_name = kernel_name
        self.cwd = Path(cwd).resolve() if cwd else None
        self.notebook_dirs = [Path(p) for p in notebook_dirs]
        self.env = dict(env or {})
        self.publish = publish
        self.progress = progress
        self._pool = ThreadPoolExecutor(max(1, max_concurrent), thread_name_prefix="contextlab-pipeline")
        self._futures: dict[str, Future] = {}
        self._guard = threading.Lock()

    # -- submitting ----------------------------------------------------------------------------
    def submit(
        self,
        pipeline: str,
        parameters: dict[str, Any] | None = None,
        *,
        tags: dict[str, str] | None = None,
        timeout_s: float | None = None,
        trigger: str = "manual",
        schedule: str | None = None,
        attempt: int = 1,
        retry_of: str | None = None,
        on_done: Callable[[dict[str, Any]], Any] | None = None,
    ) -> str:
        """Queue a run and return its id. Raises PipelineError (recording nothing) for a bad request."""
        notebook = resolve_notebook(pipeline, self.notebook_dirs)
        parameters = dict(parameters or {})
        declared = notebook_parameters(notebook, self.kernel_name)
        unknown = sorted(set(parameters) - set(declared))
        if unknown:
            raise PipelineError(
                f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for pipeline {pipeline}. "
                f"It takes: {', '.join(sorted(declared)) or 'no parameters'}."
            )
        if timeout_s is not None and timeout_s <= 0:
            raise PipelineError("timeout must be positive (seconds).")
        if "executor" in declared and "executor" not in parameters:
            parameters["executor"] = self.executor.address
        if "tracking_uri" in declared and "tracking_uri" not in parameters:
            parameters["tracking_uri"] = self.tracking_uri
        run_id = uuid.uuid4().hex
        now = datetime.now(UTC)
        with Session(self.store.engine) as session, session.begin():
            session.add(
                PipelineRunRow(
                    id=run_id,
                    pipeline=_pipeline_name(pipeline),
                    status=QUEUED,
                    parameters=parameters,
                    tags=dict(tags or {}),
                    trigger=trigger,
                    schedule=schedule,
                    attempt=attempt,
                    retry_of=retry_of,
                    executor=self.executor.address,
                    timeout_s=timeout_s,
                    created_at=now,
                    metrics={},
                )
            )
        spec = JobSpec(
            run_id=run_id,
            notebook=str(notebook),
            output_path=str(self.runs_dir / run_id / "output.ipynb"),
            run_dir=str(self.runs_dir / run_id),
            parameters=parameters,
            timeout_s=timeout_s,
            kernel_name=self.kernel_name or _kernel_of(notebook)[0],
            language=_kernel_of(notebook)[1],
            cwd=str(self.cwd) if self.cwd else None,
            env=self.env,
            progress=self.progress,
        )
        future = self._pool.submit(self._run, spec, _pipeline_name(pipeline), dict(tags or {}), on_done)
        with self._guard:
            self._futures[run_id] = future
        future.add_done_callback(lambda _f: self._forget(run_id))
        return run_id

    def run(self, pipeline: str, parameters: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        """Submit and wait: the finished run's record."""
        return self.wait(self.submit(pipeline, parameters, **kwargs))

    def wait(self, run_id: str, timeout: float | None = None) -> dict[str, Any]:
        with self._guard:
            future = self._futures.get(run_id)
        if future is not None:
            future.result(timeout)
        record = self.get(run_id)
        if record is None:
            raise KeyError(run_id)
        return record

    def cancel(self, run_id: str) -> bool:
        """Stop a queued or running run. False when it already finished (or is unknown)."""
        record = self.get(run_id)
        if record is None or record["status"] in FINAL:
            return False
        with self._guard:
            future = self._futures.get(run_id)
        if future is not None and future.cancel():  # still queued in this process: it never starts
            self._update(run_id, status=CANCELLED, finished_at=datetime.now(UTC), error="cancelled before it started")
            return True
        cancel(self.runs_dir / run_id)  # running: execute() sees the marker and kills the process tree
        return True

    def active(self) -> list[str]:
        with self._guard:
            return list(self._futures)

    def close(self, wait: bool = True) -> None:
        """Stop taking runs. With `wait=False` the runs in flight are cancelled (their kernels stopped)."""
        if not wait:
            for run_id in self.active():
                cancel(self.runs_dir / run_id)
        self._pool.shutdown(wait=wait, cancel_futures=True)
        self.executor.close()

    # -- reading -------------------------------------------------------------------------------
    def get(self, run_id: str) -> dict[str, Any] | None:
        with Session(self.store.engine) as session:
            row = session.get(PipelineRunRow, run_id)
            return _as_dict(row) if row else None

    def history(
        self,
        *,
        status: str | Iterable[str] | None = None,
        pipeline: str | None = None,
        tags: dict[str, str] | None = None,
        schedule: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> HistoryPage:
        """Runs newest first, filtered by status, pipeline, tags (all must match), schedule and time range."""
        if limit < 1 or limit > 1000 or offset < 0:
            raise ValueError("limit must be 1..1000 and offset ≥ 0.")
        query = select(PipelineRunRow)
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            bad = sorted(set(wanted) - set(STATUSES))
            if bad:
                raise ValueError(f"unknown status {', '.join(bad)}; use one of {', '.join(STATUSES)}.")
            query = query.where(PipelineRunRow.status.in_(wanted))
        if pipeline is not None:
            query = query.where(PipelineRunRow.pipeline == pipeline)
        if schedule is not None:
            query = query.where(PipelineRunRow.schedule == schedule)
        for key, value in (tags or {}).items():
            query = query.where(PipelineRunRow.tags[key].as_string() == value)
        if since is not None:
            query = query.where(PipelineRunRow.created_at >= since)
        if until is not None:
            query = query.where(PipelineRunRow.created_at < until)
        with Session(self.store.engine) as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(
                query.order_by(PipelineRunRow.created_at.desc(), PipelineRunRow.id).limit(limit).offset(offset)
            )
            return HistoryPage([_as_dict(r) for r in rows], total, limit, offset)

    def purge(self, *, older_than: timedelta | None = None, keep_last: int | None = None) -> int:
        """Retention: delete finished runs older than `older_than`, and all but the newest `keep_last` per
        pipeline, with their run folders (output notebooks, artifacts). Returns how many were deleted."""
        doomed: set[str] = set()
        with Session(self.store.engine) as session:
            finished = select(PipelineRunRow.id, PipelineRunRow.pipeline, PipelineRunRow.created_at).where(
                PipelineRunRow.status.in_(FINAL)
            )
            rows = session.execute(finished.order_by(PipelineRunRow.created_at.desc())).all()
        cutoff = datetime.now(UTC) - older_than if older_than is not None else None
        seen: dict[str, int] = {}
        for run_id, name, created in rows:
            seen[name] = seen.get(name, 0) + 1
            if cutoff is not None and _aware(created) < cutoff:
                doomed.add(run_id)
            if keep_last is not None and seen[name] > keep_last:
                doomed.add(run_id)
        if doomed:
            with Session(self.store.engine) as session, session.begin():
                session.execute(delete(PipelineRunRow).where(PipelineRunRow.id.in_(doomed)))
            for run_id in doomed:
                shutil.rmtree(self.runs_dir / run_id, ignore_errors=True)
        return len(doomed)

    # -- the run itself ------------------------------------------------------------------------
    def _run(
        self, spec: JobSpec, pipeline: str, tags: dict[str, str], on_done: Callable[[dict[str, Any]], Any] | None
    ) -> None:
        run_dir = Path(spec.run_dir)
        if (run_dir / "cancel").exists():
            self._update(spec.run_id, status=CANCELLED, finished_at=datetime.now(UTC), error="cancelled")
            return self._done(spec.run_id, on_done)
        started = datetime.now(UTC)
        self._update(spec.run_id, status=RUNNING, started_at=started)
        record = self.get(spec.run_id) or {}
        run_tags = {
            "contextlab.pipeline": pipeline,
            "contextlab.trigger": record.get("trigger", ""),
            "contextlab.attempt": str(record.get("attempt", 1)),
            "contextlab.executor": self.executor.address,
            "mlflow.source.name": spec.notebook,
            **({"contextlab.schedule": record["schedule"]} if record.get("schedule") else {}),
            **tags,
        }
        mlflow_run_id: str | None = None
        tracking_error: str | None = None
        try:
            mlflow_run_id = self.tracker.start(pipeline, spec.run_id, spec.parameters, run_tags)
            self._update(spec.run_id, mlflow_run_id=mlflow_run_id)
        except TrackingUnavailable as exc:
            tracking_error = str(exc)
            log.warning("pipeline run %s is not tracked: %s", spec.run_id, exc)
        env = dict(spec.env)
        if mlflow_run_id:
            env.update(MLFLOW_RUN_ID=mlflow_run_id, MLFLOW_TRACKING_URI=self.tracking_uri)
        spec = JobSpec(**{**spec.__dict__, "env": env})
        try:
            outcome = self.executor.run(spec)
        except Exception as exc:  # the executor itself failed (e.g. the Dask cluster went away)
            now = datetime.now(UTC)
            outcome = JobOutcome(spec.run_id, FAILED, started, now, None, f"executor {self.executor.address}: {exc}")
        report = load_report(run_dir)
        final = {item["key"]: item["value"] for item in report.get("metrics", [])}
        if mlflow_run_id:
            try:
                self.tracker.finish(
                    mlflow_run_id,
                    status=outcome.status,
                    report=report,
                    run_dir=run_dir,
                    output_path=outcome.output_path,
                    logged_params=spec.parameters,
                    tags={"contextlab.status": outcome.status},
                )
            except TrackingUnavailable as exc:
                tracking_error = str(exc)
        self._update(
            spec.run_id,
            status=outcome.status,
            started_at=outcome.started_at,
            finished_at=outcome.finished_at,
            duration_s=outcome.duration_s,
            output_path=outcome.output_path,
            error=outcome.error,
            error_cell=outcome.error_cell,
            tracking_error=tracking_error,
            metrics=final,
        )
        return self._done(spec.run_id, on_done)

    def _done(self, run_id: str, on_done: Callable[[dict[str, Any]], Any] | None) -> None:
        record = self.get(run_id) or {}
        if self.publish is not None:
            topic = "pipeline.succeeded" if record.get("status") == SUCCEEDED else "pipeline.failed"
            try:
                self.publish(topic, _event_payload(record))
            except Exception:
                log.exception("could not publish %s for run %s", topic, run_id)
        if on_done is not None:
            try:
                on_done(record)
            except Exception:
                log.exception("on_done callback of run %s failed", run_id)

    def _update(self, run_id: str, **values: Any) -> None:
        with Session(self.store.engine) as session, session.begin():
            row = session.get(PipelineRunRow, run_id)
            for key, value in values.items():
                setattr(row, key, value)

    def _forget(self, run_id: str) -> None:
        with self._guard:
            self._futures.pop(run_id, None)


def render_html(notebook: str | Path) -> str:
    """An executed notebook as a standalone HTML page (nbconvert's lab template)."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _resources = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(str(notebook), as_version=4))
    return body


def _kernel_of(notebook: Path) -> tuple[str, str]:
    import nbformat

    metadata = nbformat.read(str(notebook), as_version=4).metadata
    kernelspec = metadata.get("kernelspec", {})
    language = metadata.get("language_info", {}).get("name") or kernelspec.get("language") or "python"
    return kernelspec.get("name") or "python3", language


def _pipeline_name(pipeline: str) -> str:
    return Path(pipeline).stem if pipeline.endswith(".ipynb") else pipeline


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _as_dict(row: PipelineRunRow) -> dict[str, Any]:
    out = {column.name: getattr(row, column.name) for column in PipelineRunRow.__table__.columns}
    for key in ("created_at", "started_at", "finished_at"):
        if out[key] is not None:
            out[key] = _aware(out[key])
    return out


def _event_payload(record: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "pipeline", "status", "trigger", "schedule", "attempt", "error", "error_cell", "mlflow_run_id")
    return {key: record.get(key) for key in keys} | {"duration_s": record.get("duration_s")}
