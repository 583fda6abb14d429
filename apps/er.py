"""ER models for PageDSL apps: DuckDB DDL, safe migrations of a live file, and Mermaid diagrams.

The model is the `data` section of a PageDSL document: `tables: {name: {source, description, fields: {...}}}`.
Migrations compare the model with the live database by creating the model in an in-memory DuckDB and reading
both catalogs the same way, so DuckDB itself normalises types, defaults and CHECK expressions.

What DuckDB 2.0 refuses, as tried: ALTER TYPE of a column with a CHECK, UNIQUE, PRIMARY KEY or FOREIGN KEY;
ADD COLUMN with a CHECK or FOREIGN KEY; DROP COLUMN when an index sits on a later column; almost any ALTER (and
any second one) on a table that a foreign key references; DROP TABLE of a referenced table (and RENAME silently
leaves the foreign key dangling). Such changes rebuild the table instead: its rows are copied to a temp table, it
and every table referencing it are dropped, recreated from the model and refilled (self-references level by
level), all inside the one transaction that `apply_migration` runs. Renamed fields look like drop + add.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import duckdb

DEFAULT_SOURCE = "main"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FIELD_KEYS = {
    "type",
    "key",
    "generated",
    "required",
    "unique",
    "default",
    "enum",
    "min",
    "max",
    "max_length",
    "precision",
    "scale",
    "references",
    "label",
    "description",
}
_SIMPLE_TYPES = {
    "integer": "INTEGER",
    "bigint": "BIGINT",
    "double": "DOUBLE",
    "text": "VARCHAR",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "timestamp": "TIMESTAMP",
}
FIELD_TYPES = frozenset({*_SIMPLE_TYPES, "decimal", "varchar"})
_STASH_PREFIX = "__er_old_"
_NEXTVAL_RE = re.compile(r"^nextval\('([^']+)'\)$")
_INTEGER_BITS = {"TINYINT": 8, "SMALLINT": 16, "INTEGER": 32, "BIGINT": 64, "HUGEINT": 128}
_LENGTH_CHECK_RE = re.compile(r'^\(length\("?(?P<col>[A-Za-z_][A-Za-z0-9_]*)"?\) <= (?P<n>\d+)\)$')


class ERModelError(ValueError):
    """The data model is invalid or cannot be mapped onto DuckDB; the message names the table/field."""


class DestructiveChangeError(ERModelError):
    """A migration would lose data and was not confirmed; `steps` lists the destructive steps. Nothing changed."""

    def __init__(self, steps: Iterable[MigrationStep]) -> None:
        self.steps = list(steps)
        lines = "\n".join(f"  - {s.kind} {s.target}: {s.reason}" for s in self.steps)
        super().__init__(
            f"The migration has {len(self.steps)} destructive step(s) and was not applied:\n{lines}\n"
            "Review them, then pass confirm=True (CLI: --confirm) to apply; a backup is taken first."
        )


class MigrationError(ERModelError):
    """A migration was refused or failed; when a statement failed, `statement` holds it and nothing changed."""

    def __init__(self, message: str, statement: str | None = None) -> None:
        self.statement = statement
        super().__init__(message)


@dataclass(frozen=True)
class ColumnInfo:
    """One live column as DuckDB reports it (type, nullability, default and constraints)."""

    name: str
    type: str
    nullable: bool = True
    default: str | None = None
    primary_key: bool = False
    unique: bool = False
    references: str | None = None  # "table.column"
    checks: tuple[str, ...] = ()
    comment: str | None = None


@dataclass(frozen=True)
class MigrationStep:
    """One change; `statements` is empty when the `stash_table`/`rebuild_table` steps of its table carry it out."""

    kind: str
    table: str
    column: str | None = None
    destructive: bool = False
    reason: str = ""
    statements: tuple[str, ...] = ()

    @property
    def sql(self) -> str:
        """The statements of this step, `;`-terminated, one a line ('' when done by a rebuild)."""
        return "\n".join(f"{s};" for s in self.statements)

    @property
    def target(self) -> str:
        """`table` or `table.column`."""
        return f"{self.table}.{self.column}" if self.column else self.table


@dataclass
class MigrationPlan:
    """Steps that turn the live database into the model; `errors` are changes refused outright.

    Steps without statements are carried out by the table's `stash_table`/`rebuild_table` steps.
    """

    steps: list[MigrationStep] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def destructive(self) -> list[MigrationStep]:
        """Steps that lose data (dropped tables/columns, narrowed types)."""
        return [s for s in self.steps if s.destructive]

    @property
    def statements(self) -> list[str]:
        """Every statement to run, in order."""
        return [stmt for s in self.steps for stmt in s.statements]

    @property
    def sql(self) -> str:
        """The whole migration as one SQL script."""
        return "\n".join(f"{s};" for s in self.statements)

    def __bool__(self) -> bool:
        return bool(self.steps or self.errors)


@dataclass
class MigrationResult:
    """What `apply_migration` did: the steps applied (empty when nothing to do) and the backup file, if any."""

    steps: list[MigrationStep]
    backup_path: Path | None = None


# --------------------------------------------------------------------------------------------- the model


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _fields(table: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(table.get("fields") or {})


def column_type(field: Mapping[str, Any]) -> str:
    """The DuckDB type of a field spec, e.g. `INTEGER`, `DECIMAL(12,2)`, `VARCHAR(80)`."""
    kind = field.get("type")
    if kind in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[kind]
    if kind == "decimal":
        precision, scale = int(field.get("precision", 18)), int(field.get("scale", 3))
        if not 1 <= precision <= 38 or not 0 <= scale <= precision:
            raise ERModelError("decimal precision/scale must satisfy 1 <= precision <= 38, 0 <= scale <= precision")
        return f"DECIMAL({precision},{scale})"
    if kind == "varchar":
        n = field.get("max_length")
        return f"VARCHAR({int(n)})" if n is not None else "VARCHAR"
    raise ERModelError(f"unknown field type {kind!r}; use one of {', '.join(sorted(FIELD_TYPES))}")


def _tables(data: Mapping[str, Any], source: str | None = None) -> dict[str, dict[str, Any]]:
    """The model's tables (of `source`, or all), validated, in dependency order (referenced tables first)."""
    all_tables = dict((data or {}).get("tables") or {})
    for tname, table in all_tables.items():
        _check_table(tname, table, all_tables)
    tables = {name: t for name, t in all_tables.items() if source is None or t.get("source", DEFAULT_SOURCE) == source}
    deps = {name: _deps(t) - {name} for name, t in tables.items()}
    ordered: list[str] = []
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name) :] + [name]
            raise ERModelError(f"foreign keys form a cycle: {' -> '.join(cycle)}; break it with a nullable link table")
        state[name] = 1
        for dep in sorted(deps[name]):
            visit(dep, [*path, name])
        state[name] = 2
        ordered.append(name)

    for name in tables:
        visit(name, [])
    return {name: tables[name] for name in ordered}


