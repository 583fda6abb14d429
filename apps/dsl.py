"""PageDSL: the versioned document that describes a no-code app (schema in `schema/`, guide in docs/apps.md).

`validate` returns every problem with its JSON path (and YAML line when the text is known): first the JSON
Schema (2020-12), then what a schema cannot say — references between parts, SQL that parses and reads only
tables that exist, declared parameters, roles, and a layout that fits its grid.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import sqlglot
import yaml
from sqlglot import exp

from contextlab.copilot.targets._common import YAMLDocument, json_path, yaml_error

DSL_VERSION = "1.0"
SCHEMA_FILE = "pagedsl-1.0.schema.json"
COMPONENT_TYPES = ("button", "chart", "filter", "form", "indicator", "markdown", "table", "tasks")
EVENT_KINDS = {"submit": "form", "click": "button", "select": "table"}
DEFAULT_SOURCE = "main"
PARAM_RE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
TOP_LEVEL_ORDER = ("dsl", "app", "roles", "data", "queries", "pages", "events", "flows", "environments")


@dataclass(frozen=True)
class DSLIssue:
    """One problem in a PageDSL document: where (`path`, `line`) and what."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = self.path + (f" (line {self.line})" if self.line else "")
        return f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "message": self.message, "line": self.line}


class DSLValidationError(ValueError):
    """A document that is not a valid PageDSL app; `issues` lists every problem found."""

    def __init__(self, issues: Sequence[DSLIssue], headline: str = "The app definition is invalid") -> None:
        self.issues = list(issues)
        lines = "\n".join(f"- {issue}" for issue in self.issues[:20])
        more = f"\n- … and {len(self.issues) - 20} more" if len(self.issues) > 20 else ""
        super().__init__(f"{headline}:\n{lines}{more}")


class DSLVersionError(DSLValidationError):
    """A document written for a PageDSL version this ContextLab cannot read."""


@cache
def schema() -> dict[str, Any]:
    """The PageDSL JSON Schema (draft 2020-12) shipped with the package."""
    text = (resources.files("contextlab.apps") / "schema" / SCHEMA_FILE).read_text(encoding="utf-8")
    return json.loads(text)


@cache
def _validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema())


# --------------------------------------------------------------------------- parsing and export


def parse(text: str) -> tuple[dict[str, Any], YAMLDocument | None]:
    """A YAML or JSON document as a dict, with the YAML line map; `DSLValidationError` if it does not parse."""
    try:
        document = YAMLDocument(text)
    except yaml.YAMLError as exc:
        raise DSLValidationError(
            [DSLIssue("(document root)", yaml_error(exc))], "The app file does not parse"
        ) from None
    if not isinstance(document.data, dict):
        raise DSLValidationError(
            [DSLIssue("(document root)", "an app is a mapping with `dsl`, `app` and `pages`")],
            "The app file does not parse",
        )
    return document.data, document


