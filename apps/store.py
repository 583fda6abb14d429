"""Apps in the state store: every save is an immutable version; saves are compare-and-swap on the version the
editor started from, so a concurrent edit gets `AppConflict` (with the diff) instead of overwriting."""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from contextlab.apps import dsl
from contextlab.apps.db import catalog
from contextlab.state.models import AppRow, AppVersionRow
from contextlab.state.store import StateStore

log = logging.getLogger(__name__)


class AppError(ValueError):
    """A request about apps that cannot be done as asked."""


class AppNotFound(AppError, LookupError):
    """No app (or no such version of it)."""


class AppExists(AppError):
    """`create` of a name that is taken."""


class AppConflict(AppError):
    """A save based on a version that is no longer current. Nothing was written; `diff` shows how the current
    version differs from the one the caller tried to save, and `attempted` holds their document."""

    def __init__(self, name: str, base: int | None, current: int, diff: str, attempted: Mapping[str, Any]) -> None:
        self.name, self.base, self.current, self.diff, self.attempted = name, base, current, diff, dict(attempted)
        super().__init__(
            f"app {name!r} changed since version {base}: the current version is {current}. Nothing was saved. "
            "Merge your edit into the current version (the diff shows both) and save with "
            f"base_version={current}."
        )


@dataclass(frozen=True)
class AppVersion:
    """One saved version."""

    app: str
    version: int
    dsl: dict[str, Any]
    sha256: str
    author: str
    message: str
    parent_version: int | None
    created_at: datetime

    def summary(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "version": self.version,
            "sha256": self.sha256,
            "author": self.author,
            "message": self.message,
            "parent_version": self.parent_version,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class AppInfo:
    """An app's header: names and which version is current and which published."""

    name: str
    title: str
    current_version: int
    published_version: int | None
    created_by: str
    updated_at: datetime
    published_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "current_version": self.current_version,
            "published_version": self.published_version,
            "created_by": self.created_by,
            "updated_at": self.updated_at.isoformat(),
            "published_at": self.published_at.isoformat() if self.published_at else None,
        }


def digest(doc: Mapping[str, Any]) -> str:
    """A stable hash of a document's content (its own `app.version` left out)."""
    body = json.loads(json.dumps(doc))
    body.get("app", {}).pop("version", None)
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def diff(old: Mapping[str, Any], new: Mapping[str, Any], old_label: str = "current", new_label: str = "yours") -> str:
    """A unified diff of two documents as YAML."""
    a = dsl.to_yaml(_unversioned(old)).splitlines(keepends=True)
    b = dsl.to_yaml(_unversioned(new)).splitlines(keepends=True)
    return "".join(difflib.unified_diff(a, b, old_label, new_label))


def _unversioned(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(doc))
    out.get("app", {}).pop("version", None)
    return out


