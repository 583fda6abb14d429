"""Tool descriptions as managed prompts: immutable versions, labels, weighted canary, rollback.

A tool's user-facing text (its description and its parameters' descriptions) is a prompt named
after the tool as clients see it (`time__get_current_time`, `sql__query`). Each change is a new
immutable version with author, message, diff and time. Labels point at versions:

- `stable` is what callers see;
- `canary` carries a traffic share (`weight`, percent): a caller whose sticky bucket falls under it
  sees the canary version instead;
- `latest` always points at the newest version (moved automatically);
- any other label (`reviewed`, `exp-7`) is a bookmark.

The first change of a tool records the upstream's own text as version 1 (author `upstream`), so a
rollback can always reach the original. Reads on the request path (`resolve`, `apply`) use an
in-memory view rebuilt after every change; nothing on that path touches the database.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from contextlab.state import StateStore
from contextlab.state.models import PromptLabelRow, PromptVersionRow

log = logging.getLogger(__name__)

PROMPT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
LABEL_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
SERVED = "stable"
CANARY = "canary"
LATEST = "latest"
BUCKETS = 10_000


class PromptError(Exception):
    """A request the prompt store cannot honour; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class DescriptionContent:
    """The user-facing text of one tool: its description and its parameters' descriptions."""

    description: str
    parameters: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_tool(cls, tool: Mapping[str, Any]) -> DescriptionContent:
        """The text a tool definition (as listed by `tools/list`) carries now."""
        properties = ((tool.get("inputSchema") or {}).get("properties")) or {}
        return cls(
            description=str(tool.get("description") or ""),
            parameters={
                name: str(schema.get("description") or "")
                for name, schema in properties.items()
                if isinstance(schema, Mapping)
            },
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DescriptionContent:
        return cls(
            str(data.get("description") or ""), {str(k): str(v) for k, v in (data.get("parameters") or {}).items()}
        )

    def to_dict(self) -> dict[str, Any]:
        return {"description": self.description, "parameters": dict(self.parameters)}

    def render(self) -> str:
        """One text for diffs and the MLflow prompt registry: the description, then one line per parameter."""
        lines = [self.description.rstrip()]
        if self.parameters:
            lines += ["", "Parameters:"]
            lines += [f"- {name}: {text}" for name, text in sorted(self.parameters.items())]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class PromptVersion:
    prompt: str
    version: int
    content: DescriptionContent
    author: str
    message: str
    diff: str
    created_at: datetime
    kind: str = "tool"
    mlflow_version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "version": self.version,
            "kind": self.kind,
            **self.content.to_dict(),
            "author": self.author,
            "message": self.message,
            "diff": self.diff,
            "created_at": self.created_at.isoformat(),
            "mlflow_version": self.mlflow_version,
        }


@dataclass(frozen=True)
class Label:
    prompt: str
    label: str
    version: int
    weight: float | None
    history: tuple[int, ...]
    updated_by: str
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "version": self.version,
            "weight": self.weight,
            "history": list(self.history),
            "updated_by": self.updated_by,
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class Served:
    """What the request path needs for one prompt: the stable text and an optional weighted canary."""

    stable: PromptVersion
    canary: PromptVersion | None = None
    canary_weight: float = 0.0


