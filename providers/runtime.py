"""What generated providers import: an httpx-based base for OpenAPI providers and a read-only base for databases.

`contextlab provider new` writes thin, editable subclasses of these classes (see docs/providers.md,
"Generate a provider"). Secrets reach them as environment variables, which the gateway's registry
stores encrypted and passes to the provider process.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import datetime as dt
import decimal
import functools
import inspect
import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from contextlab.providers.base import Provider, ProviderError, ResourceTemplateSpec, ToolSpec
from contextlab.providers.sql import (
    ColumnInfo,
    DatabaseSchema,
    ForeignKey,
    QueryResult,
    ResultColumn,
    SQLProvider,
    TableInfo,
    check_read_only,
)

__all__ = [
    "ApiKey",
    "BaseModel",
    "DatabaseProvider",
    "Field",
    "HTTPBasic",
    "HTTPBearer",
    "OpenAPIProvider",
    "Page",
    "Row",
    "SaaSRecord",
    "WithJsonSchema",
    "comma",
    "operation",
    "tool",
]


# -- tool markers ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolInfo:
    name: str | None = None
    title: str | None = None
    read_only: bool = True
    idempotent: bool = True
    open_world: bool = False


def tool(
    *, name: str | None = None, title: str | None = None, read_only: bool = True, idempotent: bool = True
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark a provider method as a tool; its docstring is the tool's description."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.__contextlab_tool__ = ToolInfo(name, title, read_only, idempotent)  # type: ignore[attr-defined]
        return fn

    return mark


class GeneratedProvider(Provider):
    """Collects the methods marked with `@tool` / `@operation`, in the order they are written."""

    def tool_specs(self) -> list[ToolSpec]:
        specs = []
        seen: set[str] = set()
        for cls in reversed(type(self).__mro__):
            for attr, member in vars(cls).items():
                info = getattr(member, "__contextlab_tool__", None)
                if info is None or attr in seen:
                    continue
                seen.add(attr)
                method = getattr(self, attr)
                doc = inspect.getdoc(method) or ""
                specs.append(
                    ToolSpec(
                        method,
                        info.name or attr,
                        doc,
                        info.title or doc.split("\n", 1)[0].rstrip(".") or None,
                        read_only=info.read_only,
                        idempotent=info.idempotent,
                        open_world=info.open_world,
                    )
                )
        return specs


def _env(name: str | None) -> str | None:
    return os.environ.get(name) or None if name else None


# -- OpenAPI providers ----------------------------------------------------------------------------
class SaaSRecord(BaseModel):
    """The `SaaSRecord` context type: what one operation of a SaaS / HTTP API answered."""

    source: str = Field(description="The provider (API) the record comes from.")
    operation: str = Field(description="The tool / operation that fetched it.")
    method: str = Field(description="HTTP method.")
    path: str = Field(description="The operation's path template, e.g. /pets/{pet_id}.")
    url: str = Field(description="The URL requested (credentials in the query string left out).")
    status: int = Field(description="HTTP status code.")
    content_type: str | None = Field(None, description="Media type of the answer.")
    encoding: Literal["json", "text", "base64", "empty"] = Field(description="How `data` is encoded.")
    data: Any = Field(None, description="The answer: parsed JSON, text, or base64 for binary content.")
    fetched_at: dt.datetime = Field(description="When the answer arrived (UTC).")


@dataclass(frozen=True)
class ApiKey:
    """An API key sent in a header or the query string, read from the environment variable `env`."""

    name: str
    location: Literal["header", "query"]
    env: str

    def apply(self, value: str, headers: dict[str, str], query: dict[str, Any]) -> None:
        (headers if self.location == "header" else query)[self.name] = value


@dataclass(frozen=True)
class HTTPBearer:
    """`Authorization: Bearer <token>`, the token read from the environment variable `env`."""

    env: str

    def apply(self, value: str, headers: dict[str, str], query: dict[str, Any]) -> None:
        headers["Authorization"] = f"Bearer {value}"


@dataclass(frozen=True)
class HTTPBasic:
    """HTTP basic auth; the environment variable `env` holds `user:password`."""

    env: str

    def apply(self, value: str, headers: dict[str, str], query: dict[str, Any]) -> None:
        headers["Authorization"] = "Basic " + base64.b64encode(value.encode()).decode()


SecurityScheme = ApiKey | HTTPBearer | HTTPBasic


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    name: str
    auth: tuple[tuple[str, ...], ...] = ()
    content_type: str | None = None


_CURRENT_OPERATION: contextvars.ContextVar[Operation] = contextvars.ContextVar("contextlab_operation")


def operation(
    method: str,
    path: str,
    *,
    name: str | None = None,
    title: str | None = None,
    auth: Iterable[Iterable[str]] = (),
    content_type: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark an async method as the tool for one HTTP operation; inside it, `self.call(...)` sends that request.

    `auth` lists the alternative sets of security schemes the operation accepts (the first one whose
    credentials are configured is used); an empty set means anonymous access is allowed.
    GET, HEAD and OPTIONS are read-only; PUT and DELETE idempotent.
    """
    method = method.upper()

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        info = Operation(method, path, name or fn.__name__, tuple(tuple(a) for a in auth), content_type)

        @functools.wraps(fn)
        async def run(self: OpenAPIProvider, *args: Any, **kwargs: Any) -> Any:
            token = _CURRENT_OPERATION.set(info)
            try:
                return await fn(self, *args, **kwargs)
            finally:
                _CURRENT_OPERATION.reset(token)

        run.__contextlab_tool__ = ToolInfo(  # type: ignore[attr-defined]
            name,
            title,
            read_only=method in {"GET", "HEAD", "OPTIONS"},
            idempotent=method in {"GET", "HEAD", "OPTIONS", "PUT", "DELETE"},
            open_world=True,
        )
        run.__contextlab_operation__ = info  # type: ignore[attr-defined]
        return run

    return mark