def _deps(table: Mapping[str, Any]) -> set[str]:
    return {spec["references"].split(".")[0] for spec in _fields(table).values() if spec.get("references")}


def _check_table(tname: str, table: Mapping[str, Any], tables: Mapping[str, Any]) -> None:
    if not _NAME_RE.match(str(tname)) or str(tname).startswith(_STASH_PREFIX):
        raise ERModelError(f"table {tname!r}: names must match [A-Za-z_][A-Za-z0-9_]* (and not start with __er_)")
    fields = _fields(table)
    if not fields:
        raise ERModelError(f"table {tname!r} has no fields")
    for fname, spec in fields.items():
        where = f"field {tname}.{fname}"
        if not _NAME_RE.match(str(fname)):
            raise ERModelError(f"{where}: names must match [A-Za-z_][A-Za-z0-9_]*")
        if not isinstance(spec, Mapping):
            raise ERModelError(f"{where}: expected a mapping of field keys")
        unknown = set(spec) - _FIELD_KEYS
        if unknown:
            raise ERModelError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        try:
            column_type(spec)
        except ERModelError as e:
            raise ERModelError(f"{where}: {e}") from None
        kind = spec["type"]
        if spec.get("generated") and (not spec.get("key") or kind not in ("integer", "bigint")):
            raise ERModelError(f"{where}: `generated` is for an integer key field (key: true, type: integer/bigint)")
        enum = spec.get("enum")
        if enum is not None and (not isinstance(enum, list) or not enum):
            raise ERModelError(f"{where}: `enum` must be a non-empty list")
        for bound in ("min", "max"):
            value = spec.get(bound)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise ERModelError(f"{where}: `{bound}` must be a number")
        if spec.get("max_length") is not None and (
            isinstance(spec["max_length"], bool) or not isinstance(spec["max_length"], int) or spec["max_length"] < 1
        ):
            raise ERModelError(f"{where}: `max_length` must be a positive integer")
        default = spec.get("default")
        if default == "now" and kind not in ("timestamp", "date"):
            raise ERModelError(f"{where}: default `now` is only for timestamp/date fields")
        if isinstance(default, list | dict):
            raise ERModelError(f"{where}: `default` must be a scalar")
        ref = spec.get("references")
        if ref is not None:
            _check_reference(where, tname, table, str(ref), tables)


def _check_reference(where: str, tname: str, table: Mapping[str, Any], ref: str, tables: Mapping[str, Any]) -> None:
    parts = ref.split(".")
    if len(parts) != 2 or not all(_NAME_RE.match(p) for p in parts):
        raise ERModelError(f"{where}: `references` must be 'table.field', got {ref!r}")
    rtable, rfield = parts
    if rtable not in tables:
        raise ERModelError(f"{where} references missing table {rtable!r} (tables: {', '.join(sorted(tables))})")
    target_fields = _fields(tables[rtable])
    if rfield not in target_fields:
        raise ERModelError(f"{where} references missing field {rtable}.{rfield}")
    if tables[rtable].get("source", DEFAULT_SOURCE) != table.get("source", DEFAULT_SOURCE):
        raise ERModelError(f"{where} references {ref}, which lives in another source")
    keys = [n for n, s in target_fields.items() if s.get("key")]
    if keys != [rfield] and not target_fields[rfield].get("unique"):
        raise ERModelError(f"{where} references {ref}, which is neither the sole key nor unique")


def _seq_name(table: str, fname: str) -> str:
    return f"{table}_{fname}_seq"


