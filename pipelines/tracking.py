"""MLflow glue: one MLflow run per pipeline run, opened before the notebook starts, filled after it ends.

The embedded default is `sqlite:///<state_dir>/mlflow.db` with artifacts in `<state_dir>/mlartifacts`;
`--tracking-uri` points at an `mlflow server` instead. Any MLflow failure raises `TrackingUnavailable`,
which the runner records on the run instead of failing it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from contextlab.pipelines.report import ARTIFACTS

EXPERIMENT_PREFIX = "contextlab/"
_MAX_PARAM = 6000
_STATUS = {"succeeded": "FINISHED", "failed": "FAILED", "timed-out": "FAILED", "cancelled": "KILLED"}


class TrackingUnavailable(RuntimeError):
    """MLflow could not be reached or refused a write; the run itself is unaffected."""


def default_tracking_uri(state_dir: str | Path) -> str:
    return f"sqlite:///{Path(state_dir).resolve() / 'mlflow.db'}"


def default_artifact_root(state_dir: str | Path) -> Path:
    return Path(state_dir).resolve() / "mlartifacts"


class Tracker:
    """Writes pipeline runs to one MLflow tracking server or embedded store."""

    def __init__(
        self, tracking_uri: str, artifact_root: str | Path | None = None, probe_timeout_s: float = 3.0
    ) -> None:
        self.tracking_uri = tracking_uri
        self.artifact_root = Path(artifact_root) if artifact_root else None
        self.probe_timeout_s = probe_timeout_s
        self._client: Any = None

    def start(self, pipeline: str, job_id: str, parameters: dict[str, Any], tags: dict[str, str]) -> str:
        """Open an MLflow run for a job and log its parameters; returns the MLflow run id."""
        client = self._connect()
        try:
            experiment_id = self._experiment(client, pipeline)
            run = client.create_run(
                experiment_id,
                run_name=f"{pipeline}-{job_id[:8]}",
                tags={**{k: str(v) for k, v in tags.items()}, "contextlab.job_id": job_id},
            )
            from mlflow.entities import Param

            params = [Param(k, _param_value(v)) for k, v in parameters.items()]
            if params:
                client.log_batch(run.info.run_id, params=params)
            return run.info.run_id
        except Exception as exc:
            raise TrackingUnavailable(f"MLflow at {self.tracking_uri} refused the run: {_short(exc)}") from exc

    def finish(
        self,
        mlflow_run_id: str,
        *,
        status: str,
        report: dict[str, Any],
        run_dir: str | Path,
        output_path: str | None,
        logged_params: dict[str, Any],
        tags: dict[str, str],
    ) -> None:
        """Log the notebook's metrics, params, tags and artifacts, the output notebook, and close the run."""
        from mlflow.entities import Metric, Param, RunTag

        client = self._connect()
        try:
            now = int(time.time() * 1000)
            metrics = [
                Metric(m["key"], m["value"], int(m.get("ts", now / 1000) * 1000), m.get("step") or 0)
                for m in report.get("metrics", [])
            ]
            params = []
            for key, value in report.get("params", {}).items():
                if key in logged_params and _param_value(logged_params[key]) != _param_value(value):
                    key = f"report.{key}"
                elif key in logged_params:
                    continue
                params.append(Param(key, _param_value(value)))
            all_tags = [RunTag(k, str(v)) for k, v in {**report.get("tags", {}), **tags}.items()]
            for start in range(0, max(len(metrics), 1), 900):  # MLflow caps a batch at 1000 entities
                client.log_batch(
                    mlflow_run_id,
                    metrics=metrics[start : start + 900],
                    params=params if start == 0 else [],
                    tags=all_tags if start == 0 else [],
                )
            artifacts = Path(run_dir) / ARTIFACTS
            if artifacts.is_dir() and any(artifacts.iterdir()):
                client.log_artifacts(mlflow_run_id, str(artifacts))
            for child in report.get("children", []):
                self._child(client, mlflow_run_id, child, tags)
            if output_path and Path(output_path).exists():
                client.log_artifact(mlflow_run_id, output_path, "notebook")
            client.set_terminated(mlflow_run_id, _STATUS.get(status, "FAILED"))
        except Exception as exc:
            raise TrackingUnavailable(f"MLflow at {self.tracking_uri} refused the results: {_short(exc)}") from exc

    def _child(self, client: Any, parent_id: str, child: dict[str, Any], tags: dict[str, str]) -> None:
        """A nested run for one variant: its params, metrics, tags and artifacts, under the parent."""
        from mlflow.entities import Metric, Param

        parent = client.get_run(parent_id)
        run = client.create_run(
            parent.info.experiment_id,
            run_name=child["name"],
            tags={
                **{k: v for k, v in parent.data.tags.items() if not k.startswith("mlflow.")},
                **tags,
                **child.get("tags", {}),
                "mlflow.parentRunId": parent_id,
            },
        )
        metrics = [
            Metric(m["key"], m["value"], int(m.get("ts", time.time()) * 1000), m.get("step") or 0)
            for m in child.get("metrics", [])
        ]
        params = [Param(k, _param_value(v)) for k, v in child.get("params", {}).items()]
        for start in range(0, max(len(metrics), 1), 900):
            client.log_batch(run.info.run_id, metrics=metrics[start : start + 900], params=params if start == 0 else [])
        artifacts = Path(child["dir"]) / ARTIFACTS
        if artifacts.is_dir() and any(artifacts.iterdir()):
            client.log_artifacts(run.info.run_id, str(artifacts))
        client.set_terminated(run.info.run_id, "FINISHED")

    def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        parsed = urlparse(self.tracking_uri)
        if parsed.scheme in ("http", "https"):
            self._probe()
        try:
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        except Exception as exc:
            raise TrackingUnavailable(f"MLflow at {self.tracking_uri} cannot be opened: {_short(exc)}") from exc
        return self._client

    def _probe(self) -> None:
        # MLflow's own client retries for minutes against a dead server: ask once, quickly.
        import httpx

        try:
            httpx.get(self.tracking_uri.rstrip("/") + "/health", timeout=self.probe_timeout_s).raise_for_status()
        except httpx.HTTPError as exc:
            raise TrackingUnavailable(
                f"MLflow at {self.tracking_uri} is unreachable ({_short(exc)}); start it or drop --tracking-uri "
                "to use the embedded store"
            ) from exc

    def _experiment(self, client: Any, pipeline: str) -> str:
        name = EXPERIMENT_PREFIX + pipeline
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if self.artifact_root is not None and urlparse(self.tracking_uri).scheme not in ("http", "https"):
            folder = self.artifact_root / pipeline
            folder.mkdir(parents=True, exist_ok=True)
            location = folder.as_uri()
        return client.create_experiment(name, artifact_location=location)


def _param_value(value: Any) -> str:
    import json

    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:_MAX_PARAM]


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
