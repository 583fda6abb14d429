"""The data side of an app: its DuckDB files, parameterised queries, and form rows checked against the model.

Values always travel as DuckDB parameters (`$name`); identifiers come from a validated document, whose
schema allows only `[A-Za-z_][A-Za-z0-9_]*` names, and are quoted besides.
"""

from __future__ import annotations

import datetime as dt
import decimal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from contextlab.apps.dsl import DEFAULT_SOURCE, PARAM_RE, _strip_strings

LOCK_WAIT = 10.0  # seconds to wait for another process to let go of a DuckDB file
IDLE_CLOSE = 1.0  # seconds an unused connection stays open (a page render runs several queries)


class AppDataError(ValueError):
    """A query or write that cannot run as asked; the message says why and what to change."""


class FormErrors(AppDataError):
    """Submitted values that break the model's constraints; `errors` maps field → message. Nothing written."""

    def __init__(self, errors: Mapping[str, str]) -> None:
        self.errors = dict(errors)
        super().__init__("; ".join(f"{k}: {v}" if k != "_form" else v for k, v in self.errors.items()))


def source_path(
    data_dir: str | Path, doc: Mapping[str, Any], source: str = DEFAULT_SOURCE, env: str | None = None
) -> Path:
    """The DuckDB file of `source`, inside `data_dir` (an environment may point it elsewhere inside too).

    An app without sources keeps its data in `<data_dir>/<app name>.duckdb`."""
    base = Path(data_dir).resolve()
    sources = (doc.get("data") or {}).get("sources") or {}
    spec = sources.get(source)
    if env is not None:
        environments = doc.get("environments") or {}
        if env not in environments:
            raise AppDataError(f"the app has no environment {env!r}")
        spec = ((environments[env] or {}).get("sources") or {}).get(source) or spec
    if spec is None:
        if sources:
            raise AppDataError(f"the app has no data source {source!r}; its sources: {', '.join(sorted(sources))}")
        spec = {"type": "duckdb", "path": f"{doc['app']['name']}.duckdb"}
    path = (base / spec["path"]).resolve()
    if not path.is_relative_to(base):
        raise AppDataError(f"source {source!r} path {spec['path']!r} leaves the apps data folder {base}")
    return path


@dataclass
class _Pooled:
    con: duckdb.DuckDBPyConnection
    users: int = 0
    last_used: float = field(default_factory=time.monotonic)


_POOL: dict[Path, _Pooled] = {}
_LOCK = threading.Lock()
_reaper: threading.Thread | None = None


def _open(key: Path, wait: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + wait
    while True:
        try:
            return duckdb.connect(str(key))
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise AppDataError(f"cannot open {key.name}: {str(exc).splitlines()[0]}") from None
            if time.monotonic() >= deadline:
                raise AppDataError(
                    f"{key.name} is in use by another process ({str(exc).splitlines()[0]}); try again, "
                    "or stop the process that keeps it open"
                ) from None
            time.sleep(0.05)


def _reap() -> None:
    while True:
        time.sleep(IDLE_CLOSE / 2)
        close_idle(IDLE_CLOSE)


def close_idle(idle: float = 0.0) -> None:
    """Close pooled connections unused for `idle` seconds (0: every unused one)."""
    now = time.monotonic()
    with _LOCK:
        for key, entry in list(_POOL.items()):
            if entry.users == 0 and now - entry.last_used >= idle:
                entry.con.close()
                del _POOL[key]


@contextmanager
def connect(path: str | Path, *, wait: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A cursor on `path`, for one operation.

    DuckDB lets one process at a time open a file for writing, and the apps server, the Jupyter server
    (REST saves, migrations, MCP tools) and the CLI all use the apps' files. So no process keeps a file:
    a connection is shared by the operations of a burst (a page render) and closed once unused for
    `IDLE_CLOSE` seconds. Opening waits up to `wait` (default `LOCK_WAIT`) seconds for another process to
    let go, then raises `AppDataError`.
    """
    global _reaper
    key = Path(path).resolve()
    key.parent.mkdir(parents=True, exist_ok=True)
    with _LOCK:
        entry = _POOL.get(key)
        if entry is None:
            entry = _POOL[key] = _Pooled(_open(key, LOCK_WAIT if wait is None else wait))
        entry.users += 1
        if _reaper is None:
            _reaper = threading.Thread(target=_reap, name="contextlab-apps-db-reaper", daemon=True)
            _reaper.start()
    try:
        cursor = entry.con.cursor()
    except BaseException:
        with _LOCK:
            entry.users -= 1
        raise
    try:
        yield cursor
    finally:
        cursor.close()
        with _LOCK:
            entry.users -= 1
            entry.last_used = time.monotonic()


def catalog(data_dir: str | Path, doc: Mapping[str, Any]) -> dict[str, dict[str, list[str]]]:
    """source → table → columns, for the app's DuckDB files that exist already (none are created)."""
    out: dict[str, dict[str, list[str]]] = {}
    if not isinstance(doc.get("app"), Mapping) or "name" not in doc["app"]:
        return out
    sources = list(((doc.get("data") or {}).get("sources") or {}) or [DEFAULT_SOURCE])
    for source in sources:
        try:
            path = source_path(data_dir, doc, source)
        except AppDataError:
            continue
        if not path.exists():
            continue
        with connect(path) as cur:
            rows = cur.execute(
                "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'main' "
                "ORDER BY table_name, ordinal_position"
            ).fetchall()
        tables: dict[str, list[str]] = {}
        for table, column in rows:
            tables.setdefault(table, []).append(column)
        out[source] = tables
    return out


# --------------------------------------------------------------------------- values


def coerce(value: Any, kind: str, name: str) -> Any:
    """`value` (often a string from a widget or URL) as a Python value of the PageDSL type `kind`."""
    if value is None or (isinstance(value, str) and value.strip() == "" and kind != "varchar"):
        return None
    try:
        if kind in ("integer", "bigint"):
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(str(value).strip()) if not isinstance(value, int | float) else int(value)
        if kind == "double":
            return float(value)
        if kind == "decimal":
            return decimal.Decimal(str(value).strip())
        if kind == "boolean":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if kind == "date":
            return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value).strip())
        if kind == "timestamp":
            return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value).strip())
        return str(value)
    except (ValueError, ArithmeticError, TypeError):
        raise AppDataError(f"{name}: {value!r} is not a valid {kind}") from None