def comma(values: Iterable[Any] | None) -> str | None:
    """An array parameter with `explode: false`: its values joined by commas."""
    return None if values is None else ",".join(_scalar(v) for v in values)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _query_value(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_scalar(v) for v in value]
    return _scalar(value)


class OpenAPIProvider(GeneratedProvider):
    """Base of providers generated from an OpenAPI spec: one `@operation` method per HTTP operation.

    Every request sends `secret_headers` (header name -> environment variable) and the credentials
    of the operation's security schemes. `base_url` can be overridden with the variable `base_url_env`.
    """

    context_types = ["SaaSRecord"]
    base_url: ClassVar[str] = ""
    base_url_env: ClassVar[str | None] = None
    secret_headers: ClassVar[dict[str, str]] = {}
    security_schemes: ClassVar[dict[str, SecurityScheme]] = {}
    timeout_seconds: ClassVar[float] = 30.0
    max_response_bytes: ClassVar[int] = 10_000_000

    def __init__(self) -> None:
        self._client: Any = None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> Any:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(timeout=self.timeout_seconds, follow_redirects=True)
        return self._client

    def resolved_base_url(self) -> str:
        base = _env(self.base_url_env) or self.base_url
        if not base:
            hint = f"set the environment variable {self.base_url_env} or " if self.base_url_env else ""
            raise ProviderError(f"{self.name}: no base URL configured; {hint}set base_url in the provider class.")
        return base.rstrip("/")

    def _credentials(self, info: Operation) -> tuple[dict[str, str], dict[str, Any]]:
        headers: dict[str, str] = {}
        for header, variable in self.secret_headers.items():
            if value := _env(variable):
                headers[header] = value
        query: dict[str, Any] = {}
        if not info.auth:
            return headers, query
        for alternative in info.auth:
            values = {scheme: _env(self.security_schemes[scheme].env) for scheme in alternative}
            if all(values.values()):
                for scheme, value in values.items():
                    self.security_schemes[scheme].apply(value or "", headers, query)
                return headers, query
        needed = " or ".join(
            " and ".join(f"{self.security_schemes[s].env} (scheme {s})" for s in alternative)
            for alternative in info.auth
        )
        raise ProviderError(
            f"{info.name} needs credentials: set {needed}. Register them as secrets with "
            "`contextlab provider regenerate <dir> --auth SCHEME=VALUE`."
        )

    async def call(
        self,
        *,
        path: Mapping[str, Any] | None = None,
        query: Mapping[str, Any] | None = None,
        headers: Mapping[str, Any] | None = None,
        cookies: Mapping[str, Any] | None = None,
        json: Any = None,
        form: Mapping[str, Any] | None = None,
        text: str | None = None,
    ) -> SaaSRecord:
        """Send the current operation's request; parameters that are None are left out."""
        info = _CURRENT_OPERATION.get(None)
        if info is None:
            raise RuntimeError("call() works inside a method decorated with @operation")
        url_path = info.path
        for key, value in (path or {}).items():
            if value is None:
                raise ProviderError(f"{info.name}: the path parameter {key!r} is required.")
            url_path = url_path.replace("{" + key + "}", quote(_scalar(value), safe=""))
        params = {k: _query_value(v) for k, v in (query or {}).items() if v is not None}
        send_headers = {k: _scalar(v) for k, v in (headers or {}).items() if v is not None}
        if cookies:
            jar = "; ".join(f"{k}={quote(_scalar(v), safe='')}" for k, v in cookies.items() if v is not None)
            if jar:
                send_headers["Cookie"] = jar
        auth_headers, auth_query = self._credentials(info)
        url = self.resolved_base_url() + url_path
        body: dict[str, Any] = {}
        if json is not None:
            body["json"] = json
            if info.content_type:
                send_headers["Content-Type"] = info.content_type
        elif form is not None:
            body["data"] = {k: _scalar(v) for k, v in form.items() if v is not None}
        elif text is not None:
            body["content"] = text.encode()
            send_headers["Content-Type"] = info.content_type or "text/plain"
        import httpx

        try:
            response = await self._http().request(
                info.method,
                url,
                params={**params, **auth_query},
                headers={**send_headers, **auth_headers},
                **body,
            )
        except httpx.TimeoutException as exc:
            raise ProviderError(f"{info.method} {url} timed out after {self.timeout_seconds:g} s.") from exc
        except httpx.HTTPError as exc:
            raise ProviderError(f"{info.method} {url} failed: {type(exc).__name__}: {exc}") from exc
        shown_url = str(httpx.URL(url, params=params))
        if response.status_code >= 400:
            excerpt = response.text[:800].strip()
            raise ProviderError(
                f"{info.method} {shown_url} answered HTTP {response.status_code} {response.reason_phrase}"
                + (f": {excerpt}" if excerpt else ".")
            )
        if len(response.content) > self.max_response_bytes:
            raise ProviderError(
                f"{info.method} {shown_url} answered {len(response.content)} bytes, more than "
                f"{self.max_response_bytes}; narrow the request."
            )
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower() or None
        encoding, data = _decode(response.content, content_type)
        return SaaSRecord(
            source=self.name,
            operation=info.name,
            method=info.method,
            path=info.path,
            url=shown_url,
            status=response.status_code,
            content_type=content_type,
            encoding=encoding,
            data=data,
            fetched_at=dt.datetime.now(dt.UTC),
        )