def to_yaml(doc: Mapping[str, Any]) -> str:
    """The document as YAML, top-level keys in schema order, everything else as written."""
    ordered = {key: doc[key] for key in TOP_LEVEL_ORDER if key in doc}
    ordered.update({k: v for k, v in doc.items() if k not in ordered})
    return yaml.safe_dump(_plain(ordered), sort_keys=False, allow_unicode=True, width=110)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def load(text: str, *, catalog: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Parse, check the version and validate; the document, or `DSLValidationError` with every issue."""
    doc, document = parse(text)
    return check(doc, catalog=catalog, document=document)


def check(
    doc: Mapping[str, Any],
    *,
    catalog: Mapping[str, Mapping[str, Any]] | None = None,
    document: YAMLDocument | None = None,
) -> dict[str, Any]:
    """`doc` upgraded to the current version if it is valid; otherwise raise `DSLValidationError`."""
    doc = upgrade(doc)
    issues = validate(doc, catalog=catalog, document=document)
    if issues:
        raise DSLValidationError(issues)
    return doc


def upgrade(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Check `doc["dsl"]` against `DSL_VERSION`: same major and an older or equal minor are read (and
    rewritten to the current version); anything else raises `DSLVersionError` saying what to do."""
    raw = doc.get("dsl")
    if raw is None:
        raise DSLVersionError(
            [DSLIssue("dsl", f'the document does not say its PageDSL version; add `dsl: "{DSL_VERSION}"`')],
            "The app file has no version",
        )
    match = re.fullmatch(r"(\d+)\.(\d+)", str(raw))
    if match is None:
        raise DSLVersionError([DSLIssue("dsl", f"{raw!r} is not a version such as {DSL_VERSION!r}")], "Bad version")
    major, minor = int(match[1]), int(match[2])
    cur_major, cur_minor = (int(p) for p in DSL_VERSION.split("."))
    if major != cur_major or minor > cur_minor:
        hint = (
            "upgrade ContextLab (`pip install -U contextlab`) to read it"
            if (major, minor) > (cur_major, cur_minor)
            else f"export it again from a ContextLab that writes PageDSL {cur_major}.x"
        )
        raise DSLVersionError(
            [DSLIssue("dsl", f"written for PageDSL {raw}; this ContextLab reads {cur_major}.0–{DSL_VERSION}: {hint}")],
            "The app file's version is not supported",
        )
    out = copy.deepcopy(dict(doc))
    out["dsl"] = DSL_VERSION  # minor versions only add optional keys, so older documents read unchanged
    return out


# --------------------------------------------------------------------------- validation


def validate(
    doc: Mapping[str, Any],
    *,
    catalog: Mapping[str, Mapping[str, Any]] | None = None,
    document: YAMLDocument | None = None,
) -> list[DSLIssue]:
    """Every problem in `doc`. `catalog` maps source name → {table name → columns} for tables that already
    exist in the app's databases (queries may read those as well as the modelled ones)."""

    def issue(path: Sequence[Any], message: str) -> DSLIssue:
        return DSLIssue(json_path(path), message, document.line_of(path) if document else None)

    issues: list[DSLIssue] = []
    for error in sorted(_validator().iter_errors(doc), key=lambda e: [str(p) for p in e.path]):
        issues.append(issue(list(error.path), _schema_message(error)))
    if issues:
        return _dedupe(issues)
    checker = _Checker(doc, catalog or {}, issue)
    checker.run()
    return _dedupe(checker.issues)


def _dedupe(issues: list[DSLIssue]) -> list[DSLIssue]:
    seen: set[tuple[str, str]] = set()
    out = []
    for item in issues:
        key = (item.path, item.message)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


def _schema_message(error: Any) -> str:
    path = list(error.path)
    if error.validator == "enum" and path and path[-1] == "type" and "components" in path:
        return f"unknown component type {error.instance!r}; known types: {', '.join(COMPONENT_TYPES)}"
    if error.validator == "additionalProperties" and error.schema.get("additionalProperties") is False:
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"{error.message} (allowed here: {allowed})"
    if error.validator == "oneOf" and isinstance(error.instance, dict) and "do" not in error.instance:
        keys = ("run_query", "start_flow", "navigate", "notify", "refresh")
        present = [k for k in keys if k in error.instance]
        if not present:
            return "an action needs one of: " + ", ".join(keys)
        return f"an action does one thing; this one has {', '.join(present)} — split it into separate actions"
    if error.validator == "pattern" and error.schema.get("pattern", "").startswith("^[A-Za-z_]"):
        return f"{error.instance!r} is not a valid name (letters, digits and _, not starting with a digit)"
    return error.message


class _Checker:
    """The rules a JSON Schema cannot express."""

    def __init__(self, doc: Mapping[str, Any], catalog: Mapping[str, Mapping[str, Any]], issue: Any) -> None:
        self.doc = doc
        self.catalog = catalog
        self.issue = issue
        self.issues: list[DSLIssue] = []
        data = doc.get("data") or {}
        self.sources = set((data.get("sources") or {}) or {DEFAULT_SOURCE: None})
        self.tables: dict[str, Mapping[str, Any]] = data.get("tables") or {}
        self.queries: dict[str, Mapping[str, Any]] = doc.get("queries") or {}
        self.flows = set(doc.get("flows") or {})
        self.roles = set(doc.get("roles") or [])
        self.components: dict[str, tuple[list[Any], Mapping[str, Any]]] = {}
        self.routes: set[str] = set()

    def add(self, path: Sequence[Any], message: str) -> None:
        self.issues.append(self.issue(list(path), message))

    def run(self) -> None:
        self.check_tables()
        for name, query in self.queries.items():
            self.check_query(name, query)
        self.collect_pages()
        for cid, (path, comp) in self.components.items():
            self.check_component(cid, path, comp)
        for i, event in enumerate(self.doc.get("events") or []):
            self.check_event(i, event)

    # data ------------------------------------------------------------------

    def known_tables(self, source: str) -> dict[str, set[str]]:
        tables = {
            name: set(t["fields"]) for name, t in self.tables.items() if t.get("source", DEFAULT_SOURCE) == source
        }
        for name, columns in (self.catalog.get(source) or {}).items():
            tables.setdefault(name, set(columns))
        return tables

    def check_tables(self) -> None:
        for name, table in self.tables.items():
            base = ["data", "tables", name]
            source = table.get("source", DEFAULT_SOURCE)
            if source not in self.sources:
                self.add([*base, "source"], f"unknown source {source!r}; declared: {', '.join(sorted(self.sources))}")
            fields = table["fields"]
            for fname, spec in fields.items():
                fpath = [*base, "fields", fname]
                if spec.get("generated") and (not spec.get("key") or spec["type"] not in ("integer", "bigint")):
                    self.add(fpath, "`generated` is for an integer key field (key: true, type: integer or bigint)")
                if "enum" in spec and spec.get("default") is not None and spec["default"] not in spec["enum"]:
                    self.add([*fpath, "default"], f"default {spec['default']!r} is not one of {spec['enum']}")
                if spec.get("scale") is not None and spec.get("scale", 0) > spec.get("precision", 18):
                    self.add([*fpath, "scale"], "scale cannot exceed precision")
                if "min" in spec and "max" in spec and spec["min"] > spec["max"]:
                    self.add(fpath, f"min ({spec['min']}) is greater than max ({spec['max']})")
                ref = spec.get("references")
                if ref:
                    rtable, rfield = ref.split(".")
                    if rtable not in self.tables:
                        self.add([*fpath, "references"], f"references table {rtable!r}, which the model does not have")
                    elif rfield not in self.tables[rtable]["fields"]:
                        self.add([*fpath, "references"], f"table {rtable!r} has no field {rfield!r}")

    def check_query(self, name: str, query: Mapping[str, Any]) -> None:
        base = ["queries", name]
        source = query.get("source", DEFAULT_SOURCE)
        if source not in self.sources:
            self.add([*base, "source"], f"unknown source {source!r}; declared: {', '.join(sorted(self.sources))}")
        sql = query["sql"]
        try:
            statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
        except sqlglot.errors.ParseError as exc:
            first = exc.errors[0] if exc.errors else {}
            where = f" at line {first.get('line')}, column {first.get('col')}" if first else ""
            self.add([*base, "sql"], f"the SQL does not parse{where}: {first.get('description', exc)}")
            return
        if len(statements) != 1:
            self.add([*base, "sql"], f"a query is one statement; found {len(statements)}")
            return
        tree = statements[0]
        kind = query.get("kind", "read")
        reading = isinstance(tree, exp.Query)
        writing = isinstance(tree, exp.Insert | exp.Update | exp.Delete)
        if kind == "read" and not reading:
            self.add([*base, "sql"], f"a read query must be a SELECT; this is {tree.key.upper()} (set kind: write)")
        if kind == "write" and not writing:
            self.add([*base, "sql"], f"a write query must be INSERT, UPDATE or DELETE; this is {tree.key.upper()}")
        ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
        known = self.known_tables(source)
        for table in tree.find_all(exp.Table):
            tname = table.name
            if not tname or tname in ctes or table.args.get("db") is not None:
                continue
            if tname not in known:
                hint = ", ".join(sorted(known)) or "none"
                self.add([*base, "sql"], f"table {tname!r} does not exist in source {source!r} (tables: {hint})")
        declared = set(query.get("params") or {})
        used = set(PARAM_RE.findall(_strip_strings(sql)))
        for param in sorted(used - declared):
            self.add([*base, "params"], f"the SQL uses ${param}, which is not declared under params")
        for param in sorted(declared - used):
            self.add([*base, "params", param], f"parameter {param!r} is declared but the SQL never uses ${param}")

    # pages and components -----------------------------------------------------

    def collect_pages(self) -> None:
        page_ids: set[str] = set()
        for p, page in enumerate(self.doc["pages"]):
            base = ["pages", p]
            if page["id"] in page_ids:
                self.add([*base, "id"], f"page id {page['id']!r} is used twice")
            page_ids.add(page["id"])
            if page["route"] in self.routes:
                self.add([*base, "route"], f"route {page['route']!r} is used by two pages")
            self.routes.add(page["route"])
            self.check_roles([*base, "roles"], page.get("roles") or [])
            columns = page.get("columns", 12)
            cells: dict[tuple[int, int], str] = {}
            for c, comp in enumerate(page["components"]):
                cpath = [*base, "components", c]
                if comp["id"] in self.components:
                    self.add([*cpath, "id"], f"component id {comp['id']!r} is used twice")
                    continue
                self.components[comp["id"]] = (cpath, comp)
                self.check_roles([*cpath, "roles"], comp.get("roles") or [])
                pos = comp.get("position")
                if not pos:
                    continue
                if pos["x"] + pos["w"] > columns:
                    self.add(
                        [*cpath, "position"], f"x + w = {pos['x'] + pos['w']} exceeds the page's {columns} columns"
                    )
                    continue
                for x in range(pos["x"], pos["x"] + pos["w"]):
                    for y in range(pos["y"], pos["y"] + pos["h"]):
                        other = cells.get((x, y))
                        if other is not None:
                            self.add([*cpath, "position"], f"overlaps component {other!r} at column {x}, row {y}")
                            break
                        cells[(x, y)] = comp["id"]
                    else:
                        continue
                    break

    def check_roles(self, path: list[Any], roles: Sequence[str]) -> None:
        for role in roles:
            if self.roles and role not in self.roles:
                self.add(path, f"role {role!r} is not declared under roles ({', '.join(sorted(self.roles))})")

    def check_component(self, cid: str, path: list[Any], comp: Mapping[str, Any]) -> None:
        kind = comp["type"]
        if "query" in comp and comp["query"] not in self.queries:
            self.add([*path, "query"], f"unknown query {comp['query']!r}; queries: {', '.join(self.queries) or 'none'}")
        elif "query" in comp:
            declared = set(self.queries[comp["query"]].get("params") or {})
            for param in comp.get("params") or {}:
                if param not in declared:
                    self.add([*path, "params", param], f"query {comp['query']!r} has no parameter {param!r}")
        if kind == "form":
            table = self.tables.get(comp["table"])
            if table is None:
                self.add(
                    [*path, "table"], f"unknown table {comp['table']!r}; tables: {', '.join(self.tables) or 'none'}"
                )
            else:
                for f, fname in enumerate(comp.get("fields") or []):
                    if fname not in table["fields"]:
                        self.add([*path, "fields", f], f"table {comp['table']!r} has no field {fname!r}")
            for a, action in enumerate(comp.get("on_submit") or []):
                self.check_action([*path, "on_submit", a], action)
        if kind == "button":
            for a, action in enumerate(comp["on_click"]):
                self.check_action([*path, "on_click", a], action)
        if kind == "filter":
            for t, target in enumerate(comp["targets"]):
                tpath = [*path, "targets", t]
                if target not in self.components:
                    self.add(tpath, f"unknown component {target!r}")
                    continue
                query = self.components[target][1].get("query")
                if query is None or query not in self.queries:
                    self.add(tpath, f"component {target!r} has no query to filter")
                elif comp["param"] not in (self.queries[query].get("params") or {}):
                    self.add(tpath, f"query {query!r} of {target!r} has no parameter {comp['param']!r}")
        if kind == "tasks" and comp["flow"] not in self.flows:
            self.add(
                [*path, "flow"], f"unknown flow {comp['flow']!r}; flows: {', '.join(sorted(self.flows)) or 'none'}"
            )

    def check_event(self, i: int, event: Mapping[str, Any]) -> None:
        path: list[Any] = ["events", i]
        cid, what = event["on"].split(".")
        if cid not in self.components:
            self.add([*path, "on"], f"unknown component {cid!r}")
        else:
            kind = self.components[cid][1]["type"]
            if EVENT_KINDS[what] != kind:
                self.add([*path, "on"], f"{cid!r} is a {kind}; `{what}` happens on a {EVENT_KINDS[what]}")
        for a, action in enumerate(event["do"]):
            self.check_action([*path, "do", a], action)

    def check_action(self, path: list[Any], action: Mapping[str, Any]) -> None:
        if "run_query" in action:
            query = self.queries.get(action["run_query"])
            if query is None:
                self.add([*path, "run_query"], f"unknown query {action['run_query']!r}")
            else:
                declared = set(query.get("params") or {})
                for param in action.get("params") or {}:
                    if param not in declared:
                        self.add([*path, "params", param], f"query {action['run_query']!r} has no parameter {param!r}")
        if "start_flow" in action and action["start_flow"] not in self.flows:
            self.add([*path, "start_flow"], f"unknown flow {action['start_flow']!r}")
        if "navigate" in action and action["navigate"] not in self.routes:
            self.add([*path, "navigate"], f"no page has route {action['navigate']!r}")
        for r, target in enumerate(action.get("refresh") or []):
            if target not in self.components:
                self.add([*path, "refresh", r], f"unknown component {target!r}")


def _strip_strings(sql: str) -> str:
    """SQL without its string literals and comments (a `$x` inside a string is not a parameter)."""
    return re.sub(r"'(?:[^']|'')*'|--[^\n]*|/\*.*?\*/", "''", sql, flags=re.S)


def referenced_tables(doc: Mapping[str, Any]) -> set[str]:
    """Tables the document's queries read or write (CTEs excluded)."""
    out: set[str] = set()
    for query in (doc.get("queries") or {}).values():
        try:
            tree = sqlglot.parse_one(query["sql"], read="duckdb")
        except sqlglot.errors.ParseError:
            continue
        ctes = {cte.alias_or_name for cte in tree.find_all(exp.CTE)}
        out |= {t.name for t in tree.find_all(exp.Table) if t.name and t.name not in ctes}
    return out


def components(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Every component by id, across pages."""
    return {c["id"]: c for page in doc.get("pages") or [] for c in page.get("components") or []}