def _default_sql(spec: Mapping[str, Any]) -> str | None:
    default = spec.get("default")
    if default is None:
        return None
    if default == "now":
        return "current_date" if spec["type"] == "date" else "current_timestamp"
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, int | float):
        return repr(default)
    return _lit(str(default))


def _number(value: float) -> str:
    return repr(int(value)) if isinstance(value, int) or float(value).is_integer() else repr(float(value))


def _column_sql(table: str, fname: str, spec: Mapping[str, Any], *, inline_pk: bool) -> str:
    col = _q(fname)
    parts = [col, column_type(spec)]
    if inline_pk:
        parts.append("PRIMARY KEY")
    elif spec.get("required") and not spec.get("key"):
        parts.append("NOT NULL")
    if spec.get("unique") and not inline_pk:
        parts.append("UNIQUE")
    if spec.get("generated"):
        parts.append(f"DEFAULT nextval({_lit(_seq_name(table, fname))})")
    elif (default := _default_sql(spec)) is not None:
        parts.append(f"DEFAULT {default}")
    for check in _checks(fname, spec):
        parts.append(f"CHECK ({check})")
    return " ".join(parts)


def _checks(fname: str, spec: Mapping[str, Any]) -> list[str]:
    col = _q(fname)
    checks = []
    if spec.get("enum"):
        values = ", ".join(_lit(v) if isinstance(v, str) else _number(v) for v in spec["enum"])
        checks.append(f"{col} IN ({values})")
    if spec.get("min") is not None:
        checks.append(f"{col} >= {_number(spec['min'])}")
    if spec.get("max") is not None:
        checks.append(f"{col} <= {_number(spec['max'])}")
    if spec.get("max_length") is not None:
        checks.append(f"length({col}) <= {int(spec['max_length'])}")
    return checks


def _table_statements(name: str, table: Mapping[str, Any]) -> list[str]:
    """CREATE TABLE plus its COMMENT statements (sequences not included)."""
    fields = _fields(table)
    keys = [f for f, s in fields.items() if s.get("key")]
    lines = [_column_sql(name, f, s, inline_pk=len(keys) == 1 and keys[0] == f) for f, s in fields.items()]
    if len(keys) > 1:
        lines.append(f"PRIMARY KEY ({', '.join(_q(k) for k in keys)})")
    for fname, spec in fields.items():
        if spec.get("references"):
            rtable, rfield = spec["references"].split(".")
            lines.append(f"FOREIGN KEY ({_q(fname)}) REFERENCES {_q(rtable)} ({_q(rfield)})")
    body = ",\n  ".join(lines)
    statements = [f"CREATE TABLE {_q(name)} (\n  {body}\n)"]
    if table.get("description"):
        statements.append(f"COMMENT ON TABLE {_q(name)} IS {_lit(str(table['description']))}")
    for fname, spec in fields.items():
        if spec.get("description"):
            statements.append(f"COMMENT ON COLUMN {_q(name)}.{_q(fname)} IS {_lit(str(spec['description']))}")
    return statements


def _sequences(name: str, table: Mapping[str, Any]) -> list[str]:
    return [_seq_name(name, f) for f, s in _fields(table).items() if s.get("generated")]


def ddl(data: Mapping[str, Any], *, source: str | None = None) -> str:
    """The DDL script for the model's tables (of `source`, or all): sequences, then tables, referenced first."""
    tables = _tables(data, source)
    statements = [f"CREATE SEQUENCE IF NOT EXISTS {_q(seq)}" for n, t in tables.items() for seq in _sequences(n, t)]
    for name, table in tables.items():
        statements += _table_statements(name, table)
    return "".join(f"{s};\n" for s in statements)


# ------------------------------------------------------------------------------------------ live schema


def read_schema(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, ColumnInfo]]:
    """Every base table of the connection's `main` schema → its columns (in table order) as `ColumnInfo`."""
    cols = con.execute(
        """
        SELECT c.table_name, c.column_name, c.data_type, c.is_nullable, c.column_default, c.comment
        FROM duckdb_columns() c JOIN duckdb_tables() t
          ON t.table_oid = c.table_oid
        WHERE c.schema_name = 'main' AND c.database_name = current_database() AND NOT t.temporary
        ORDER BY c.table_name, c.column_index
        """
    ).fetchall()
    cons = con.execute(
        """
        SELECT table_name, constraint_type, constraint_column_names, expression, referenced_table,
               referenced_column_names
        FROM duckdb_constraints()
        WHERE schema_name = 'main' AND database_name = current_database()
        """
    ).fetchall()
    info: dict[str, dict[str, dict[str, Any]]] = {}
    for table, col, dtype, nullable, default, comment in cols:
        info.setdefault(table, {})[col] = {
            "name": col,
            "type": dtype,
            "nullable": bool(nullable),
            "default": default,
            "comment": comment or None,
            "checks": [],
        }
    for table, ctype, names, expression, rtable, rcols in cons:
        columns = info.get(table)
        if columns is None:
            continue
        names = list(names or [])
        if ctype == "PRIMARY KEY":
            for n in names:
                columns[n]["primary_key"] = True
        elif ctype == "UNIQUE" and len(names) == 1:
            columns[names[0]]["unique"] = True
        elif ctype == "FOREIGN KEY":
            for n, r in zip(names, rcols or [], strict=False):
                columns[n]["references"] = f"{rtable}.{r}"
        elif ctype == "CHECK":
            for n in names:
                columns[n]["checks"].append(expression)
        elif ctype == "NOT NULL":
            for n in names:
                columns[n]["nullable"] = False
    return {
        table: {c: ColumnInfo(**{**v, "checks": tuple(sorted(v["checks"]))}) for c, v in columns.items()}
        for table, columns in info.items()
    }