def _decode(content: bytes, content_type: str | None) -> tuple[Literal["json", "text", "base64", "empty"], Any]:
    if not content:
        return "empty", None
    kind = content_type or ""
    if kind.endswith("json") or kind.endswith("+json"):
        try:
            return "json", json.loads(content)
        except ValueError:
            pass
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return "base64", base64.b64encode(content).decode()
    if not content_type or kind.startswith("text/") or "xml" in kind or "json" in kind or "javascript" in kind:
        return "text", text
    if kind.startswith(("image/", "audio/", "video/", "application/octet-stream", "application/pdf")):
        return "base64", base64.b64encode(content).decode()
    return "text", text


# -- database providers ---------------------------------------------------------------------------
class Row(BaseModel):
    """Base of the generated row models: fields named after columns (aliases where a name had to change)."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True, protected_namespaces=())


class Page(BaseModel):
    """One page of a lookup. Generated subclasses declare `rows: list[<Table>Row]`."""

    model_config = ConfigDict(serialize_by_alias=True)

    table: str
    rows: list[Any]
    next_cursor: str | None = Field(
        None, description="Pass it as `cursor` to get the next page; null on the last page."
    )
    limit: int


def parse_database_url(url: str) -> tuple[str, str]:
    """(kind, location): kind is duckdb, sqlite or postgresql; location a file path or the URL itself."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    base = scheme.split("+", 1)[0]
    if base in ("duckdb", "sqlite"):
        rest = url.split("://", 1)[1]
        if not rest.startswith("/"):
            raise ProviderError(f"Write a {base} URL as {base}:///relative/path or {base}:////absolute/path: {url}")
        path = unquote(urlsplit("x://" + rest).path)[1:]
        return base, path
    if base in ("postgresql", "postgres"):
        return "postgresql", url
    what = f"Unsupported database URL scheme {scheme!r}" if scheme else f"{url!r} is not a database URL"
    raise ProviderError(f"{what}: use duckdb:///file.duckdb, sqlite:///file.db or postgresql://user@host/database.")


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