class AppStore:
    """Create, save, version, roll back and publish apps. `data_dir` holds the apps' DuckDB files (the
    catalog used to validate queries); `publish` receives `page.updated` and `app.published` events."""

    def __init__(
        self,
        state: StateStore,
        data_dir: str | Path,
        publish: Callable[[str, dict[str, Any]], Any] | None = None,
    ) -> None:
        self.state = state
        self.data_dir = Path(data_dir)
        self.publish = publish

    # reading -----------------------------------------------------------------

    def list(self) -> list[AppInfo]:
        with Session(self.state.engine) as session:
            rows = session.scalars(select(AppRow).order_by(AppRow.name)).all()
            return [_info(r) for r in rows]

    def info(self, name: str) -> AppInfo:
        with Session(self.state.engine) as session:
            row = session.get(AppRow, name)
            if row is None:
                raise AppNotFound(f"no app named {name!r}; `contextlab apps list` shows the apps")
            return _info(row)

    def get(self, name: str, version: int | None = None) -> AppVersion:
        """A version of an app (default: the current one); its document carries `app.version`."""
        with Session(self.state.engine) as session:
            app = session.get(AppRow, name)
            if app is None:
                raise AppNotFound(f"no app named {name!r}; `contextlab apps list` shows the apps")
            wanted = app.current_version if version is None else version
            row = session.get(AppVersionRow, (name, wanted))
            if row is None:
                raise AppNotFound(f"app {name!r} has no version {wanted} (versions 1–{app.current_version})")
            return _version(row)

    def published(self, name: str) -> AppVersion:
        info = self.info(name)
        if info.published_version is None:
            raise AppNotFound(f"app {name!r} is not published; publish it with `contextlab apps publish {name}`")
        return self.get(name, info.published_version)

    def versions(self, name: str) -> list[AppVersion]:
        self.info(name)
        with Session(self.state.engine) as session:
            rows = session.scalars(
                select(AppVersionRow).where(AppVersionRow.app == name).order_by(AppVersionRow.version.desc())
            ).all()
            return [_version(r) for r in rows]

    # writing -----------------------------------------------------------------

    def validate(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """`doc` checked against the schema and the app's existing databases; raises `DSLValidationError`."""
        return dsl.check(doc, catalog=catalog(self.data_dir, doc))

    def create(self, doc: Mapping[str, Any], author: str, message: str = "created") -> AppVersion:
        doc = self.validate(doc)
        name = doc["app"]["name"]
        now = datetime.now(UTC)
        with Session(self.state.engine) as session, session.begin():
            if session.get(AppRow, name) is not None:
                raise AppExists(f"an app named {name!r} exists; save a new version of it, or pick another name")
            session.add(
                AppRow(
                    name=name,
                    title=doc["app"].get("title") or name,
                    current_version=1,
                    created_by=author,
                    created_at=now,
                    updated_at=now,
                )
            )
            session.flush()
            row = self._add_version(session, name, 1, doc, author, message, None, now)
        saved = _version(row)
        self._emit("page.updated", saved, created=True)
        return saved

    def save(
        self,
        name: str,
        doc: Mapping[str, Any],
        author: str,
        base_version: int | None,
        message: str = "",
    ) -> AppVersion:
        """Save `doc` as the next version if `base_version` is still current; else `AppConflict`. Saving the
        same content as the current version writes nothing and returns the current version."""
        doc = self.validate(doc)
        if doc["app"]["name"] != name:
            raise AppError(f"the document is app {doc['app']['name']!r}, not {name!r}; rename with a new app")
        current = self.get(name)
        if base_version is None:
            raise AppError(
                f"say which version your edit starts from (base_version); the current one is {current.version}"
            )
        if base_version != current.version:
            try:
                base_doc = self.get(name, base_version).dsl
            except AppNotFound:
                base_doc = {}
            text = diff(current.dsl, doc, f"current (v{current.version})", "yours")
            if base_doc:
                text = diff(base_doc, current.dsl, f"v{base_version}", f"v{current.version}") + text
            raise AppConflict(name, base_version, current.version, text, doc)
        if digest(doc) == current.sha256:
            return current
        now = datetime.now(UTC)
        with Session(self.state.engine) as session, session.begin():
            changed = session.execute(
                update(AppRow)
                .where(AppRow.name == name, AppRow.current_version == base_version)
                .values(
                    current_version=base_version + 1,
                    updated_at=now,
                    title=doc["app"].get("title") or name,
                )
            ).rowcount
            if changed != 1:  # lost a race with another writer between our read and this update
                latest = self.get(name)
                raise AppConflict(name, base_version, latest.version, diff(latest.dsl, doc), doc)
            row = self._add_version(session, name, base_version + 1, doc, author, message, base_version, now)
        saved = _version(row)
        self._emit("page.updated", saved)
        return saved

    def rollback(self, name: str, version: int, author: str, base_version: int | None = None) -> AppVersion:
        """A new version whose content is that of `version` (history is never rewritten)."""
        old = self.get(name, version)
        current = self.get(name)
        return self.save(
            name,
            old.dsl,
            author,
            current.version if base_version is None else base_version,
            message=f"rollback to version {version}",
        )

    def publish_app(self, name: str, version: int | None = None, author: str = "") -> AppVersion:
        """Serve `version` (default: current) at the app's published URL."""
        target = self.get(name, version)
        now = datetime.now(UTC)
        with Session(self.state.engine) as session, session.begin():
            row = session.get(AppRow, name)
            row.published_version = target.version
            row.published_at = now
        if self.publish is not None:
            self._send("app.published", {"app": name, "version": target.version, "by": author})
        return target

    def unpublish(self, name: str) -> None:
        self.info(name)
        with Session(self.state.engine) as session, session.begin():
            row = session.get(AppRow, name)
            row.published_version = None
            row.published_at = None

    def delete(self, name: str) -> None:
        self.info(name)
        with Session(self.state.engine) as session, session.begin():
            for row in session.scalars(select(AppVersionRow).where(AppVersionRow.app == name)):
                session.delete(row)
            session.delete(session.get(AppRow, name))

    def import_check(self, text: str) -> dict[str, Any]:
        """A YAML/JSON export parsed, version-checked and validated (issues carry YAML lines)."""
        doc, document = dsl.parse(text)
        doc = dsl.upgrade(doc)
        issues = dsl.validate(doc, catalog=catalog(self.data_dir, doc), document=document)
        if issues:
            raise dsl.DSLValidationError(issues)
        return doc

    def import_text(self, text: str, author: str, message: str = "imported") -> AppVersion:
        """Import a YAML/JSON export: checks the PageDSL version, then creates the app or saves a new
        version on top of the current one (the document only; `service` also migrates the data)."""
        doc = self.import_check(text)
        name = doc["app"]["name"]
        try:
            current = self.get(name)
        except AppNotFound:
            return self.create(doc, author, message)
        return self.save(name, doc, author, current.version, message)

    def export_text(self, name: str, version: int | None = None) -> str:
        return dsl.to_yaml(self.get(name, version).dsl)

    # internals -----------------------------------------------------------------

    def _add_version(
        self,
        session: Session,
        name: str,
        version: int,
        doc: Mapping[str, Any],
        author: str,
        message: str,
        parent: int | None,
        now: datetime,
    ) -> AppVersionRow:
        body = json.loads(json.dumps(doc))
        body["app"]["version"] = version
        row = AppVersionRow(
            app=name,
            version=version,
            dsl=body,
            sha256=digest(body),
            author=author,
            message=message,
            parent_version=parent,
            created_at=now,
        )
        session.add(row)
        session.flush()
        session.expunge(row)
        return row

    def _emit(self, topic: str, saved: AppVersion, created: bool = False) -> None:
        self._send(
            topic,
            {
                "app": saved.app,
                "version": saved.version,
                "author": saved.author,
                "message": saved.message,
                "sha256": saved.sha256,
                "created": created,
            },
        )

    def _send(self, topic: str, payload: dict[str, Any]) -> None:
        if self.publish is None:
            return
        try:
            self.publish(topic, payload)
        except Exception:  # an event bus problem must not undo a save
            log.exception("could not publish %s for app %s", topic, payload.get("app"))


def _info(row: AppRow) -> AppInfo:
    return AppInfo(
        name=row.name,
        title=row.title,
        current_version=row.current_version,
        published_version=row.published_version,
        created_by=row.created_by,
        updated_at=row.updated_at,
        published_at=row.published_at,
    )


def _version(row: AppVersionRow) -> AppVersion:
    return AppVersion(
        app=row.app,
        version=row.version,
        dsl=row.dsl,
        sha256=row.sha256,
        author=row.author,
        message=row.message,
        parent_version=row.parent_version,
        created_at=row.created_at,
    )