def _table_comments(con: duckdb.DuckDBPyConnection) -> dict[str, str | None]:
    rows = con.execute(
        "SELECT table_name, comment FROM duckdb_tables() "
        "WHERE schema_name = 'main' AND database_name = current_database() AND NOT temporary"
    ).fetchall()
    return {t: c or None for t, c in rows}


def _sequence_names(con: duckdb.DuckDBPyConnection) -> set[str]:
    rows = con.execute(
        "SELECT sequence_name FROM duckdb_sequences() WHERE schema_name = 'main' AND database_name = current_database()"
    ).fetchall()
    return {r[0] for r in rows}


# ----------------------------------------------------------------------------------------------- migration


def _type_change(old: str, new: str) -> str:
    """'same', 'widen' (no value can be lost) or 'narrow' for a DuckDB type change."""
    if old == new:
        return "same"
    dec = re.compile(r"^DECIMAL\((\d+),(\d+)\)$")
    old_dec, new_dec = dec.match(old), dec.match(new)
    if new == "VARCHAR":
        return "widen"
    if old in _INTEGER_BITS:
        if new in _INTEGER_BITS:
            return "widen" if _INTEGER_BITS[new] >= _INTEGER_BITS[old] else "narrow"
        if new == "DOUBLE":
            return "widen" if _INTEGER_BITS[old] <= 32 else "narrow"
        if new_dec:
            digits = {8: 3, 16: 5, 32: 10, 64: 19, 128: 39}[_INTEGER_BITS[old]]
            return "widen" if int(new_dec[1]) - int(new_dec[2]) >= digits else "narrow"
    if old_dec and new_dec:
        (p1, s1), (p2, s2) = (int(old_dec[1]), int(old_dec[2])), (int(new_dec[1]), int(new_dec[2]))
        return "widen" if s2 >= s1 and p2 - s2 >= p1 - s1 else "narrow"
    if old == "FLOAT" and new == "DOUBLE":
        return "widen"
    if old == "DATE" and new in ("TIMESTAMP", "TIMESTAMP WITH TIME ZONE"):
        return "widen"
    return "narrow"


def _max_length(col: ColumnInfo) -> int | None:
    for check in col.checks:
        m = _LENGTH_CHECK_RE.match(check)
        if m and m["col"] == col.name:
            return int(m["n"])
    return None


def _constrained(col: ColumnInfo, referenced: set[tuple[str, str]], table: str) -> bool:
    return bool(col.primary_key or col.unique or col.references or col.checks or (table, col.name) in referenced)


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    return con.execute(sql).fetchone()[0]


