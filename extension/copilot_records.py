"""The server's record of the Copilot: suggestions, feedback on them, and LLM usage.

Kernels never open the state store; they post here through the REST API
(`{base_url}contextlab/api/copilot/...`). The principal is always the authenticated caller, never
what the body claims.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contextlab.state import StateStore
from contextlab.state.models import FeedbackRow, SuggestionRow, UsageRow

FEEDBACK_KINDS = ("accepted", "rejected", "ran", "edited", "reverted", "deleted")
MAX_TEXT = 200_000


class RecordError(Exception):
    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class CopilotRecords:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    def add_suggestion(self, body: Any, user: str) -> str:
        data = _object(body)
        for name in ("id", "target", "request", "code", "model", "prompt_version"):
            _string(data, name, required=True)
        if not isinstance(data.get("valid"), bool):
            raise RecordError('"valid" must be true or false.')
        for name in ("context", "attempts"):
            if not isinstance(data.get(name, []), list):
                raise RecordError(f'"{name}" must be a list.')
        row = SuggestionRow(
            id=data["id"],
            ts=datetime.now(UTC),
            user=user,
            project=str(data.get("project") or "default")[:128],
            target=data["target"],
            request=data["request"],
            code=data["code"],
            valid=data["valid"],
            model=data["model"],
            prompt_version=data["prompt_version"],
            context=data.get("context", []),
            attempts=data.get("attempts", []),
        )
        suggestion_id = row.id
        with Session(self.store.engine) as session, session.begin():
            if session.get(SuggestionRow, suggestion_id) is not None:
                raise RecordError(f"Suggestion {suggestion_id!r} is already recorded.", 409)
            session.add(row)
        return suggestion_id

    def add_feedback(self, body: Any, user: str) -> int:
        data = _object(body)
        suggestion_id = _string(data, "suggestion_id", required=True)
        kind = data.get("kind")
        if kind not in FEEDBACK_KINDS:
            raise RecordError(f'"kind" must be one of {", ".join(FEEDBACK_KINDS)}, not {kind!r}.')
        distance = data.get("edit_distance")
        if distance is not None and (
            isinstance(distance, bool) or not isinstance(distance, int | float) or not 0 <= distance <= 1
        ):
            raise RecordError('"edit_distance" is a fraction between 0 and 1 (or null).')
        succeeded = data.get("succeeded")
        if succeeded is not None and not isinstance(succeeded, bool):
            raise RecordError('"succeeded" must be true, false or null.')
        with Session(self.store.engine) as session, session.begin():
            if session.get(SuggestionRow, suggestion_id) is None:
                raise RecordError(f"No suggestion {suggestion_id!r}; post it to copilot/suggestions first.", 404)
            row = FeedbackRow(
                suggestion_id=suggestion_id,
                ts=datetime.now(UTC),
                user=user,
                kind=kind,
                edit_distance=distance,
                executed_code=_string(data, "executed_code"),
                succeeded=succeeded,
            )
            session.add(row)
            session.flush()
            return row.id

    def add_usage(self, body: Any, user: str) -> int:
        records = _object(body).get("records")
        if not isinstance(records, list) or not records:
            raise RecordError('"records" must be a non-empty list of usage records.')
        rows = []
        for i, record in enumerate(records):
            if not isinstance(record, dict):
                raise RecordError(f"records[{i}] must be an object.")
            try:
                rows.append(
                    UsageRow(
                        ts=_timestamp(record.get("ts")),
                        user=user,
                        project=str(record.get("project") or "default")[:128],
                        model=str(record["model"])[:128],
                        backend=str(record.get("backend") or "")[:32],
                        target=str(record.get("target") or "")[:32],
                        prompt_tokens=_count(record, "prompt_tokens"),
                        completion_tokens=_count(record, "completion_tokens"),
                        cost=float(record.get("cost") or 0.0),
                        latency_s=float(record.get("latency_s") or 0.0),
                        ok=bool(record.get("ok", True)),
                        error=(str(record["error"])[:500] if record.get("error") else None),
                    )
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise RecordError(f"records[{i}]: {exc}") from exc
        with Session(self.store.engine) as session, session.begin():
            session.add_all(rows)
        return len(rows)

    def usage(self, *, project: str | None = None, user: str | None = None) -> dict[str, Any]:
        """Totals per user, project and model, and what the project (if given) has spent."""
        query = select(UsageRow)
        if project is not None:
            query = query.where(UsageRow.project == project)
        if user is not None:
            query = query.where(UsageRow.user == user)
        from contextlab.copilot.llm import summarise

        with Session(self.store.engine) as session:
            rows = [{c.name: getattr(r, c.name) for c in UsageRow.__table__.columns} for r in session.scalars(query)]
            spent = (
                session.scalar(select(func.coalesce(func.sum(UsageRow.cost), 0.0)).where(UsageRow.project == project))
                if project is not None
                else None
            )
        return {"summary": summarise(rows), "spent": spent}

    def suggestion_user(self, suggestion_id: str) -> str | None:
        """Who asked for a suggestion (None when it is not recorded)."""
        with Session(self.store.engine) as session:
            row = session.get(SuggestionRow, suggestion_id)
            return row.user if row is not None else None

    def feedback(self, suggestion_id: str) -> list[dict[str, Any]]:
        with Session(self.store.engine) as session:
            rows = session.scalars(select(FeedbackRow).where(FeedbackRow.suggestion_id == suggestion_id))
            return [{c.name: getattr(r, c.name) for c in FeedbackRow.__table__.columns} for r in rows]


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise RecordError("The body must be a JSON object.", 400)
    return body


def _string(data: dict[str, Any], name: str, *, required: bool = False) -> str | None:
    value = data.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise RecordError(f'"{name}" must be a {"non-empty " if required else ""}string.')
    if len(value) > MAX_TEXT:
        raise RecordError(f'"{name}" is longer than {MAX_TEXT} characters.', 413)
    return value


def _count(record: dict[str, Any], name: str) -> int:
    value = record.get(name, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a whole number of tokens")
    return value


def _timestamp(value: Any) -> datetime:
    if value is None:
        return datetime.now(UTC)
    stamp = datetime.fromisoformat(str(value))
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