class _Cursor:
    """Opaque page tokens: base64url JSON with the table and either the last key or an offset."""

    @staticmethod
    def encode(table: str, *, key: list[Any] | None = None, offset: int | None = None) -> str:
        payload: dict[str, Any] = {"t": table}
        if key is not None:
            payload["k"] = [_tag(v) for v in key]
        else:
            payload["o"] = offset
        return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode().rstrip("=")

    @staticmethod
    def decode(token: str, table: str) -> dict[str, Any]:
        try:
            payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            if payload.get("t") != table:
                raise ValueError
            if "k" in payload:
                payload["k"] = [_untag(v) for v in payload["k"]]
            elif not isinstance(payload.get("o"), int) or payload["o"] < 0:
                raise ValueError
            return payload
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ProviderError(
                f"Invalid cursor for the lookup of {table}: pass the next_cursor of the previous page unchanged."
            ) from exc


def _tag(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return {"dt": value.isoformat()}
    if isinstance(value, dt.date):
        return {"d": value.isoformat()}
    if isinstance(value, dt.time):
        return {"tm": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"n": str(value)}
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _untag(value: Any) -> Any:
    if isinstance(value, dict):
        ((kind, text),) = value.items()
        return {
            "dt": dt.datetime.fromisoformat,
            "d": dt.date.fromisoformat,
            "tm": dt.time.fromisoformat,
            "n": decimal.Decimal,
        }[kind](text)
    return value


def _plain(value: Any) -> Any:
    """A database value as pydantic validates it into the row models."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    return value


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class DuckDBBackend(SQLProvider):
    """The DuckDB backend: SQLProvider's read-only connection, schema and query, plus parameterised reads."""

    placeholder = "${}"

    def fetch(self, name: str, sql: str, params: dict[str, Any], limit: int) -> tuple[list[str], list[tuple]]:
        import duckdb

        with self._connect(name) as con:
            timer = threading.Timer(self.timeout_seconds, con.interrupt)
            timer.start()
            try:
                cursor = con.execute(sql, params)
                rows = cursor.fetchmany(limit)
                columns = [d[0] for d in cursor.description or []]
            except duckdb.InterruptException as exc:
                raise ProviderError(f"Lookup stopped after {self.timeout_seconds:g} s; add filters.") from exc
            except duckdb.Error as exc:
                raise ProviderError(f"{type(exc).__name__}: {exc}") from exc
            finally:
                timer.cancel()
        return columns, rows


class SQLAlchemyBackend:
    """SQLite and PostgreSQL through SQLAlchemy: a read-only file (SQLite) or read-only transactions."""

    placeholder = ":{}"

    def __init__(self, name: str, url: str, kind: str, *, timeout_seconds: float) -> None:
        from sqlalchemy import create_engine, event

        self.name = name
        self.kind = kind
        self.timeout_seconds = timeout_seconds
        if kind == "sqlite":
            path = Path(parse_database_url(url)[1]).resolve()
            self.location = str(path)
            if not path.exists():
                raise ProviderError(f"Database file for {name!r} is missing: {path}.")
            self.engine = create_engine(f"sqlite:///file:{quote(str(path))}?mode=ro&uri=true")

            @event.listens_for(self.engine, "connect")
            def _read_only(dbapi_connection: Any, _record: Any) -> None:
                dbapi_connection.execute("PRAGMA query_only = ON")

        else:
            self.location = redact_url(url)
            options = f"-c default_transaction_read_only=on -c statement_timeout={int(timeout_seconds * 1000)}"
            self.engine = create_engine(url, connect_args={"options": options}, pool_pre_ping=True)

    def fetch(self, _name: str, sql: str, params: dict[str, Any], limit: int) -> tuple[list[str], list[tuple]]:
        from sqlalchemy import exc, text

        try:
            with self.engine.connect() as con:
                result = con.execute(text(sql), params)
                rows = [tuple(r) for r in result.fetchmany(limit)]
                return list(result.keys()), rows
        except exc.DBAPIError as error:
            message = str(error.orig) if error.orig is not None else str(error)
            if "readonly" in message.lower() or "read-only" in message.lower():
                raise ProviderError(f"Refused by the read-only connection: {message}") from error
            raise ProviderError(f"{type(error.orig or error).__name__}: {message}") from error
        except exc.SQLAlchemyError as error:
            raise ProviderError(f"{type(error).__name__}: {error}") from error

    def query(self, sql: str, row_limit: int) -> QueryResult:
        """One read-only statement sent as written (no bind-parameter parsing), at most `row_limit` rows."""
        from sqlalchemy import exc

        started = time.perf_counter()
        try:
            with self.engine.connect() as con:
                result = con.exec_driver_sql(sql)
                rows = [tuple(r) for r in result.fetchmany(row_limit + 1)] if result.returns_rows else []
                names = list(result.keys()) if result.returns_rows else []
        except exc.DBAPIError as error:
            message = str(error.orig) if error.orig is not None else str(error)
            raise ProviderError(f"{type(error.orig or error).__name__}: {message}") from error
        truncated = len(rows) > row_limit
        rows = rows[:row_limit]
        types = [
            next((type(row[i]).__name__ for row in rows if row[i] is not None), "unknown") for i in range(len(names))
        ]
        return QueryResult(
            database=self.name,
            columns=[ResultColumn(name=n, type=t) for n, t in zip(names, types, strict=True)],
            rows=[[_plain(v) for v in row] for row in rows],
            row_count=len(rows),
            truncated=truncated,
            limit=row_limit,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 3),
        )

    def schema(self) -> DatabaseSchema:
        from sqlalchemy import inspect as sa_inspect

        return DatabaseSchema(name=self.name, path=self.location, tables=read_tables(sa_inspect(self.engine)))