def plan_migration(
    con: duckdb.DuckDBPyConnection,
    data: Mapping[str, Any],
    *,
    owned_tables: set[str] | None = None,
    source: str | None = None,
) -> MigrationPlan:
    """Compare the model (tables of `source`, or all) with the live database and plan the changes.

    Tables missing from the model are dropped only when listed in `owned_tables`. Nothing is executed.
    """
    tables = _tables(data, source)
    sources = {t.get("source", DEFAULT_SOURCE) for t in tables.values()}
    if source is None and len(sources) > 1:
        raise ERModelError(f"the model's tables live in several sources ({', '.join(sorted(sources))}); name one")
    mem = duckdb.connect(":memory:")
    try:
        mem.execute(ddl(data, source=source))
        want = read_schema(mem)
        want_comments = _table_comments(mem)
    finally:
        mem.close()
    live = read_schema(con)
    live_comments = _table_comments(con)
    live_seqs = _sequence_names(con)
    referenced = {
        tuple(c.references.split(".")) + (t,)
        for t, cols in live.items()
        for c in cols.values()
        if c.references is not None
    }  # (parent, parent column, child)
    referenced_cols = {(p, pc) for p, pc, _ in referenced}
    parents = {p for p, _pc, _c in referenced}
    children: dict[str, set[str]] = {}
    for parent, _pc, child in referenced:
        if child != parent:
            children.setdefault(parent, set()).add(child)

    plan = MigrationPlan()
    logical: list[MigrationStep] = []
    alters: list[MigrationStep] = []
    rebuild: dict[str, list[str]] = {}  # table -> reasons
    rows_cache: dict[str, int] = {}

    def rows(table: str) -> int:
        if table not in rows_cache:
            rows_cache[table] = _scalar(con, f"SELECT count(*) FROM {_q(table)}")
        return rows_cache[table]

    drop_tables = [t for t in live if t not in tables and owned_tables is not None and t in owned_tables]
    for t in drop_tables:
        n = rows(t)
        logical.append(MigrationStep("drop_table", t, destructive=True, reason=f"not in the model ({n} row(s) lost)"))

    for tname in tables:
        if tname not in live:
            continue
        old, new = live[tname], want[tname]
        for cname, ncol in new.items():
            ocol = old.get(cname)
            where = f"{tname}.{cname}"
            if ocol is None:
                if not ncol.nullable and ncol.default is None and rows(tname):
                    plan.errors.append(
                        f"{where}: cannot add a required field without a default to a table with {rows(tname)} "
                        "row(s); give it a `default` or make it optional first"
                    )
                    continue
                step = MigrationStep("add_column", tname, cname, reason=f"new field ({ncol.type})")
                if _constrained(ncol, set(), tname) or not ncol.nullable and ncol.default is None:
                    rebuild.setdefault(tname, []).append(f"add {cname} with constraints")
                    logical.append(step)
                else:
                    sql = f"ALTER TABLE {_q(tname)} ADD COLUMN {_q(cname)} {ncol.type}"
                    sql += f" DEFAULT {ncol.default}" if ncol.default is not None else ""
                    alters.append(replace(step, statements=(sql,)))
                    if not ncol.nullable:
                        alters.append(
                            MigrationStep(
                                "set_not_null",
                                tname,
                                cname,
                                reason="required",
                                statements=(f"ALTER TABLE {_q(tname)} ALTER {_q(cname)} SET NOT NULL",),
                            )
                        )
                    if ncol.comment:
                        alters.append(
                            MigrationStep(
                                "comment",
                                tname,
                                cname,
                                reason="description",
                                statements=(f"COMMENT ON COLUMN {_q(tname)}.{_q(cname)} IS {_lit(ncol.comment)}",),
                            )
                        )
                continue
            if ocol == ncol:
                continue
            needs_rebuild = False
            if ocol.type != ncol.type:
                change = _type_change(ocol.type, ncol.type)
                step = MigrationStep(
                    "alter_type",
                    tname,
                    cname,
                    destructive=change == "narrow",
                    reason=f"{ocol.type} -> {ncol.type}"
                    + (" narrows: values may be lost or fail" * (change == "narrow")),
                )
                if change == "narrow":
                    plan.errors += _unconvertible(con, tname, cname, ncol.type)
                in_place = not _constrained(ocol, referenced_cols, tname) and not _constrained(ncol, set(), tname)
                if in_place and change == "widen":
                    sql = f"ALTER TABLE {_q(tname)} ALTER {_q(cname)} TYPE {ncol.type}"
                    alters.append(replace(step, statements=(sql,)))
                else:
                    needs_rebuild = True
                    logical.append(step)
            old_len, new_len = _max_length(ocol), _max_length(ncol)
            if old_len != new_len and ocol.type == "VARCHAR" and ncol.type == "VARCHAR":
                narrow = new_len is not None and (old_len is None or new_len < old_len)
                logical.append(
                    MigrationStep(
                        "alter_type",
                        tname,
                        cname,
                        destructive=narrow,
                        reason=f"max_length {old_len or 'none'} -> {new_len or 'none'}"
                        + (" narrows: longer values fail" if narrow else ""),
                    )
                )
            if (ocol.primary_key, ocol.unique, ocol.references, ocol.checks) != (
                ncol.primary_key,
                ncol.unique,
                ncol.references,
                ncol.checks,
            ):
                needs_rebuild = True
                plan.errors += _violations(con, tname, ocol, ncol, live)
                if old_len == new_len or ocol.type != ncol.type:
                    logical.append(
                        MigrationStep("alter_constraints", tname, cname, reason="key/unique/reference/check changed")
                    )
            if ocol.nullable and not ncol.nullable:
                nulls = _scalar(con, f"SELECT count(*) FROM {_q(tname)} WHERE {_q(cname)} IS NULL")
                if nulls:
                    plan.errors.append(
                        f"{where}: cannot make the field required: {nulls} row(s) hold NULL; fill them "
                        "(or give the field a default and backfill) first"
                    )
                    continue
            if ocol.nullable != ncol.nullable and not needs_rebuild:
                verb = "DROP" if ncol.nullable else "SET"
                alters.append(
                    MigrationStep(
                        "drop_not_null" if ncol.nullable else "set_not_null",
                        tname,
                        cname,
                        reason="optional" if ncol.nullable else "required",
                        statements=(f"ALTER TABLE {_q(tname)} ALTER {_q(cname)} {verb} NOT NULL",),
                    )
                )
            if ocol.default != ncol.default and not needs_rebuild:
                sql = f"ALTER TABLE {_q(tname)} ALTER {_q(cname)} " + (
                    f"SET DEFAULT {ncol.default}" if ncol.default is not None else "DROP DEFAULT"
                )
                alters.append(
                    MigrationStep("alter_default", tname, cname, reason=f"default {ncol.default}", statements=(sql,))
                )
            if ocol.comment != ncol.comment and not needs_rebuild:
                sql = f"COMMENT ON COLUMN {_q(tname)}.{_q(cname)} IS " + (
                    _lit(ncol.comment) if ncol.comment else "NULL"
                )
                alters.append(MigrationStep("comment", tname, cname, reason="description", statements=(sql,)))
            if needs_rebuild:
                rebuild.setdefault(tname, []).append(f"change {cname}")
        names = list(old)
        for cname, ocol in old.items():
            if cname in new:
                continue
            n = _scalar(con, f"SELECT count({_q(cname)}) FROM {_q(tname)}")
            step = MigrationStep(
                "drop_column", tname, cname, destructive=True, reason=f"not in the model ({n} non-null value(s) lost)"
            )
            later = names[names.index(cname) + 1 :]
            blocked = _constrained(ocol, referenced_cols, tname) or any(
                old[c].primary_key or old[c].unique or old[c].references or (tname, c) in referenced_cols for c in later
            )
            if blocked:
                rebuild.setdefault(tname, []).append(f"drop {cname}")
                logical.append(step)
            else:
                alters.append(replace(step, statements=(f"ALTER TABLE {_q(tname)} DROP COLUMN {_q(cname)}",)))
        if live_comments.get(tname) != want_comments.get(tname) and tname not in rebuild:
            text = want_comments.get(tname)
            sql = f"COMMENT ON TABLE {_q(tname)} IS " + (_lit(text) if text else "NULL")
            alters.append(MigrationStep("comment", tname, reason="description", statements=(sql,)))
        if tname in parents and tname not in rebuild and any(s.table == tname for s in alters):
            # DuckDB refuses most ALTERs (and any second one) on a table that a foreign key references.
            rebuild[tname] = ["DuckDB cannot alter a table that foreign keys reference"]

    # Every live table referencing a rebuilt (dropped and recreated) table must be rebuilt too.
    pending = list(rebuild)
    while pending:
        parent = pending.pop()
        for child in sorted(children.get(parent, ())):
            if child in rebuild or child in drop_tables:
                continue
            if child not in tables:
                plan.errors.append(
                    f"table {child!r} is not in the model but references {parent!r}, which must be rebuilt; "
                    "drop that reference or add the table to the model"
                )
                continue
            rebuild[child] = [f"references rebuilt table {parent}"]
            pending.append(child)
    for t in drop_tables:
        for child in sorted(children.get(t, ())):
            if child not in drop_tables and child not in rebuild:
                plan.errors.append(f"cannot drop table {t!r}: table {child!r} still references it")

    # Alters on tables that will be rebuilt are folded into the rebuild.
    steps: list[MigrationStep] = []
    for s in alters:
        if s.table in rebuild:
            logical.append(replace(s, statements=()))

    # 1. sequences for new generated keys
    for tname, table in tables.items():
        for fname, spec in _fields(table).items():
            if spec.get("generated") and _seq_name(tname, fname) not in live_seqs:
                start = 1
                if tname in live and fname in live[tname]:
                    start = int(_scalar(con, f"SELECT coalesce(max({_q(fname)}), 0) + 1 FROM {_q(tname)}"))
                seq = _seq_name(tname, fname)
                steps.append(
                    MigrationStep(
                        "create_sequence",
                        tname,
                        fname,
                        reason="generated key",
                        statements=(f"CREATE SEQUENCE {_q(seq)} START WITH {start}",),
                    )
                )
    # 2. stash and drop (children first, by the live foreign keys)
    to_drop = set(rebuild) | set(drop_tables)
    for tname in _children_first(to_drop, referenced):
        if tname in rebuild:
            stash = _q(_STASH_PREFIX + tname)
            steps.append(
                MigrationStep(
                    "stash_table",
                    tname,
                    reason="copy rows aside to rebuild: " + "; ".join(rebuild[tname]),
                    statements=(f"CREATE TEMP TABLE {stash} AS SELECT * FROM {_q(tname)}", f"DROP TABLE {_q(tname)}"),
                )
            )
        else:
            drop = next(s for s in logical if s.kind == "drop_table" and s.table == tname)
            seqs = [m[1] for c in live[tname].values() if (m := _NEXTVAL_RE.match(c.default or ""))]
            statements = [f"DROP TABLE {_q(tname)}"] + [f"DROP SEQUENCE IF EXISTS {_q(s)}" for s in seqs]
            steps.append(replace(drop, statements=tuple(statements)))
    # 3. in-place changes
    steps += [s for s in alters if s.table not in rebuild]
    # 4. create new tables and recreate rebuilt ones, referenced first
    for tname, table in tables.items():
        if tname not in live:
            steps.append(
                MigrationStep(
                    "create_table", tname, reason="new table", statements=tuple(_table_statements(tname, table))
                )
            )
        elif tname in rebuild:
            statements = _table_statements(tname, table)
            copy, problems = _copy_back(con, tname, table, want[tname], live[tname])
            plan.errors += problems
            statements[1:1] = copy
            statements.append(f"DROP TABLE {_q(_STASH_PREFIX + tname)}")
            steps.append(
                MigrationStep(
                    "rebuild_table",
                    tname,
                    reason="recreate from the model and copy rows back: " + "; ".join(rebuild[tname]),
                    statements=tuple(statements),
                )
            )
    logical = [s for s in logical if s.kind != "drop_table"]
    # Logical steps carried out by a rebuild come first, so the plan reads "what" before "how".
    plan.steps = logical + steps
    return plan


