"""Implicit feedback the kernel cannot see: a Copilot cell deleted from a saved notebook.

Jupyter emits a contents event for every save. For each saved notebook the watcher keeps the
`copilot:<id>` markers its cells carried at the previous save; a marker that is gone at the next
save means the user deleted the suggested cell, which is recorded as `deleted` feedback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from contextlab.extension.copilot_records import CopilotRecords, RecordError
from contextlab.kernels.edits import find_marker

log = logging.getLogger(__name__)

CONTENTS_EVENTS = "https://events.jupyter.org/jupyter_server/contents_service/v1"


class DeletedCellWatcher:
    """Turns notebook saves into `deleted` feedback for Copilot cells that disappeared."""

    def __init__(self, records: CopilotRecords, root: Path) -> None:
        self.records = records
        self.root = root.resolve()
        self._markers: dict[str, set[str]] = {}

    async def on_contents_event(self, logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        # jupyter_events calls listeners with keywords; a listener that raises would fail the user's save.
        try:
            path = str(data.get("path") or "")
            if not path.endswith(".ipynb"):
                return
            action = data.get("action")
            if action == "save":
                await asyncio.to_thread(self.saved, path)
            elif action == "rename" and data.get("source_path") in self._markers:
                self._markers[path] = self._markers.pop(data["source_path"])
        except Exception:
            log.exception("the Copilot cell watcher failed on %s", data)

    def saved(self, path: str) -> list[str]:
        """Compare the saved notebook's markers with the previous save; returns the ids recorded as deleted."""
        markers = self.markers(path)
        if markers is None:
            return []
        before = self._markers.get(path)
        self._markers[path] = markers
        deleted = sorted(before - markers) if before is not None else []
        for suggestion_id in deleted:
            owner = self.records.suggestion_user(suggestion_id)
            if owner is None:
                continue  # a marker typed by hand, or a suggestion from another workspace
            try:
                self.records.add_feedback({"suggestion_id": suggestion_id, "kind": "deleted"}, owner)
            except RecordError as exc:
                log.warning("could not record the deletion of suggestion %s: %s", suggestion_id, exc)
        return deleted

    def markers(self, path: str) -> set[str] | None:
        file = (self.root / path).resolve()
        if not file.is_relative_to(self.root):
            return None
        try:
            cells = json.loads(file.read_text(encoding="utf-8")).get("cells", [])
        except (OSError, ValueError):
            return None
        found = set()
        for cell in cells:
            source = cell.get("source", "")
            marker = find_marker("".join(source) if isinstance(source, list) else source)
            if marker:
                found.add(marker)
        return found