def check_row(
    fields: Mapping[str, Mapping[str, Any]], values: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Values coerced to their field types, and an error per field that breaks a constraint."""
    row: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name in values:
        if name not in fields:
            errors[name] = f"the table has no field {name!r}"
    for name, spec in fields.items():
        label = spec.get("label") or name
        if spec.get("generated"):
            if values.get(name) not in (None, ""):
                errors[name] = f"{label} is filled in automatically"
            continue
        raw = values.get(name)
        try:
            value = coerce(raw, spec["type"], label)
        except AppDataError as exc:
            errors[name] = str(exc).split(": ", 1)[1]
            continue
        if isinstance(value, str) and spec["type"] != "text" and value.strip() == "" and "enum" in spec:
            value = None
        if value is None:
            if spec.get("required") and spec.get("default") is None:
                errors[name] = f"{label} is required"
            continue
        if "enum" in spec and value not in spec["enum"]:
            errors[name] = f"{label} must be one of: {', '.join(map(str, spec['enum']))}"
        elif "min" in spec and isinstance(value, int | float | decimal.Decimal) and value < spec["min"]:
            errors[name] = f"{label} must be at least {spec['min']}"
        elif "max" in spec and isinstance(value, int | float | decimal.Decimal) and value > spec["max"]:
            errors[name] = f"{label} must be at most {spec['max']}"
        elif "max_length" in spec and isinstance(value, str) and len(value) > spec["max_length"]:
            errors[name] = f"{label} must be at most {spec['max_length']} characters"
        elif spec["type"] == "decimal" and isinstance(value, decimal.Decimal):
            scale = spec.get("scale", 3)
            if -value.as_tuple().exponent > scale:
                errors[name] = f"{label} takes at most {scale} decimal places"
        row[name] = value
    return row, errors


def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def insert_row(
    path: Path, table: str, fields: Mapping[str, Mapping[str, Any]], values: Mapping[str, Any]
) -> dict[str, Any]:
    """Insert one row after checking it against the model; `FormErrors` (nothing written) on any problem,
    including a constraint the database itself enforces (keys, references)."""
    row, errors = check_row(fields, values)
    if errors:
        raise FormErrors(errors)
    columns = list(row)
    if columns:
        sql = (
            f"INSERT INTO {_q(table)} ({', '.join(map(_q, columns))}) "
            f"VALUES ({', '.join('$p' + str(i) for i in range(len(columns)))}) RETURNING *"
        )
        params = {f"p{i}": row[c] for i, c in enumerate(columns)}
    else:
        sql, params = f"INSERT INTO {_q(table)} DEFAULT VALUES RETURNING *", {}
    with connect(path) as cur:
        try:
            cur.execute("BEGIN")
            result = cur.execute(sql, params)
            names = [d[0] for d in result.description]
            inserted = dict(zip(names, result.fetchone(), strict=True))
            cur.execute("COMMIT")
        except duckdb.Error as exc:
            cur.execute("ROLLBACK")
            raise FormErrors({"_form": _constraint_message(str(exc))}) from None
    return inserted


def _constraint_message(text: str) -> str:
    first = text.splitlines()[0]
    if "foreign key" in first.lower():
        return "a referenced record does not exist: " + first.split(": ", 1)[-1]
    if "duplicate key" in first.lower() or "unique" in first.lower():
        return "a record with the same key exists: " + first.split(": ", 1)[-1]
    return first


def query_params(query: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters the query's SQL uses, from `values` or their defaults, coerced to declared types."""
    declared = query.get("params") or {}
    used = set(PARAM_RE.findall(_strip_strings(query["sql"])))
    out: dict[str, Any] = {}
    for name in sorted(used):
        spec = declared.get(name) or {}
        raw = values.get(name, spec.get("default"))
        value = coerce(raw, spec.get("type", "varchar"), name)
        if value is None and spec.get("required"):
            raise AppDataError(f"parameter {name!r} is required")
        out[name] = value
    return out


def run_query(path: Path, query: Mapping[str, Any], values: Mapping[str, Any] | None = None) -> Any:
    """A read query's result as a pandas DataFrame, or a write query's affected row count."""
    params = query_params(query, values or {})
    with connect(path) as cur:
        try:
            if query.get("kind", "read") == "read":
                return cur.execute(query["sql"], params).df()
            cur.execute("BEGIN")
            result = cur.execute(query["sql"], params).fetchall()
            cur.execute("COMMIT")
            return result[0][0] if result and len(result[0]) == 1 else len(result)
        except duckdb.Error as exc:
            if query.get("kind", "read") == "write":
                try:
                    cur.execute("ROLLBACK")
                except duckdb.Error:
                    pass
            raise AppDataError(f"the query failed: {str(exc).splitlines()[0]}") from None
