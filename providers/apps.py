"""PageDSL apps as context: what apps exist, their definitions, and a validator for drafts.

The Copilot's `page` target reads `apps__list` to avoid taken names and reuse tables; any MCP client can
read an app (`apps__get`, or the resource `apps://app/{name}`) and check a draft (`apps__validate`) with
the same errors the app builder shows.

Served on its own it reads the state store of `$CONTEXTLAB_WORKSPACE` (default: the current folder).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field

from contextlab.providers.base import Provider, ProviderError, ResourceTemplateSpec, ToolSpec


class AppSummary(BaseModel):
    name: str
    title: str
    current_version: int
    published_version: int | None
    pages: list[str] = Field(description="Page routes.")
    tables: list[str] = Field(description="Tables of the app's data model.")


class AppList(BaseModel):
    apps: list[AppSummary]


class AppDefinition(BaseModel):
    name: str
    version: int
    published: bool
    yaml: str = Field(description="The PageDSL document as YAML.")


class DSLIssueModel(BaseModel):
    path: str
    line: int | None
    message: str


class ValidationResult(BaseModel):
    valid: bool
    issues: list[DSLIssueModel]


class QueryResult(BaseModel):
    app: str
    query: str
    kind: str = Field(description="read or write")
    columns: list[str] = Field(default_factory=list)
    rows: list[list[Any]] = Field(default_factory=list, description="At most `limit` rows (read queries).")
    truncated: bool = False
    affected: int | None = Field(None, description="Rows changed (write queries).")


def _default_store() -> Any:
    from contextlab.apps.store import AppStore
    from contextlab.state import StateStore, sqlite_url_for_workspace

    workspace = Path(os.environ.get("CONTEXTLAB_WORKSPACE") or Path.cwd())
    state = StateStore(sqlite_url_for_workspace(workspace / ".contextlab"))
    state.migrate()
    return AppStore(state, workspace / "apps")


class AppsProvider(Provider):
    name = "apps"
    description = "No-code apps (PageDSL): the apps of this workspace, their definitions, and a draft validator."
    context_types = ["PageDSL"]

    def __init__(self, store: Any = None) -> None:
        self.store = store if store is not None else _default_store()

    def tool_specs(self) -> list[ToolSpec]:
        return [
            ToolSpec(
                self.list,
                "list",
                "The workspace's apps: name, title, current and published version, page routes and the tables "
                "of each app's data model.",
                "List apps",
            ),
            ToolSpec(
                self.get,
                "get",
                "One app's PageDSL definition as YAML (the current version unless `version` is given).",
                "Get an app",
            ),
            ToolSpec(
                self.validate,
                "validate",
                "Check a PageDSL draft (YAML or JSON text): schema, references between components, queries "
                "and tables, SQL, parameters, roles and layout. Returns every issue with its path and line.",
                "Validate an app draft",
            ),
            ToolSpec(
                self.run_query,
                "run_query",
                "Run one of a published app's named queries with typed parameters (never spliced into the SQL). "
                "Read queries return rows; write queries (e.g. an approval flow recording its outcome) return "
                "the number of rows changed.",
                "Run an app query",
                read_only=False,
                idempotent=False,
            ),
        ]

    def resource_templates(self) -> list[ResourceTemplateSpec]:
        return [
            ResourceTemplateSpec(
                self.app_resource, "apps://app/{name}", "app", "An app's current PageDSL definition (YAML)."
            ),
        ]

    def _list(self) -> AppList:
        out = []
        for info in self.store.list():
            doc = self.store.get(info.name).dsl
            out.append(
                AppSummary(
                    name=info.name,
                    title=info.title,
                    current_version=info.current_version,
                    published_version=info.published_version,
                    pages=[p["route"] for p in doc.get("pages", [])],
                    tables=sorted((doc.get("data") or {}).get("tables") or {}),
                )
            )
        return AppList(apps=out)

    async def list(self) -> AppList:
        return await asyncio.to_thread(self._list)

    def _get(self, name: str, version: int | None) -> AppDefinition:
        from contextlab.apps import dsl
        from contextlab.apps.store import AppNotFound

        try:
            saved = self.store.get(name, version)
            info = self.store.info(name)
        except AppNotFound as exc:
            raise ProviderError(str(exc)) from exc
        return AppDefinition(
            name=name,
            version=saved.version,
            published=info.published_version == saved.version,
            yaml=dsl.to_yaml(saved.dsl),
        )

    async def get(
        self,
        name: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$", description="The app's name.")],
        version: Annotated[int | None, Field(ge=1, description="A saved version; default the current one.")] = None,
    ) -> AppDefinition:
        return await asyncio.to_thread(self._get, name, version)

    def _validate(self, text: str) -> ValidationResult:
        from contextlab.apps import dsl
        from contextlab.apps.db import catalog

        try:
            doc, document = dsl.parse(text)
            doc = dsl.upgrade(doc)
        except dsl.DSLValidationError as exc:
            return ValidationResult(valid=False, issues=[DSLIssueModel(**i.to_dict()) for i in exc.issues])
        issues = dsl.validate(doc, catalog=catalog(self.store.data_dir, doc), document=document)
        return ValidationResult(valid=not issues, issues=[DSLIssueModel(**i.to_dict()) for i in issues])

    async def validate(
        self,
        text: Annotated[str, Field(min_length=1, max_length=500_000, description="The draft, as YAML or JSON.")],
    ) -> ValidationResult:
        return await asyncio.to_thread(self._validate, text)

    def _run_query(self, app: str, query: str, params: dict[str, Any], limit: int) -> QueryResult:
        from contextlab.apps import db
        from contextlab.apps.dsl import DEFAULT_SOURCE
        from contextlab.apps.store import AppNotFound

        try:
            doc = self.store.published(app).dsl
        except AppNotFound as exc:
            raise ProviderError(str(exc)) from exc
        queries = doc.get("queries") or {}
        if query not in queries:
            raise ProviderError(
                f"app {app!r} has no query {query!r}; its queries: {', '.join(sorted(queries)) or 'none'}"
            )
        spec = queries[query]
        try:
            path = db.source_path(self.store.data_dir, doc, spec.get("source", DEFAULT_SOURCE))
            result = db.run_query(path, spec, params)
        except db.AppDataError as exc:
            raise ProviderError(f"{app}.{query}: {exc}") from exc
        kind = spec.get("kind", "read")
        if kind != "read":
            return QueryResult(app=app, query=query, kind=kind, affected=int(result))
        rows = json.loads(result.head(limit).to_json(orient="values", date_format="iso"))
        return QueryResult(
            app=app, query=query, kind=kind, columns=list(result.columns), rows=rows, truncated=len(result) > limit
        )

    async def run_query(
        self,
        app: Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$", description="A published app's name.")],
        query: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$", description="The query's name.")],
        params: Annotated[
            dict[str, str | int | float | bool | None] | None,
            Field(description="Values of the query's declared parameters."),
        ] = None,
        limit: Annotated[int, Field(ge=1, le=10_000, description="Most rows to return.")] = 500,
    ) -> QueryResult:
        return await asyncio.to_thread(self._run_query, app, query, params or {}, limit)

    async def app_resource(self, name: str) -> str:
        definition = await asyncio.to_thread(self._get, name, None)
        return definition.yaml

    def schema_json(self) -> str:
        from contextlab.apps import dsl

        return json.dumps(dsl.schema())