def _unconvertible(con: duckdb.DuckDBPyConnection, tname: str, cname: str, new_type: str) -> list[str]:
    """Why live values of a column cannot become `new_type` (empty when they all convert)."""
    col = _q(cname)
    sql = f"SELECT count(*) FROM {_q(tname)} WHERE {col} IS NOT NULL AND TRY_CAST({col} AS {new_type}) IS NULL"
    try:
        n = _scalar(con, sql)
    except duckdb.Error:  # no conversion at all; the rebuild will report DuckDB's reason
        return []
    return [f"{tname}.{cname}: {n} value(s) cannot become {new_type}; fix or clear them first"] if n else []


def _violations(
    con: duckdb.DuckDBPyConnection, tname: str, old: ColumnInfo, new: ColumnInfo, live: Mapping[str, Any]
) -> list[str]:
    """Why live rows would break the column's new CHECK / UNIQUE / FOREIGN KEY rules (empty when they fit)."""
    where, col, table = f"{tname}.{new.name}", _q(new.name), _q(tname)
    problems = []
    try:
        for check in sorted(set(new.checks) - set(old.checks)):
            n = _scalar(con, f"SELECT count(*) FROM {table} WHERE NOT ({check})")
            if n:
                problems.append(f"{where}: {n} row(s) break the new rule {check}; fix them first")
        if new.unique and not old.unique and not old.primary_key:
            n = _scalar(con, f"SELECT count({col}) - count(DISTINCT {col}) FROM {table}")
            if n:
                problems.append(f"{where}: cannot make the field unique: {n} duplicate value(s)")
        if new.references and new.references != old.references:
            ptable, pcol = new.references.split(".")
            if ptable in live and pcol in live[ptable]:
                parent = f"SELECT {_q(pcol)} FROM {_q(ptable)} WHERE {_q(pcol)} IS NOT NULL"
                n = _scalar(con, f"SELECT count(*) FROM {table} WHERE {col} IS NOT NULL AND {col} NOT IN ({parent})")
            else:
                n = _scalar(con, f"SELECT count({col}) FROM {table}")
            if n:
                problems.append(f"{where}: {n} row(s) point to no {new.references}; fix them first")
    except duckdb.Error:  # the old values do not even bind to the new rule; the rebuild will say why
        pass
    return problems


