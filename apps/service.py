"""What the CLI, the REST API and the builder share: saving an app together with its data model.

A save first plans the model's migration on the app's DuckDB files. A destructive step (dropping a column or
table, narrowing a type) refuses the whole save unless confirmed, so a document and its database never
disagree; when confirmed, the data is backed up before the migration runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from contextlab.apps import db
from contextlab.apps.dsl import DEFAULT_SOURCE
from contextlab.apps.store import AppNotFound, AppStore, AppVersion


def model_by_source(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The `data.tables` of a document split by source: source → {"tables": {...}}."""
    out: dict[str, dict[str, Any]] = {}
    for name, table in ((doc.get("data") or {}).get("tables") or {}).items():
        out.setdefault(table.get("source", DEFAULT_SOURCE), {"tables": {}})["tables"][name] = table
    return out


def owned_tables(store: AppStore, name: str, source: str) -> set[str]:
    """Tables any saved version of the app modelled in `source` (the ones a later version may drop)."""
    try:
        versions = store.versions(name)
    except AppNotFound:
        return set()
    out: set[str] = set()
    for version in versions:
        out |= set(model_by_source(version.dsl).get(source, {}).get("tables", {}))
    return out


def _plans(store: AppStore, name: str, doc: Mapping[str, Any], env: str | None = None) -> list[tuple[str, Path, Any]]:
    from contextlab.apps import er

    plans = []
    for source, data in model_by_source(doc).items():
        path = db.source_path(store.data_dir, doc, source, env)
        with db.connect(path) as con:
            plan = er.plan_migration(con, data, owned_tables=owned_tables(store, name, source) or None, source=source)
        plans.append((source, path, plan))
    return plans


def _describe(plan: Any) -> list[dict[str, Any]]:
    return [
        {
            "kind": s.kind,
            "table": s.table,
            "column": s.column,
            "sql": s.sql,
            "destructive": s.destructive,
            "reason": s.reason,
        }
        for s in plan.steps
    ]


def plan_model(store: AppStore, name: str, doc: Mapping[str, Any] | None = None, env: str | None = None) -> dict:
    """The migration a save of `doc` (default: the current version) would run, per source."""
    doc = doc if doc is not None else store.get(name).dsl
    return {
        source: {"path": str(path), "steps": _describe(plan), "errors": list(plan.errors)}
        for source, path, plan in _plans(store, name, doc, env)
    }


def apply_model(
    store: AppStore, name: str, doc: Mapping[str, Any] | None = None, *, confirm: bool = False, env: str | None = None
) -> dict[str, Any]:
    """Bring the app's databases to the model of `doc` (default: the current version)."""
    from contextlab.apps import er

    doc = doc if doc is not None else store.get(name).dsl
    out: dict[str, Any] = {}
    for source, data in model_by_source(doc).items():
        path = db.source_path(store.data_dir, doc, source, env)
        result = er.apply_migration(
            path, data, confirm=confirm, owned_tables=owned_tables(store, name, source) or None, source=source
        )
        out[source] = {
            "path": str(path),
            "applied": _describe(result),
            "backup": str(result.backup_path) if result.backup_path else None,
        }
    return out


def check_destructive(store: AppStore, name: str, doc: Mapping[str, Any], confirm: bool) -> None:
    """Refuse (nothing saved) a model the database cannot take, or one that would lose data unless `confirm`.

    Raises `er.MigrationError` for refused changes and `er.DestructiveChangeError` for unconfirmed data loss.
    """
    from contextlab.apps import er

    plans = _plans(store, name, doc)
    errors = [f"{source}: {e}" for source, _path, plan in plans for e in plan.errors]
    if errors:
        raise er.MigrationError("the data model cannot be applied, nothing was saved:\n" + "\n".join(errors))
    risky = [s for _source, _path, plan in plans for s in plan.destructive]
    if risky and not confirm:
        raise er.DestructiveChangeError(risky)


def create_app(store: AppStore, doc: Mapping[str, Any], author: str, message: str = "created") -> AppVersion:
    """Create an app and its tables."""
    checked = store.validate(doc)
    check_destructive(store, checked["app"]["name"], checked, confirm=False)
    saved = store.create(checked, author, message)
    apply_model(store, saved.app, saved.dsl)
    return saved


def save_app(
    store: AppStore,
    name: str,
    doc: Mapping[str, Any],
    author: str,
    base_version: int | None,
    message: str = "",
    *,
    confirm: bool = False,
) -> AppVersion:
    """Save a new version and migrate its data model (destructive steps only with `confirm`)."""
    checked = store.validate(doc)
    check_destructive(store, name, checked, confirm)
    saved = store.save(name, checked, author, base_version, message)
    apply_model(store, name, saved.dsl, confirm=confirm)
    return saved


def er_diagram(doc: Mapping[str, Any]) -> str:
    """The app's data model as a Mermaid `erDiagram`."""
    from contextlab.apps import er

    return er.mermaid(doc.get("data") or {"tables": {}})


def load_flow(store: AppStore, doc: Mapping[str, Any], flow: str) -> Any:
    """The `FlowDefinition` of one of the app's flows (its BPMN file lives in the apps folder)."""
    from contextlab.apps.flows import FlowDefinition, FlowError

    spec = (doc.get("flows") or {}).get(flow)
    if spec is None:
        raise FlowError(f"app {doc['app']['name']!r} has no flow {flow!r}")
    base = store.data_dir.resolve()
    path = (base / spec["file"]).resolve()
    if not path.is_relative_to(base):
        raise FlowError(f"flow {flow!r}: {spec['file']!r} leaves the apps folder")
    if not path.exists():
        raise FlowError(f"flow {flow!r}: {spec['file']!r} does not exist in {base}")
    return FlowDefinition.from_xml(
        path.read_text(encoding="utf-8"),
        process_id=spec.get("process"),
        name=flow,
        roles=spec.get("roles"),
        forms=spec.get("forms"),
        services=spec.get("services"),
    )
