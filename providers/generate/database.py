"""Read a database's tables into the model a database provider is generated from.

The schema is read through the same read-only backends the generated provider uses at run time
(contextlab.providers.runtime): DuckDB through SQLProvider, SQLite and PostgreSQL through SQLAlchemy.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel

from contextlab.providers.base import ProviderError
from contextlab.providers.generate import GenerationError
from contextlab.providers.generate.names import class_name, identifier, snake, unique
from contextlab.providers.runtime import DuckDBBackend, SQLAlchemyBackend, parse_database_url, redact_url
from contextlab.providers.sql import DatabaseSchema, TableInfo

KIND_LABELS = {"duckdb": "DuckDB", "sqlite": "SQLite", "postgresql": "PostgreSQL"}
_ROW_RESERVED = frozenset(dir(BaseModel)) | {"self"}
MAX_PAGE = 500
DEFAULT_PAGE = 50
_BINARY = ("BLOB", "BYTEA", "BINARY", "VARBINARY")


@dataclass
class ColumnModel:
    name: str
    type: str
    py_type: str
    nullable: bool
    primary_key: bool
    py_name: str = ""
    param: str = ""

    @property
    def filterable(self) -> bool:
        binary = re.split(r"[\s(]", self.type.upper().strip(), maxsplit=1)[0] in _BINARY
        return self.py_type != "Any" and not binary


@dataclass
class TableModel:
    name: str
    schema: str | None
    kind: str
    columns: list[ColumnModel]
    key: list[str]
    unique_key: bool
    key_source: str  # "primary key" or "guess"
    row_count: int | None
    tool: str = ""
    row_class: str = ""
    page_class: str = ""
    limit_param: str = "limit"
    cursor_param: str = "cursor"

    @property
    def label(self) -> str:
        qualified = f"{self.schema}.{self.name}" if self.schema else self.name
        return qualified if self.kind == "table" else f"{qualified} ({self.kind})"

    @property
    def filter_columns(self) -> list[ColumnModel]:
        keys = [c for name in self.key for c in self.columns if c.name == name]
        return keys + [c for c in self.columns if c.filterable and c.name not in self.key]


@dataclass
class DatabaseModel:
    name: str
    kind: str
    display_url: str
    url_in_code: str
    secret_url: str | None
    tables: list[TableModel]
    description: str = ""
    warnings: list[str] = field(default_factory=list)
    max_page: int = MAX_PAGE
    default_page: int = DEFAULT_PAGE

    @property
    def kind_label(self) -> str:
        return KIND_LABELS[self.kind]


def python_type(db_type: str) -> str:
    """The Python annotation of a column type (DuckDB, SQLite or PostgreSQL spelling); Any when unknown."""
    text = db_type.upper().strip()
    if not text or text.endswith("]") or text.startswith(("STRUCT", "MAP", "UNION", "LIST", "ARRAY", "JSON")):
        return "Any"
    base = re.split(r"[\s(]", text, maxsplit=1)[0]
    if base == "INTERVAL":
        return "float"  # seconds
    if base in ("BOOLEAN", "BOOL"):
        return "bool"
    if "INT" in base or base in ("SERIAL", "BIGSERIAL", "SMALLSERIAL", "OID"):
        return "int"
    if base in ("DECIMAL", "NUMERIC", "REAL", "MONEY") or "FLOA" in base or "DOUB" in base:
        return "float"
    if base.startswith("TIMESTAMP") or base == "DATETIME":
        return "dt.datetime"
    if base == "DATE":
        return "dt.date"
    if base.startswith("TIME"):
        return "dt.time"
    if any(s in base for s in ("CHAR", "TEXT", "CLOB", "STRING", "UUID", "ENUM", "NAME")):
        return "str"
    if base in _BINARY:
        return "str"  # hex
    return "Any"


def _run(coro: Any) -> Any:
    """Run a coroutine from sync code, also when the caller already runs an event loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def read_schema(url: str, name: str) -> tuple[str, str, str, str | None, DatabaseSchema]:
    """(kind, display URL, URL for the code, URL to keep secret, schema) of the database at `url`."""
    try:
        kind, location = parse_database_url(url)
    except ProviderError as exc:
        raise GenerationError(str(exc)) from exc
    secret_url = None
    if kind in ("duckdb", "sqlite"):
        path = Path(location).expanduser()
        if not path.is_file():
            hint = f" ({kind}:///{location} is relative to the current folder; write {kind}:////absolute/path)"
            raise GenerationError(f"No such database file: {path.resolve()}{hint if not path.is_absolute() else ''}.")
        path = path.resolve()
        display = code_url = f"{kind}:///{path}"
    else:
        display = redact_url(url)
        parts = urlsplit(url)
        code_url = url
        if parts.password is not None:
            code_url = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", "@", 1)).geturl()
            secret_url = url
    try:
        if kind == "duckdb":
            schema = _run(DuckDBBackend({name: str(path)}).schema(name)).databases[0]
        else:
            backend = SQLAlchemyBackend(name, url if kind == "postgresql" else code_url, kind, timeout_seconds=10)
            schema = backend.schema()
    except ProviderError as exc:
        raise GenerationError(f"Cannot read the schema of {display}: {exc}") from exc
    except ModuleNotFoundError as exc:
        package = {"psycopg": "'psycopg[binary]'", "psycopg2": "psycopg2-binary"}.get(exc.name or "", exc.name)
        raise GenerationError(f"Reading {display} needs the driver {exc.name!r}: pip install {package}.") from exc
    except Exception as exc:  # driver errors: not a database file, refused connection, bad password…
        message = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise GenerationError(f"Cannot read the schema of {display}: {type(exc).__name__}: {message}") from exc
    return kind, display, code_url, secret_url, schema