def read_tables(inspector: Any) -> list[TableInfo]:
    """Tables and views of the default schema from a SQLAlchemy inspector, as `TableInfo` records."""
    tables = []
    for kind, names in (("table", inspector.get_table_names()), ("view", inspector.get_view_names())):
        for table in sorted(names):
            pk = list((inspector.get_pk_constraint(table) or {}).get("constrained_columns") or [])
            columns = [
                ColumnInfo(
                    name=col["name"],
                    type=str(col["type"]) if col.get("type") is not None else "",
                    nullable=bool(col.get("nullable", True)) and col["name"] not in pk,
                    primary_key=col["name"] in pk,
                    default=None if col.get("default") is None else str(col["default"]),
                )
                for col in inspector.get_columns(table)
            ]
            fks = [
                ForeignKey(
                    columns=list(fk["constrained_columns"]),
                    references_table=fk["referred_table"],
                    references_columns=list(fk["referred_columns"]),
                )
                for fk in (inspector.get_foreign_keys(table) if kind == "table" else [])
            ]
            tables.append(
                TableInfo(
                    schema=inspector.default_schema_name or "main",
                    name=table,
                    kind=kind,
                    columns=columns,
                    primary_key=pk,
                    foreign_keys=fks,
                )
            )
    return tables


class DatabaseProvider(GeneratedProvider):
    """Base of providers generated from a database: `schema`, a read-only `query`, and the generated lookups.

    The database is `database_url` (duckdb:///…, sqlite:///…, postgresql://…), or the value of the
    environment variable `database_url_env` when set (where a password belongs).
    """

    context_types = ["SQLSchema", "QueryResult"]
    database_url: ClassVar[str] = ""
    database_url_env: ClassVar[str | None] = None
    row_limit: ClassVar[int] = 500
    max_row_limit: ClassVar[int] = 10_000
    timeout_seconds: ClassVar[float] = 10.0

    def __init__(self) -> None:
        self._backend: Any = None
        self._lock = threading.Lock()

    def backend(self) -> Any:
        with self._lock:
            if self._backend is None:
                url = _env(self.database_url_env) or self.database_url
                if not url:
                    raise ProviderError(f"{self.name}: no database_url; set {self.database_url_env or 'it'}.")
                kind, location = parse_database_url(url)
                if kind == "duckdb":
                    self._backend = DuckDBBackend(
                        {self.name: location},
                        row_limit=self.row_limit,
                        max_row_limit=self.max_row_limit,
                        timeout_seconds=self.timeout_seconds,
                    )
                else:
                    self._backend = SQLAlchemyBackend(self.name, url, kind, timeout_seconds=self.timeout_seconds)
            return self._backend

    def resource_templates(self) -> list[ResourceTemplateSpec]:
        return [
            ResourceTemplateSpec(
                self.schema_resource,
                f"db://{self.name}/schema",
                "schema",
                f"The schema of {self.name}: tables and views, columns with types, primary and foreign keys.",
            )
        ]

    async def schema_resource(self) -> str:
        return (await self.schema()).model_dump_json(by_alias=True, indent=1)

    @tool(title="Database schema")
    async def schema(self) -> DatabaseSchema:
        """The database's tables and views: columns with types, primary and foreign keys."""
        backend = self.backend()
        if isinstance(backend, DuckDBBackend):
            return (await backend.schema(self.name)).databases[0]
        return await asyncio.to_thread(backend.schema)

    @tool(title="Read-only SQL query")
    async def query(
        self,
        sql: Annotated[str, Field(min_length=1, max_length=100_000, description="One read-only SELECT query.")],
        limit: Annotated[int | None, Field(ge=1, description="Maximum rows to return.")] = None,
    ) -> QueryResult:
        """Run one read-only SQL query and return columns and rows, capped at a row limit.

        Only a single SELECT / WITH / DESCRIBE / SHOW is accepted; writes, DDL, ATTACH, COPY and file
        readers are refused, and the database is opened read-only.
        """
        backend = self.backend()
        if isinstance(backend, DuckDBBackend):
            return await backend.query(sql, database=self.name, limit=limit)
        check_read_only(sql)
        return await asyncio.to_thread(backend.query, sql, min(limit or self.row_limit, self.max_row_limit))

    async def lookup(
        self,
        page_model: type[Page],
        *,
        table: str,
        key: list[str],
        unique: bool,
        filters: Mapping[str, Any],
        limit: int,
        cursor: str | None,
        schema: str | None = None,
    ) -> Page:
        """One page of `table` matching `filters` (None = any value), ordered by `key`.

        With a unique key the pages are keyset pages (stable while rows are added); otherwise they are
        offset pages ordered by every column.
        """
        row_model = get_args(page_model.model_fields["rows"].annotation)[0]
        columns = [field.alias or name for name, field in row_model.model_fields.items()]
        backend = self.backend()
        ph = backend.placeholder
        params: dict[str, Any] = {}
        where = []
        for column, value in filters.items():
            if value is None:
                continue
            param = f"p{len(params)}"
            params[param] = value
            where.append(f"{_quote(column)} = {ph.format(param)}")
        order = key if unique else columns
        position = _Cursor.decode(cursor, table) if cursor else None
        offset = 0
        if position is not None and "k" in position:
            names = []
            for value in position["k"]:
                names.append(ph.format(f"k{len(names)}"))
                params[f"k{len(names) - 1}"] = value
            left = ", ".join(_quote(c) for c in key)
            where.append(f"({left}) > ({', '.join(names)})" if len(key) > 1 else f"{left} > {names[0]}")
        elif position is not None:
            offset = position["o"]
        source = _quote(table) if schema is None else f"{_quote(schema)}.{_quote(table)}"
        sql = f"SELECT {', '.join(_quote(c) for c in columns)} FROM {source}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY " + ", ".join(_quote(c) for c in order) + f" LIMIT {int(limit) + 1}"
        if offset:
            sql += f" OFFSET {int(offset)}"
        names, rows = await asyncio.to_thread(backend.fetch, self.name, sql, params, limit + 1)
        records = [row_model.model_validate({n: _plain(v) for n, v in zip(names, row, strict=True)}) for row in rows]
        next_cursor = None
        if len(rows) > limit:
            records = records[:limit]
            if unique:
                last = dict(zip(names, rows[limit - 1], strict=True))
                next_cursor = _Cursor.encode(table, key=[last[c] for c in key])
            else:
                next_cursor = _Cursor.encode(table, offset=offset + limit)
        return page_model(table=table, rows=records, next_cursor=next_cursor, limit=limit)
