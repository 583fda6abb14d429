"""Access to the control-plane store, and a batching writer for the audit log."""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, func, insert, select
from sqlalchemy.orm import Session

from contextlab.state.models import AuditRecord, ProviderManifestRow

log = logging.getLogger(__name__)


def sqlite_url_for_workspace(state_dir: str | Path) -> str:
    """The default store URL: `<state_dir>/state.db` on SQLite."""
    path = Path(state_dir)
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / 'state.db'}"


@dataclass(frozen=True)
class AuditEntry:
    """What the endpoint records for one MCP request."""

    principal: str
    method: str
    latency_ms: float
    outcome: str
    target: str | None = None
    args_sha256: str | None = None
    client: str | None = None
    session_id: str | None = None
    protocol_version: str | None = None
    error_code: int | None = None
    error: str | None = None
    decision: str | None = None
    redactions: int = 0
    redaction_kinds: dict[str, int] | None = None
    upstream: str | None = None
    prompt_version: int | None = None
    prompt_label: str | None = None
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))


class StateStore:
    """The control-plane database. SQLite by default; any SQLAlchemy URL works (PostgreSQL at scale)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, future=True)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _tune_sqlite)

    def migrate(self) -> None:
        """Bring the schema to the newest alembic revision."""
        ini = resources.files("contextlab.state") / "alembic.ini"
        config = Config(str(ini))
        with self.engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def save_manifests(self, manifests: list[dict[str, Any]]) -> None:
        """Record each provider's manifest (insert or replace by name)."""
        now = datetime.now(UTC)
        with Session(self.engine) as session, session.begin():
            for manifest in manifests:
                session.merge(
                    ProviderManifestRow(
                        name=manifest["name"],
                        version=manifest["version"],
                        description=manifest.get("description", ""),
                        manifest=manifest,
                        updated_at=now,
                    )
                )

    def manifests(self) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            rows = session.scalars(select(ProviderManifestRow).order_by(ProviderManifestRow.name))
            return [row.manifest for row in rows]

    def write_audit(self, entries: list[AuditEntry]) -> None:
        # Core executemany: a batch costs one statement, not one ORM object per row.
        with self.engine.begin() as connection:
            connection.execute(insert(AuditRecord), [asdict(entry) for entry in entries])

    def audit(
        self,
        *,
        target: str | None = None,
        method: str | None = None,
        outcome: str | None = None,
        principal: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[dict]:
        """The newest audit rows first, filtered by tool (`target`), MCP method, outcome, principal or age."""
        query = select(AuditRecord).order_by(AuditRecord.id.desc()).limit(limit)
        for column, value in (
            (AuditRecord.target, target),
            (AuditRecord.method, method),
            (AuditRecord.outcome, outcome),
            (AuditRecord.principal, principal),
        ):
            if value is not None:
                query = query.where(column == value)
        if since is not None:
            query = query.where(AuditRecord.ts >= since)
        with Session(self.engine) as session:
            return [_row_dict(row) for row in session.scalars(query)]

    def audit_count(self) -> int:
        with Session(self.engine) as session:
            return session.scalar(select(func.count()).select_from(AuditRecord)) or 0

    def close(self) -> None:
        self.engine.dispose()


def _row_dict(row: AuditRecord) -> dict[str, Any]:
    return {column.name: getattr(row, column.name) for column in AuditRecord.__table__.columns}


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (the CLI, tests) look while the server writes; NORMAL sync is safe with WAL.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


class AuditWriter:
    """Writes audit entries from a background thread, in batches, so a call never waits on the disk.

    `record` appends to a deque (no lock, no thread wake-up on the request path); the writer thread
    drains it every `interval` seconds. `flush` blocks until everything recorded so far is
    committed; `close` flushes and stops the thread.
    """

    def __init__(self, store: StateStore, *, batch_size: int = 500, interval: float = 0.05) -> None:
        self._store = store
        self._batch_size = batch_size
        self._interval = interval
        self._pending: deque[AuditEntry] = deque()
        self._wake = threading.Event()
        self._flushed = threading.Condition()
        self._written = 0
        self._recorded = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="contextlab-audit", daemon=True)
        self._thread.start()

    def record(self, entry: AuditEntry) -> None:
        self._pending.append(entry)
        self._recorded += 1

    def flush(self, timeout: float = 10.0) -> bool:
        target = self._recorded
        self._wake.set()
        with self._flushed:
            return self._flushed.wait_for(lambda: self._written >= target, timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self._stopping = True
            self._wake.set()
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            stopping = self._stopping
            while self._pending:
                batch = [self._pending.popleft() for _ in range(min(self._batch_size, len(self._pending)))]
                try:
                    self._store.write_audit(batch)
                except Exception:
                    log.exception("could not write %d audit rows", len(batch))
                with self._flushed:
                    self._written += len(batch)
                    self._flushed.notify_all()
            if stopping:
                return
