"""The control-plane store: SQLAlchemy models with alembic migrations (SQLite by default)."""

from contextlab.state.store import AuditEntry, AuditWriter, StateStore, sqlite_url_for_workspace

__all__ = ["AuditEntry", "AuditWriter", "StateStore", "sqlite_url_for_workspace"]
