"""What a pipeline notebook hands back to the runner: metrics, params, tags, figures and tables.

A notebook calls `report = RunReport()` and records into it; everything lands in the run folder
(`report.json` plus `artifacts/`). After the notebook finishes, the runner pushes the lot to MLflow
in one place, so a notebook never needs MLflow to be reachable, and runs the same way by hand
(outside a pipeline the report goes to a temporary folder).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from contextlab.pipelines.execute import REPORT_ENV, RUN_ID_ENV

REPORT_FILE = "report.json"
ARTIFACTS = "artifacts"
CHILDREN = "children"
_NAME = re.compile(r"^[A-Za-z0-9_.\-/ ]{1,250}$")


class RunReport:
    """Collects a run's results in its folder. Every method writes through at once, so a crash keeps them."""

    def __init__(self, run_dir: str | Path | None = None) -> None:
        folder = run_dir or os.environ.get(REPORT_ENV)
        self.run_dir = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="contextlab-report-"))
        self.run_id = os.environ.get(RUN_ID_ENV)
        self.artifact_dir = self.run_dir / ARTIFACTS
        self.artifact_dir.mkdir(parents=True, exist_ok=True)
        self._data: dict[str, Any] = {"metrics": [], "params": {}, "tags": {}, "artifacts": []}
        path = self.run_dir / REPORT_FILE
        if path.exists():  # a notebook re-run in the same folder keeps adding to the same report
            self._data.update(json.loads(path.read_text()))

    # -- recording -----------------------------------------------------------------------------
    def metric(self, name: str, value: float, step: int | None = None) -> None:
        """One metric value; give `step` for series (e.g. training loss per step). NaN is skipped."""
        number = float(value)
        if math.isnan(number):
            return
        self._data["metrics"].append({"key": _checked(name), "value": number, "step": step, "ts": time.time()})
        self._save()

    def metrics(self, values: dict[str, float], step: int | None = None) -> None:
        for name, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.metric(name, value, step)

    def param(self, name: str, value: Any) -> None:
        self._data["params"][_checked(name)] = value if isinstance(value, str) else json.dumps(value, default=str)
        self._save()

    def params(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            self.param(name, value)

    def tag(self, name: str, value: Any) -> None:
        """Tags link the run to what it measured: prompt versions, models, adapters, datasets."""
        self._data["tags"][_checked(name)] = str(value)
        self._save()

    def figure(self, name: str, fig: Any) -> Path:
        """Save a matplotlib figure as PNG under artifacts/plots/."""
        path = self.artifact_dir / "plots" / f"{_file_name(name)}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
        return self._artifact(path)

    def table(self, name: str, frame: Any) -> Path:
        """Save a pandas DataFrame as CSV under artifacts/tables/."""
        path = self.artifact_dir / "tables" / f"{_file_name(name)}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        return self._artifact(path)

    def json(self, name: str, value: Any) -> Path:
        path = self.artifact_dir / f"{_file_name(name)}.json"
        path.write_text(json.dumps(value, indent=2, default=str))
        return self._artifact(path)

    def artifact(self, source: str | Path, subdir: str = "") -> Path:
        """Copy a file or folder (e.g. an adapter) into the run's artifacts."""
        source = Path(source)
        target = self.artifact_dir / subdir / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
        return self._artifact(target)

    def child(self, name: str) -> RunReport:
        """A report for one variant of the run (e.g. one description label × model).

        Each child becomes a nested MLflow run under this one, with its own params and metrics, so
        the MLflow UI can put variants side by side (select the child runs, then Compare).
        """
        if not isinstance(name, str) or not name.strip() or len(name) > 250:
            raise ValueError(f"child run name {name!r}: give 1 to 250 characters.")
        folder = self.run_dir / CHILDREN / _file_name(name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "name").write_text(name)
        report = RunReport(folder)
        report.run_id = self.run_id
        return report

    # -- reading -------------------------------------------------------------------------------
    @property
    def data(self) -> dict[str, Any]:
        return self._data

    def final_metrics(self) -> dict[str, float]:
        """The last value of each metric."""
        out: dict[str, float] = {}
        for item in self._data["metrics"]:
            out[item["key"]] = item["value"]
        return out

    def _artifact(self, path: Path) -> Path:
        relative = str(path.relative_to(self.artifact_dir))
        if relative not in self._data["artifacts"]:
            self._data["artifacts"].append(relative)
            self._save()
        return path

    def _save(self) -> None:
        tmp = self.run_dir / f".{REPORT_FILE}.tmp"
        tmp.write_text(json.dumps(self._data, default=str))
        tmp.replace(self.run_dir / REPORT_FILE)


def load_report(run_dir: str | Path) -> dict[str, Any]:
    """The report a run left behind (empty when the notebook recorded nothing), with its children."""
    path = Path(run_dir) / REPORT_FILE
    data = {"metrics": [], "params": {}, "tags": {}, "artifacts": []}
    if path.exists():
        data.update(json.loads(path.read_text()))
    children = []
    folder = Path(run_dir) / CHILDREN
    if folder.is_dir():
        for child in sorted(p for p in folder.iterdir() if p.is_dir()):
            name = (child / "name").read_text() if (child / "name").exists() else child.name
            children.append({"name": name, "dir": str(child), **load_report(child)})
    data["children"] = children
    return data


def _checked(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{name!r} is not a valid metric/param/tag name (letters, digits, _ - . / and spaces).")
    return name


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "artifact"