def canary_bucket(prompt: str, caller_key: str) -> int:
    """A caller's sticky bucket (0..9999) for one prompt: the same caller always lands in the same one."""
    digest = hashlib.sha256(f"{prompt}\x00{caller_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


class PromptStore:
    """Versions and labels in the control-plane store, with an in-memory view for the request path."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._lock = threading.RLock()
        self._served: dict[str, Served] = {}
        self.listeners: list[Callable[[str, str], None]] = []
        self.reload()

    # -- the request path ---------------------------------------------------------------------------
    def resolve(self, prompt: str, caller_key: str) -> tuple[PromptVersion | None, str | None]:
        """The version this caller sees for a prompt and the label that chose it; (None, None) if unmanaged."""
        served = self._served.get(prompt)
        if served is None:
            return None, None
        if served.canary is not None and canary_bucket(prompt, caller_key) < served.canary_weight * BUCKETS / 100:
            return served.canary, CANARY
        return served.stable, SERVED

    def apply(self, tool: dict[str, Any], caller_key: str) -> dict[str, Any]:
        """The tool definition with the managed text this caller should see (the same dict if unmanaged)."""
        version, _ = self.resolve(str(tool.get("name")), caller_key)
        if version is None:
            return tool
        return apply_content(tool, version.content)

    def stable(self, prompt: str) -> PromptVersion | None:
        """The version labelled stable (what callers outside a canary see), or None if unmanaged."""
        served = self._served.get(prompt)
        return served.stable if served is not None else None

    def managed(self) -> set[str]:
        return set(self._served)

    # -- reads --------------------------------------------------------------------------------------
    def versions(self, prompt: str) -> list[PromptVersion]:
        with Session(self.store.engine) as session:
            rows = session.scalars(
                select(PromptVersionRow).where(PromptVersionRow.prompt == prompt).order_by(PromptVersionRow.version)
            )
            return [_version(row) for row in rows]

    def version(self, prompt: str, number: int) -> PromptVersion:
        with Session(self.store.engine) as session:
            row = session.get(PromptVersionRow, (prompt, number))
            if row is None:
                raise PromptError(f"Prompt {prompt!r} has no version {number}.", 404)
            return _version(row)

    def labels(self, prompt: str) -> list[Label]:
        with Session(self.store.engine) as session:
            rows = session.scalars(
                select(PromptLabelRow).where(PromptLabelRow.prompt == prompt).order_by(PromptLabelRow.label)
            )
            return [_label(row) for row in rows]

    def summary(self) -> dict[str, dict[str, Any]]:
        """For every managed prompt: the number of versions and each label's version (and canary weight)."""
        out: dict[str, dict[str, Any]] = {}
        with Session(self.store.engine) as session:
            for row in session.scalars(select(PromptVersionRow)):
                entry = out.setdefault(row.prompt, {"versions": 0, "labels": {}, "kind": row.kind})
                entry["versions"] = max(entry["versions"], row.version)
            for label in session.scalars(select(PromptLabelRow)):
                entry = out.setdefault(label.prompt, {"versions": 0, "labels": {}, "kind": "tool"})
                entry["labels"][label.label] = {"version": label.version, "weight": label.weight}
        return out

    def diff(self, prompt: str, old: int, new: int) -> str:
        a, b = self.version(prompt, old), self.version(prompt, new)
        return _diff(prompt, a.content.render(), b.content.render(), f"v{old}", f"v{new}")

    # -- writes -------------------------------------------------------------------------------------
    def create_version(
        self,
        prompt: str,
        content: DescriptionContent,
        *,
        author: str,
        message: str = "",
        baseline: DescriptionContent | None = None,
        promote: bool = True,
        canary_weight: float | None = None,
        labels: tuple[str, ...] = (),
        kind: str = "tool",
    ) -> PromptVersion:
        """Record a new version. The first one of a prompt is preceded by `baseline` (the upstream's text).

        `promote` moves `stable` to it; `canary_weight` (0–100) instead points `canary` at it with that
        traffic share; `labels` adds custom labels. `latest` always moves.
        """
        _check_name(prompt)
        for label in labels:
            _check_label(label)
        if canary_weight is not None:
            _check_weight(canary_weight)
            promote = False
        now = datetime.now(UTC)
        with self._lock, Session(self.store.engine) as session, session.begin():
            newest = session.scalar(
                select(PromptVersionRow)
                .where(PromptVersionRow.prompt == prompt)
                .order_by(PromptVersionRow.version.desc())
                .limit(1)
            )
            if newest is None:
                if baseline is None:
                    raise PromptError(f"Prompt {prompt!r} has no versions yet and no baseline text was given.", 409)
                newest = PromptVersionRow(
                    prompt=prompt,
                    version=1,
                    kind=kind,
                    content=baseline.to_dict(),
                    author="upstream",
                    message="The text the tool was published with.",
                    diff="",
                    created_at=now,
                )
                session.add(newest)
                self._move(session, prompt, SERVED, 1, author="upstream", now=now)
            previous = DescriptionContent.from_dict(newest.content)
            if previous == content:
                raise PromptError(
                    f"Version {newest.version} of {prompt!r} already has this text; nothing to record.", 409
                )
            row = PromptVersionRow(
                prompt=prompt,
                version=newest.version + 1,
                kind=kind,
                content=content.to_dict(),
                author=author,
                message=message,
                diff=_diff(prompt, previous.render(), content.render(), f"v{newest.version}", f"v{newest.version + 1}"),
                created_at=now,
            )
            session.add(row)
            session.flush()
            self._move(session, prompt, LATEST, row.version, author=author, now=now)
            if promote:
                self._move(session, prompt, SERVED, row.version, author=author, now=now)
            if canary_weight is not None:
                self._move(session, prompt, CANARY, row.version, author=author, now=now, weight=canary_weight)
            for label in labels:
                self._move(session, prompt, label, row.version, author=author, now=now)
            created = _version(row)
        self._changed(prompt, "version")
        return created

    def set_label(self, prompt: str, label: str, version: int, *, author: str, weight: float | None = None) -> Label:
        """Point a label at an existing version (`canary` takes a weight, 0–100; default keeps the old one)."""
        _check_label(label)
        if label == LATEST:
            raise PromptError("`latest` moves by itself to the newest version; choose another label.", 400)
        if weight is not None:
            if label != CANARY:
                raise PromptError("Only the `canary` label takes a traffic weight.", 400)
            _check_weight(weight)
        with self._lock, Session(self.store.engine) as session, session.begin():
            if session.get(PromptVersionRow, (prompt, version)) is None:
                raise PromptError(_missing_version(session, prompt, version), 404)
            row = self._move(session, prompt, label, version, author=author, now=datetime.now(UTC), weight=weight)
            result = _label(row)
        self._changed(prompt, "label")
        return result

    def delete_label(self, prompt: str, label: str, *, author: str) -> None:
        if label in (SERVED, LATEST):
            raise PromptError(f"`{label}` cannot be removed; move it with `label` or `rollback` instead.", 400)
        with self._lock, Session(self.store.engine) as session, session.begin():
            row = session.get(PromptLabelRow, (prompt, label))
            if row is None:
                raise PromptError(f"Prompt {prompt!r} has no label {label!r}.", 404)
            session.delete(row)
        log.info("prompt %s: label %s removed by %s", prompt, label, author)
        self._changed(prompt, f"unlabel:{label}")

    def rollback(self, prompt: str, *, author: str, label: str = SERVED, to: int | None = None) -> Label:
        """Move a label back: to `to`, or to the version it pointed at before its last move.

        Rolling back `canary` with no earlier version in its history removes the canary.
        """
        now = datetime.now(UTC)
        action = "rollback"
        with self._lock, Session(self.store.engine) as session, session.begin():
            row = session.get(PromptLabelRow, (prompt, label))
            if row is None:
                raise PromptError(f"Prompt {prompt!r} has no label {label!r} to roll back.", 404)
            history = list(row.history or [])
            if to is None:
                earlier = [v for v in history if v != row.version]
                if not earlier and label == CANARY:
                    session.delete(row)
                    out = Label(prompt, label, row.version, 0.0, (), author, now)
                    to, action = -1, f"unlabel:{label}"
                elif not earlier:
                    raise PromptError(
                        f"Label {label!r} of {prompt!r} has never pointed anywhere but v{row.version}; "
                        "give the version to roll back to with --to.",
                        409,
                    )
                else:
                    to = earlier[-1]
            if to != -1:
                if session.get(PromptVersionRow, (prompt, to)) is None:
                    raise PromptError(_missing_version(session, prompt, to), 404)
                # Going back to a version the label held before undoes the moves since; otherwise it is a move.
                if to in history:
                    history = history[: len(history) - history[::-1].index(to)]
                else:
                    history.append(to)
                row.version, row.history, row.updated_by, row.updated_at = to, history[-50:], author, now
                row.mlflow_synced = False
                session.flush()
                out = _label(row)
        self._changed(prompt, action)
        return out

    # -- MLflow bookkeeping ---------------------------------------------------------------------------
    def unsynced(self) -> tuple[list[PromptVersion], list[Label]]:
        """Versions not yet in MLflow (oldest first) and labels whose MLflow alias is out of date."""
        with Session(self.store.engine) as session:
            versions = session.scalars(
                select(PromptVersionRow)
                .where(PromptVersionRow.mlflow_version.is_(None))
                .order_by(PromptVersionRow.prompt, PromptVersionRow.version)
            )
            labels = session.scalars(select(PromptLabelRow).where(PromptLabelRow.mlflow_synced.is_(False)))
            return [_version(v) for v in versions], [_label(label) for label in labels]

    def mark_synced(
        self,
        prompt: str,
        *,
        version: int | None = None,
        mlflow_version: int | None = None,
        label: str | None = None,
        label_version: int | None = None,
    ) -> None:
        with Session(self.store.engine) as session, session.begin():
            if version is not None:
                row = session.get(PromptVersionRow, (prompt, version))
                if row is not None:
                    row.mlflow_version = mlflow_version
            if label is not None:
                lrow = session.get(PromptLabelRow, (prompt, label))
                if lrow is not None and lrow.version == label_version:
                    lrow.mlflow_synced = True

    # -- internals ------------------------------------------------------------------------------------
    def reload(self) -> None:
        """Rebuild the request path's view from the store."""
        with Session(self.store.engine) as session:
            labels = list(session.scalars(select(PromptLabelRow).where(PromptLabelRow.label.in_((SERVED, CANARY)))))
            wanted = {(row.prompt, row.version) for row in labels}
            versions = {
                (row.prompt, row.version): _version(row)
                for row in session.scalars(select(PromptVersionRow))
                if (row.prompt, row.version) in wanted
            }
        served: dict[str, Served] = {}
        canaries: dict[str, PromptLabelRow] = {}
        for row in labels:
            if row.label == SERVED:
                served[row.prompt] = Served(stable=versions[(row.prompt, row.version)])
            else:
                canaries[row.prompt] = row
        for prompt, row in canaries.items():
            if prompt in served and row.weight:
                served[prompt] = Served(served[prompt].stable, versions[(prompt, row.version)], float(row.weight))
        self._served = served

    def _move(
        self,
        session: Session,
        prompt: str,
        label: str,
        version: int,
        *,
        author: str,
        now: datetime,
        weight: float | None = None,
    ) -> PromptLabelRow:
        row = session.get(PromptLabelRow, (prompt, label))
        if row is None:
            row = PromptLabelRow(
                prompt=prompt,
                label=label,
                version=version,
                weight=weight if label == CANARY else None,
                history=[version],
                updated_by=author,
                updated_at=now,
                mlflow_synced=False,
            )
            session.add(row)
            return row
        if weight is not None:
            row.weight = weight
        if row.version != version:
            row.history = [*list(row.history or []), version][-50:]
            row.version = version
        row.updated_by = author
        row.updated_at = now
        row.mlflow_synced = False
        return row

    def _changed(self, prompt: str, action: str) -> None:
        with self._lock:
            self.reload()
        for listener in list(self.listeners):
            try:
                listener(prompt, action)
            except Exception:
                log.exception("prompt listener failed for %s", prompt)


def apply_content(tool: dict[str, Any], content: DescriptionContent) -> dict[str, Any]:
    """A copy of a tool definition carrying `content`: description and the parameters' descriptions."""
    out = dict(tool)
    out["description"] = content.description
    schema = tool.get("inputSchema")
    properties = (schema or {}).get("properties") if isinstance(schema, Mapping) else None
    if content.parameters and isinstance(properties, Mapping):
        schema = copy.deepcopy(schema)
        for name, text in content.parameters.items():
            prop = schema["properties"].get(name)
            if isinstance(prop, dict):
                if text:
                    prop["description"] = text
                else:
                    prop.pop("description", None)
        out["inputSchema"] = schema
    return out


def merge_content(
    current: DescriptionContent,
    description: str | None,
    parameters: Mapping[str, str] | None,
    known_parameters: set[str],
) -> DescriptionContent:
    """`current` with a new description and/or some parameters' descriptions; unknown parameters are an error."""
    unknown = sorted(set(parameters or {}) - known_parameters)
    if unknown:
        raise PromptError(
            f"The tool has no parameter {', '.join(map(repr, unknown))}; "
            f"its parameters are: {', '.join(sorted(known_parameters)) or 'none'}.",
            422,
        )
    merged = dict(current.parameters)
    merged.update({k: str(v) for k, v in (parameters or {}).items()})
    return DescriptionContent(current.description if description is None else description, merged)


def _check_name(prompt: str) -> None:
    if not PROMPT_NAME.match(prompt):
        raise PromptError(f"Prompt name {prompt!r} must match {PROMPT_NAME.pattern}.", 400)


def _check_label(label: str) -> None:
    if not LABEL_NAME.match(label):
        raise PromptError(f"Label {label!r} must match {LABEL_NAME.pattern} (e.g. stable, canary, reviewed).", 400)


def _check_weight(weight: float) -> None:
    if not 0 <= weight <= 100:
        raise PromptError(f"A canary weight is a percentage between 0 and 100, not {weight}.", 400)


def _missing_version(session: Session, prompt: str, version: int) -> str:
    count = session.scalar(
        select(PromptVersionRow.version)
        .where(PromptVersionRow.prompt == prompt)
        .order_by(PromptVersionRow.version.desc())
        .limit(1)
    )
    if count is None:
        return f"Prompt {prompt!r} has no versions; create one with `contextlab prompts set`."
    return f"Prompt {prompt!r} has no version {version}; its versions are 1–{count}."


def _diff(prompt: str, old: str, new: str, old_name: str, new_name: str) -> str:
    return "".join(
        difflib.unified_diff(
            old.splitlines(keepends=True), new.splitlines(keepends=True), f"{prompt}@{old_name}", f"{prompt}@{new_name}"
        )
    )


def _version(row: PromptVersionRow) -> PromptVersion:
    return PromptVersion(
        prompt=row.prompt,
        version=row.version,
        content=DescriptionContent.from_dict(row.content),
        author=row.author,
        message=row.message,
        diff=row.diff,
        created_at=_aware(row.created_at),
        kind=row.kind,
        mlflow_version=row.mlflow_version,
    )


def _label(row: PromptLabelRow) -> Label:
    return Label(
        prompt=row.prompt,
        label=row.label,
        version=row.version,
        weight=row.weight,
        history=tuple(row.history or ()),
        updated_by=row.updated_by,
        updated_at=_aware(row.updated_at),
    )


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
