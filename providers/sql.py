"""DuckDB databases: schemas as `SQLSchema` context, and read-only queries with a row limit.

Safety is layered: sqlglot classifies the statement and refuses anything but a single query,
and DuckDB itself is opened read-only with external access disabled and its configuration locked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import duckdb
import sqlglot
from mcp.server.mcpserver.prompts.base import Message, UserMessage
from pydantic import BaseModel, Field
from sqlglot import exp

from contextlab.providers.base import PromptSpec, Provider, ProviderError, ToolSpec

logging.getLogger("sqlglot").setLevel(logging.ERROR)

_READ_ONLY_ROOTS: tuple[type[exp.Expression], ...] = (exp.Select, exp.SetOperation, exp.Describe, exp.Show)
_WRITE_NODES: tuple[type[exp.Expression], ...] = (
    exp.Insert,
    exp.Update,
    exp.Delete,
    exp.Create,
    exp.Drop,
    exp.Alter,
    exp.Merge,
    exp.Copy,
    exp.Command,
    exp.Into,
    exp.Attach,
    exp.Detach,
    exp.Install,
    exp.Pragma,
    exp.Set,
    exp.Use,
)
_FILE_FUNCTION_PREFIXES = (
    "read_",
    "parquet_",
    "csv_",
    "json_",
    "glob",
    "sniff_csv",
    "iceberg_",
    "delta_",
    "sqlite_",
    "postgres_",
    "mysql_",
    "st_read",
    "httpfs",
    "load_",
    "duckdb_secrets",
    "which_secret",
)


class SQLRefused(ProviderError):
    """The statement is not a read-only query; nothing was executed."""


class SQLUnparsable(SQLRefused):
    """The text does not parse as DuckDB SQL; nothing was executed."""


def check_read_only(sql: str) -> exp.Expression:
    """Parse `sql` as DuckDB and return its tree if it is one read-only query, else raise SQLRefused."""
    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except sqlglot.errors.ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        where = f" (line {first.get('line')}, column {first.get('col')})" if first else ""
        raise SQLUnparsable(f"SQL does not parse{where}: {first.get('description', exc)}") from exc
    except sqlglot.errors.SqlglotError as exc:  # e.g. a TokenError for an unterminated string
        raise SQLUnparsable(f"SQL does not parse: {exc}") from exc
    if not statements:
        raise SQLRefused("Empty SQL: send one SELECT query.")
    if len(statements) > 1:
        raise SQLRefused(f"Send one statement at a time ({len(statements)} were given).")
    tree = statements[0]
    if not isinstance(tree, _READ_ONLY_ROOTS):
        kind = tree.key.upper() if not isinstance(tree, exp.Command) else str(tree.this).upper()
        raise SQLRefused(
            f"Only read-only queries are allowed; this is a {kind} statement. "
            "Use SELECT (or DESCRIBE / SHOW) through this tool."
        )
    for node in tree.walk():
        if isinstance(node, _WRITE_NODES):
            raise SQLRefused(f"Only read-only queries are allowed; the query contains {node.key.upper()}.")
        if isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if name.startswith(_FILE_FUNCTION_PREFIXES):
                raise SQLRefused(
                    f"{name}() reads files or external systems, which this tool does not allow. "
                    "Query the tables of the configured databases instead."
                )
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier) and node.this.quoted:
            if any(ch in node.this.name for ch in "/\\:") or "." in node.this.name:
                raise SQLRefused(
                    f"{node.this.name!r} looks like a file path; reading files is not allowed. "
                    "Query the tables of the configured databases instead."
                )
    return tree


class ColumnInfo(BaseModel):
    name: str
    type: str
    nullable: bool
    primary_key: bool = False
    default: str | None = None


class ForeignKey(BaseModel):
    columns: list[str]
    references_table: str
    references_columns: list[str]


class TableInfo(BaseModel):
    schema_name: str = Field(alias="schema", serialization_alias="schema")
    name: str
    kind: str = Field(description="'table' or 'view'.")
    columns: list[ColumnInfo]
    primary_key: list[str] = Field(default_factory=list)
    foreign_keys: list[ForeignKey] = Field(default_factory=list)
    row_count: int | None = Field(None, description="Estimated row count (exact for tables without deletes).")

    model_config = {"populate_by_name": True}


class DatabaseSchema(BaseModel):
    name: str
    path: str
    tables: list[TableInfo]


class SQLSchema(BaseModel):
    """The `SQLSchema` context type: every configured database with its tables and columns."""

    databases: list[DatabaseSchema]


class DatabaseInfo(BaseModel):
    name: str
    path: str
    size_bytes: int
    exists: bool


class DatabaseList(BaseModel):
    databases: list[DatabaseInfo]
    default: str | None


class ResultColumn(BaseModel):
    name: str
    type: str


class QueryResult(BaseModel):
    database: str
    columns: list[ResultColumn]
    rows: list[list[Any]]
    row_count: int
    truncated: bool = Field(description="True when the query returned more rows than the limit.")
    limit: int
    elapsed_ms: float


class SQLProvider(Provider):
    name = "sql"
    description = (
        "DuckDB databases in the workspace: schemas (tables, columns, keys, row counts) and read-only queries."
    )
    context_types = ["SQLSchema", "QueryResult"]

    def __init__(
        self,
        databases: dict[str, str | Path],
        *,
        row_limit: int = 500,
        max_row_limit: int = 10_000,
        timeout_seconds: float = 10.0,
    ) -> None:
        self.databases = {name: Path(path).resolve() for name, path in databases.items()}
        self.row_limit = row_limit
        self.max_row_limit = max_row_limit
        self.timeout_seconds = timeout_seconds
        self._schema_cache: dict[str, tuple[tuple[int, int], DatabaseSchema]] = {}
        self._cache_lock = threading.Lock()
        self._schema_locks: dict[str, asyncio.Lock] = {}

    @classmethod
    def discover(cls, root: str | Path, exclude: tuple[str | Path, ...] = (), **kwargs: Any) -> SQLProvider:
        """A provider for every `*.duckdb` file within two folders of `root` (hidden folders and the folders
        in `exclude` skipped)."""
        root = Path(root)
        skipped = [Path(p).resolve() for p in exclude]
        found: dict[str, Path] = {}
        for pattern in ("*.duckdb", "*/*.duckdb", "*/*/*.duckdb"):
            for path in sorted(root.glob(pattern)):
                if any(part.startswith(".") for part in path.relative_to(root).parts):
                    continue
                if any(path.resolve().is_relative_to(s) for s in skipped):
                    continue
                found.setdefault(path.stem, path)
        return cls(found, **kwargs)

    def tool_specs(self) -> list[ToolSpec]:
        return [
            ToolSpec(self.list_databases, "databases", "List the configured DuckDB databases.", "List databases"),
            ToolSpec(
                self.schema,
                "schema",
                "The schema of one or all databases: tables and views, columns with types, primary and "
                "foreign keys, and row counts.",
                "Database schema",
            ),
            ToolSpec(
                self.query,
                "query",
                "Run one read-only SQL query (DuckDB dialect) and return columns and rows, capped at a row "
                "limit. Writes, ATTACH, INSTALL, COPY and file readers are refused.",
                "Read-only SQL query",
            ),
        ]

    def prompt_specs(self) -> list[PromptSpec]:
        return [
            PromptSpec(
                self.write_sql_prompt,
                "write_sql",
                "Write a DuckDB query that answers a question, grounded in the database schema.",
                "Write SQL against this schema",
            )
        ]

    # -- tools --------------------------------------------------------------------------------
    async def list_databases(self) -> DatabaseList:
        infos = [
            DatabaseInfo(name=n, path=str(p), size_bytes=p.stat().st_size if p.exists() else 0, exists=p.exists())
            for n, p in self.databases.items()
        ]
        return DatabaseList(databases=infos, default=self._default_name())

    async def schema(
        self,
        database: Annotated[str | None, Field(description="Database name; all databases when omitted.")] = None,
    ) -> SQLSchema:
        names = [self._require(database)] if database else list(self.databases)
        return SQLSchema(databases=[await self._schema(name) for name in names])

    async def query(
        self,
        sql: Annotated[str, Field(min_length=1, max_length=100_000, description="One SELECT query.")],
        database: Annotated[str | None, Field(description="Database name; the default when omitted.")] = None,
        limit: Annotated[int | None, Field(ge=1, description="Maximum rows to return.")] = None,
    ) -> QueryResult:
        check_read_only(sql)
        name = self._require(database) if database else self._require(self._default_name())
        row_limit = min(limit or self.row_limit, self.max_row_limit)
        return await asyncio.to_thread(self._run_query, name, sql, row_limit)

    # -- prompts --------------------------------------------------------------------------------
    async def write_sql_prompt(self, question: str, database: str | None = None) -> list[Message]:
        schema = await self.schema(database)
        lines = []
        for db in schema.databases:
            for table in db.tables:
                cols = ", ".join(f"{c.name} {c.type}" for c in table.columns)
                lines.append(f"{table.schema_name}.{table.name}({cols})  -- {table.row_count} rows")
                for fk in table.foreign_keys:
                    lines.append(
                        f"  -- {', '.join(fk.columns)} references {fk.references_table}"
                        f"({', '.join(fk.references_columns)})"
                    )
        return [
            UserMessage(
                "Write one DuckDB SELECT query that answers the question below. Use only these tables and "
                "columns, qualify ambiguous columns, and return only the SQL.\n\n"
                + "\n".join(lines)
                + f"\n\nQuestion: {question}"
            )
        ]

    # -- internals -------------------------------------------------------------------------------
    def _default_name(self) -> str | None:
        return next(iter(self.databases), None)

    def _require(self, name: str | None) -> str:
        if name is None:
            raise ProviderError(
                "No DuckDB database is configured. Set ContextLab.sql_databases or add a "
                "*.duckdb file to the workspace."
            )
        if name not in self.databases:
            known = ", ".join(sorted(self.databases)) or "none"
            raise ProviderError(f"Unknown database {name!r}. Configured databases: {known}.")
        return name

    def _connect(self, name: str) -> duckdb.DuckDBPyConnection:
        path = self.databases[name]
        if not path.exists():
            raise ProviderError(f"Database file for {name!r} is missing: {path}.")
        try:
            return duckdb.connect(
                str(path),
                read_only=True,
                config={"enable_external_access": False, "lock_configuration": True},
            )
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise ProviderError(
                    f"Database {name!r} is open for writing in another process, so it cannot be read now. "
                    "Close that connection (or open it with read_only=True) and retry."
                ) from exc
            raise ProviderError(f"Cannot open database {name!r}: {exc}") from exc

    async def _schema(self, name: str) -> DatabaseSchema:
        cached = self._cached_schema(name)
        if cached is not None:
            return cached
        # One reader per database: concurrent callers on a cold cache wait for it instead of piling on.
        async with self._schema_locks.setdefault(name, asyncio.Lock()):
            return self._cached_schema(name) or await asyncio.to_thread(self._schema_of, name)

    def _cached_schema(self, name: str) -> DatabaseSchema | None:
        """The cached schema while the file is unchanged (checked by mtime and size, no thread hop)."""
        key = self._file_key(name)
        with self._cache_lock:
            cached = self._schema_cache.get(name)
        return cached[1] if cached and cached[0] == key else None

    def _file_key(self, name: str) -> tuple[int, int]:
        path = self.databases[name]
        try:
            stat = path.stat()
        except FileNotFoundError:
            return (0, 0)
        return (stat.st_mtime_ns, stat.st_size)

    def _schema_of(self, name: str) -> DatabaseSchema:
        key = self._file_key(name)
        with self._connect(name) as con:
            schema = DatabaseSchema(name=name, path=str(self.databases[name]), tables=_read_tables(con))
        with self._cache_lock:
            self._schema_cache[name] = (key, schema)
        return schema

    def _run_query(self, name: str, sql: str, row_limit: int) -> QueryResult:
        started = time.perf_counter()
        with self._connect(name) as con:
            timer = threading.Timer(self.timeout_seconds, con.interrupt)
            timer.start()
            try:
                cursor = con.execute(sql)
                rows = cursor.fetchmany(row_limit + 1)
                description = cursor.description or []
            except duckdb.InterruptException as exc:
                raise ProviderError(
                    f"Query stopped after {self.timeout_seconds:g} s. Narrow it (filters, LIMIT) and retry."
                ) from exc
            except duckdb.PermissionException as exc:
                raise SQLRefused(f"Refused by the read-only sandbox: {exc}") from exc
            except duckdb.Error as exc:
                raise ProviderError(f"{type(exc).__name__}: {exc}") from exc
            finally:
                timer.cancel()
        truncated = len(rows) > row_limit
        rows = rows[:row_limit]
        return QueryResult(
            database=name,
            columns=[ResultColumn(name=d[0], type=str(d[1])) for d in description],
            rows=[[_json_value(v) for v in row] for row in rows],
            row_count=len(rows),
            truncated=truncated,
            limit=row_limit,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 3),
        )


def _read_tables(con: duckdb.DuckDBPyConnection) -> list[TableInfo]:
    columns: dict[tuple[str, str], list[ColumnInfo]] = {}
    for schema, table, column, dtype, nullable, default in con.execute(
        "SELECT schema_name, table_name, column_name, data_type, is_nullable, column_default "
        "FROM duckdb_columns() WHERE NOT internal ORDER BY schema_name, table_name, column_index"
    ).fetchall():
        columns.setdefault((schema, table), []).append(
            ColumnInfo(name=column, type=dtype, nullable=bool(nullable), default=default)
        )
    primary: dict[tuple[str, str], list[str]] = {}
    foreign: dict[tuple[str, str], list[ForeignKey]] = {}
    for schema, table, ctype, cols, ref_table, ref_cols in con.execute(
        "SELECT schema_name, table_name, constraint_type, constraint_column_names, referenced_table, "
        "referenced_column_names FROM duckdb_constraints() "
        "WHERE constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY')"
    ).fetchall():
        if ctype == "PRIMARY KEY":
            primary[(schema, table)] = list(cols)
        else:
            foreign.setdefault((schema, table), []).append(
                ForeignKey(columns=list(cols), references_table=ref_table, references_columns=list(ref_cols or []))
            )
    kinds: dict[tuple[str, str], tuple[str, int | None]] = {}
    for schema, table, size in con.execute(
        "SELECT schema_name, table_name, estimated_size FROM duckdb_tables() WHERE NOT internal"
    ).fetchall():
        kinds[(schema, table)] = ("table", size)
    for schema, view in con.execute("SELECT schema_name, view_name FROM duckdb_views() WHERE NOT internal").fetchall():
        kinds[(schema, view)] = ("view", None)
    tables = []
    for key, cols in columns.items():
        kind, size = kinds.get(key, ("table", None))
        pk = primary.get(key, [])
        for col in cols:
            col.primary_key = col.name in pk
        tables.append(
            TableInfo(
                schema=key[0],
                name=key[1],
                kind=kind,
                columns=cols,
                primary_key=pk,
                foreign_keys=foreign.get(key, []),
                row_count=size,
            )
        )
    return tables


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)