def _copy_back(
    con: duckdb.DuckDBPyConnection,
    tname: str,
    table: Mapping[str, Any],
    new: Mapping[str, ColumnInfo],
    old: Mapping[str, ColumnInfo],
) -> tuple[list[str], list[str]]:
    """(statements, errors) refilling a rebuilt table from its stash, casting each kept column to its new type.

    DuckDB checks a foreign key against the rows present before the statement, also when the key points into
    the same table, so a self-referencing table is refilled level by level (roots first, then their children...);
    the number of levels comes from the live rows. A final statement fails if any row was left behind.
    """
    stash, target = _q(_STASH_PREFIX + tname), _q(tname)
    common = [c for c in new if c in old]
    specs = _fields(table)
    keys = [c for c, spec in specs.items() if spec.get("key")]
    self_refs = {}
    for c in common:
        ref = specs[c].get("references") or ""
        if ref.split(".")[0] == tname and ref.split(".")[1] in old:
            self_refs[c] = ref.split(".")[1]

    def cast(c: str, alias: str = "") -> str:
        return f"CAST({alias}{_q(c)} AS {new[c].type})"

    cols, values = ", ".join(_q(c) for c in common), ", ".join(cast(c, "o.") for c in common)
    insert = f"INSERT INTO {target} ({cols}) SELECT {values} FROM {stash} AS o"
    if not self_refs or not keys or not set(keys) <= set(common):
        return [insert], []
    levels, stuck = _levels(con, tname, self_refs)
    if stuck:
        return [], [f"table {tname!r}: {stuck} row(s) form a reference cycle or point to missing rows"]
    present = " AND ".join(
        f"(o.{_q(c)} IS NULL OR {cast(c, 'o.')} IN (SELECT {_q(p)} FROM {target}))" for c, p in self_refs.items()
    )
    same = " AND ".join(f"n.{_q(k)} = {cast(k, 'o.')}" for k in keys)
    fresh = f"NOT EXISTS (SELECT 1 FROM {target} AS n WHERE {same})"
    statements = [f"{insert} WHERE {present} AND {fresh}" for _ in range(levels)]
    message = _lit(f"rows of {tname} could not be copied back")
    statements.append(
        f"SELECT CASE WHEN (SELECT count(*) FROM {target}) <> (SELECT count(*) FROM {stash}) THEN error({message}) END"
    )
    return statements, []


def _levels(con: duckdb.DuckDBPyConnection, tname: str, self_refs: Mapping[str, str]) -> tuple[int, int]:
    """(levels, rows in no level) of a self-referencing live table: roots are level 1."""
    cols = list(self_refs) + sorted(set(self_refs.values()))
    rows = con.execute(f"SELECT {', '.join(_q(c) for c in cols)} FROM {_q(tname)}").fetchall()
    index = {c: i for i, c in enumerate(cols)}
    level: dict[int, int] = {}
    by_value = {p: {} for p in self_refs.values()}
    for n, row in enumerate(rows):
        for p in by_value:
            if row[index[p]] is not None:
                by_value[p][row[index[p]]] = n
    remaining = set(range(len(rows)))
    depth = 0
    while remaining:
        depth += 1
        ready = set()
        for n in remaining:
            parents = [
                by_value[p].get(rows[n][index[c]]) for c, p in self_refs.items() if rows[n][index[c]] is not None
            ]
            if all(q is not None and level.get(q, depth) < depth for q in parents):
                ready.add(n)
        if not ready:
            return depth - 1, len(remaining)
        for n in ready:
            level[n] = depth
        remaining -= ready
    return depth, 0