def load(url: str, *, name: str, tables: list[str] | None = None) -> DatabaseModel:
    kind, display, code_url, secret_url, schema = read_schema(url, name)
    default_schemas = {"main", "public", None, ""}
    chosen = [
        t
        for t in schema.tables
        if not tables or any(fnmatch.fnmatchcase(t.name, g) or fnmatch.fnmatchcase(_qualified(t), g) for g in tables)
    ]
    if not chosen:
        found = ", ".join(_qualified(t) for t in schema.tables) or "none"
        raise GenerationError(f"{display}: no tables to generate lookups for (tables found: {found}).")
    warnings: list[str] = []
    tools: set[str] = set()
    classes: set[str] = {f"{class_name(name)}Provider"}
    models = []
    for info in chosen:
        table = _table(info, None if info.schema_name in default_schemas else info.schema_name)
        base = snake(f"{table.schema}_{table.name}" if table.schema else table.name)
        table.tool = unique(f"lookup_{base}", tools)
        stem = class_name(base)
        table.row_class = unique(f"{stem}Row", classes)
        table.page_class = unique(f"{stem}Page", classes)
        if table.key_source == "guess":
            warnings.append(
                f"{table.label} has no primary key: lookups filter on {', '.join(table.key)} and page by offset."
            )
        models.append(table)
    names = ", ".join(t.label for t in models[:8]) + (", …" if len(models) > 8 else "")
    return DatabaseModel(
        name=name,
        kind=kind,
        display_url=display,
        url_in_code=code_url,
        secret_url=secret_url,
        tables=models,
        description=f"The {KIND_LABELS[kind]} database {name}: {names}. Schema, read-only SQL and lookups by key.",
        warnings=warnings,
    )


def _qualified(table: TableInfo) -> str:
    return f"{table.schema_name}.{table.name}"


def _table(info: TableInfo, schema: str | None) -> TableModel:
    fields: set[str] = set()
    params: set[str] = {"self"}
    columns = []
    for col in info.columns:
        column = ColumnModel(
            name=col.name,
            type=col.type,
            py_type=python_type(col.type),
            nullable=col.nullable and not col.primary_key,
            primary_key=col.primary_key or col.name in info.primary_key,
        )
        column.py_name = unique(identifier(col.name, _ROW_RESERVED), fields)
        columns.append(column)
    if info.primary_key:
        key, unique_key, source = list(info.primary_key), True, "primary key"
    else:
        names = [c.name for c in columns]
        singular = info.name[:-1] if info.name.endswith("s") else info.name
        guess = next((n for n in ("id", f"{singular}_id", f"{info.name}_id") if n in names), names[0])
        key, unique_key, source = [guess], False, "guess"
    table = TableModel(
        name=info.name,
        schema=schema,
        kind=info.kind,
        columns=columns,
        key=key,
        unique_key=unique_key,
        key_source=source,
        row_count=info.row_count,
    )
    for column in table.filter_columns:
        column.param = unique(identifier(column.name, params | {"limit", "cursor"}), params)
    table.limit_param = unique("limit", params) if "limit" not in params else unique("page_limit", params)
    table.cursor_param = unique("cursor", params) if "cursor" not in params else unique("page_cursor", params)
    return table