def _children_first(names: set[str], referenced: set[tuple[str, str, str]]) -> list[str]:
    edges = {(child, parent) for parent, _pc, child in referenced if parent != child}
    ordered: list[str] = []
    remaining = set(names)
    while remaining:
        # a table may go once no remaining table references it
        ready = sorted(t for t in remaining if not any(p == t and c in remaining for c, p in edges))
        if not ready:  # a cycle in the live database; let DuckDB report it
            ready = sorted(remaining)
        ordered += ready
        remaining -= set(ready)
    return ordered


def _backup(con: duckdb.DuckDBPyConnection, db_path: Path, backup_dir: Path) -> Path:
    con.execute("CHECKPOINT")
    backup_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = backup_dir / f"{db_path.stem}-{stamp}.duckdb"
    n = 1
    while target.exists():
        target = backup_dir / f"{db_path.stem}-{stamp}-{n}.duckdb"
        n += 1
    shutil.copy2(db_path, target)
    return target


def apply_migration(
    db_path: str | Path,
    data: Mapping[str, Any],
    *,
    confirm: bool = False,
    backup_dir: str | Path | None = None,
    owned_tables: set[str] | None = None,
    source: str | None = None,
    lock_wait: float = 10.0,
) -> MigrationResult:
    """Migrate the DuckDB file at `db_path` to the model in one transaction.

    Refused changes raise `MigrationError` and destructive ones, unless `confirm`, raise `DestructiveChangeError`;
    in both cases nothing changes. With `confirm` an existing file is first checkpointed and copied to
    `backup_dir/<stem>-<UTC timestamp>.duckdb` (default `<db dir>/.backups`). A failing statement rolls
    everything back and raises `MigrationError` naming it. Tables not in the model are dropped only if owned.
    """
    path = Path(db_path)
    existed = path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + lock_wait
    while True:
        try:
            con = duckdb.connect(str(path))
            break
        except duckdb.Error as e:
            if "lock" in str(e).lower() and time.monotonic() < deadline:
                time.sleep(0.05)  # another process (e.g. the apps server) lets go of the file when idle
                continue
            raise MigrationError(f"cannot open {path} for migration (another process may hold it): {e}") from e
    try:
        plan = plan_migration(con, data, owned_tables=owned_tables, source=source)
        if plan.errors:
            raise MigrationError("migration refused:\n" + "\n".join(f"  - {e}" for e in plan.errors))
        if plan.destructive and not confirm:
            raise DestructiveChangeError(plan.destructive)
        if not plan.steps:
            return MigrationResult([])
        backup = None
        if existed and confirm:
            backup = _backup(con, path, Path(backup_dir) if backup_dir else path.parent / ".backups")
        con.execute("BEGIN TRANSACTION")
        for statement in [*plan.statements, "COMMIT"]:
            try:
                con.execute(statement)
            except duckdb.Error as e:
                try:
                    con.execute("ROLLBACK")
                except duckdb.Error:  # the failed COMMIT already ended the transaction
                    pass
                raise MigrationError(
                    f"migration failed and was rolled back; statement:\n{statement}\nerror: {e}", statement
                ) from e
        con.execute("CHECKPOINT")
        return MigrationResult(list(plan.steps), backup)
    finally:
        con.close()


# ------------------------------------------------------------------------------------------------ diagram


def _mermaid_comment(spec: Mapping[str, Any]) -> str:
    parts = []
    if spec.get("label"):
        parts.append(str(spec["label"]))
    if spec.get("description"):
        parts.append(str(spec["description"]))
    if spec.get("required") and not spec.get("key"):
        parts.append("required")
    if spec.get("max_length"):
        parts.append(f"max {spec['max_length']} chars")
    if spec.get("enum"):
        parts.append("one of " + "/".join(str(v) for v in spec["enum"]))
    return "; ".join(parts).replace('"', "'").replace("\n", " ")


def mermaid(data: Mapping[str, Any], *, source: str | None = None) -> str:
    """A Mermaid `erDiagram` of the model: entities with typed attributes and one line per foreign key."""
    tables = _tables(data, source)
    lines = ["erDiagram"]
    relations = []
    for tname, table in tables.items():
        lines.append(f"    {tname} {{")
        for fname, spec in _fields(table).items():
            flags = (("PK", "key"), ("FK", "references"), ("UK", "unique"))
            keys = [k for k, key in flags if spec.get(key)]
            attr = f"        {spec['type']} {fname}"
            if keys:
                attr += " " + ", ".join(keys)
            comment = _mermaid_comment(spec)
            if comment:
                attr += f' "{comment}"'
            lines.append(attr)
            if spec.get("references"):
                parent = spec["references"].split(".")[0]
                left = "||" if spec.get("required") or spec.get("key") else "|o"
                right = "o|" if spec.get("unique") else "o{"
                relations.append(f"    {parent} {left}--{right} {tname} : {fname}")
        lines.append("    }")
    return "\n".join(lines + relations) + "\n"
