"""The `er` target: an entity-relationship model as DuckDB DDL plus a Mermaid `erDiagram`, the DDL run in a
scratch in-memory DuckDB and the diagram cross-checked against the tables and foreign keys it created."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from contextlab.copilot.context import ContextClient
from contextlab.copilot.engine import ContextItem, Validation
from contextlab.copilot.targets._common import fenced_blocks, schema_context
from contextlab.copilot.targets.mermaid import MANY, ERDiagram, MermaidError, parse_er_diagram

ER_TEMPLATE = """\
You design entity-relationship models. Answer with exactly two fenced blocks and nothing else:
1. a ```sql block with DuckDB DDL: CREATE TABLE statements (and CREATE TYPE / CREATE SEQUENCE if needed) with
   PRIMARY KEY and FOREIGN KEY ... REFERENCES constraints; no INSERT, no other statements;
2. a ```mermaid block with an `erDiagram` of the same model: one entity per table, named exactly like the
   table, listing its columns as `type name [PK|FK]` (types without commas, e.g. `decimal`), and one
   relationship per foreign key, e.g. `customers ||--o{ orders : places` (the referenced table on the `||`
   side).
Tables are created in order: a table must exist before a foreign key references it.
{% for item in context %}

## {{ item.title }}
{{ item.text }}
{% endfor %}
"""

ALLOWED_STATEMENTS = {"CREATE", "ALTER", "DROP"}


@dataclass
class Table:
    name: str
    columns: list[str]
    primary_key: set[str] = field(default_factory=set)
    foreign_keys: list[tuple[list[str], str, list[str]]] = field(default_factory=list)


def split_answer(code: str) -> tuple[str | None, str | None]:
    """(DDL, Mermaid diagram) from the two fenced blocks of an `er` answer."""
    ddl = diagram = None
    for lang, body in fenced_blocks(code):
        if lang in ("sql", "duckdb") and ddl is None:
            ddl = body
        elif (lang == "mermaid" or body.lstrip().startswith("erDiagram")) and diagram is None:
            diagram = body
    return ddl, diagram


def run_ddl(ddl: str) -> tuple[dict[str, Table] | None, str | None]:
    """Execute the DDL in a scratch in-memory DuckDB without file or network access; the tables it made."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        con.execute("SET enable_external_access = false")
        try:
            statements = con.extract_statements(ddl)
        except duckdb.Error as exc:
            return None, f"The DDL does not parse: {exc}"
        if not statements:
            return None, "The ```sql block holds no statement."
        cursor = 0
        for number, statement in enumerate(statements, 1):
            query = statement.query.strip()
            found = ddl.find(query[:40], cursor) if query else -1
            line = ddl.count("\n", 0, found) + 1 if found >= 0 else None
            cursor = found + 1 if found >= 0 else cursor
            head = " ".join(query.split())[:60]
            kind = statement.type.name
            if kind not in ALLOWED_STATEMENTS:
                return None, (
                    f"DDL statement {number} (line {line}: `{head}`) is of type {kind}; the ```sql block may "
                    "hold only CREATE / ALTER / DROP statements."
                )
            try:
                con.execute(statement)
            except duckdb.Error as exc:
                where = f"line {line}" if line else "?"
                return None, f"DDL statement {number} ({where}: `{head}`) failed: {exc}"
        return read_tables(con), None
    finally:
        con.close()


def read_tables(con: Any) -> dict[str, Table]:
    tables: dict[str, Table] = {}
    for schema, name in con.execute(
        "SELECT schema_name, table_name FROM duckdb_tables() WHERE NOT internal ORDER BY table_oid"
    ).fetchall():
        columns = [
            row[0]
            for row in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE schema_name = ? AND table_name = ? "
                "ORDER BY column_index",
                [schema, name],
            ).fetchall()
        ]
        tables[name.lower()] = Table(name, columns)
    for name, kind, columns, referenced, referenced_columns in con.execute(
        "SELECT table_name, constraint_type, constraint_column_names, referenced_table, referenced_column_names "
        "FROM duckdb_constraints() WHERE constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY')"
    ).fetchall():
        table = tables.get(name.lower())
        if table is None:
            continue
        if kind == "PRIMARY KEY":
            table.primary_key |= {c.lower() for c in columns}
        else:
            table.foreign_keys.append((list(columns), referenced, list(referenced_columns or [])))
    return tables


def cross_check(tables: dict[str, Table], diagram: ERDiagram) -> list[str]:
    """Mismatches between the tables and foreign keys of the DDL and the entities and relationships drawn."""
    problems: list[str] = []
    entities = {name.lower(): entity for name, entity in diagram.entities.items()}
    for key, table in tables.items():
        if key not in entities:
            problems.append(
                f"Table `{table.name}` in the DDL has no entity in the diagram (add `{table.name} {{ ... }}`)."
            )
    for key, entity in entities.items():
        if key not in tables:
            names = ", ".join(t.name for t in tables.values())
            problems.append(
                f"Entity `{entity.name}` (Mermaid line {entity.line}) has no table in the DDL; name entities exactly "
                f"like the tables ({names})."
            )
            continue
        table = tables[key]
        columns = {c.lower() for c in table.columns}
        fk_columns = {c.lower() for cols, _, _ in table.foreign_keys for c in cols}
        for attribute in entity.attributes:
            attr = attribute.name.lstrip("*").lower()
            if attr not in columns:
                problems.append(
                    f"Entity `{entity.name}` lists `{attribute.name}` (Mermaid line {attribute.line}), but table "
                    f"`{table.name}` has no such column (columns: {', '.join(table.columns)})."
                )
                continue
            if "PK" in attribute.keys and attr not in table.primary_key:
                problems.append(
                    f"`{entity.name}.{attribute.name}` is marked PK (Mermaid line {attribute.line}) but is not in the "
                    f"PRIMARY KEY of `{table.name}`."
                )
            if "FK" in attribute.keys and attr not in fk_columns:
                problems.append(
                    f"`{entity.name}.{attribute.name}` is marked FK (Mermaid line {attribute.line}) but no FOREIGN KEY "
                    f"of `{table.name}` uses it."
                )
    pairs: dict[frozenset[str], list[Any]] = {}
    for relationship in diagram.relationships:
        pairs.setdefault(frozenset((relationship.left.lower(), relationship.right.lower())), []).append(relationship)
    covered: set[frozenset[str]] = set()
    for key, table in tables.items():
        for columns, referenced, referenced_columns in table.foreign_keys:
            parent = referenced.lower()
            pair = frozenset((key, parent))
            covered.add(pair)
            fk = (
                f"FOREIGN KEY {table.name}({', '.join(columns)}) REFERENCES {referenced}"
                f"({', '.join(referenced_columns)})"
            )
            drawn = pairs.get(pair)
            if not drawn:
                problems.append(
                    f"{fk} has no relationship in the diagram: add e.g. `{referenced} ||--o{{ {table.name} : "
                    f'"{", ".join(columns)}"`.'
                )
                continue
            for relationship in drawn:
                if relationship.left.lower() == relationship.right.lower():  # self reference: either end
                    ends = [relationship.left_cardinality, relationship.right_cardinality]
                elif relationship.left.lower() == parent:
                    ends = [relationship.left_cardinality]
                else:
                    ends = [relationship.right_cardinality]
                end = ends[-1]
                if all(e in MANY for e in ends):
                    problems.append(
                        f"Relationship `{relationship.text}` (Mermaid line {relationship.line}) puts '{end}' on the "
                        f"`{referenced}` end, but {fk} points at one `{referenced}` row: use `||` (or `|o`) there."
                    )
    for pair, drawn in pairs.items():
        if pair not in covered and all(name in tables for name in pair):
            relationship = drawn[0]
            problems.append(
                f"Relationship `{relationship.text}` (Mermaid line {relationship.line}) has no FOREIGN KEY between "
                f"`{relationship.left}` and `{relationship.right}` in the DDL; add one or remove the relationship."
            )
    return problems


class ERTarget:
    """An ER model: DuckDB DDL (run in a scratch in-memory database, no file access) plus a Mermaid
    `erDiagram` (parsed), cross-checked: every table is an entity, every foreign key a relationship with a
    'one' end on the referenced table, every entity a table, listed attributes are real columns.

    `extract` keeps the answer's two fenced blocks (sql, then mermaid) as the code; `validate` splits them."""

    name = "er"
    template_name = "copilot.er"
    template = ER_TEMPLATE
    language = "markdown"
    max_tokens = 1500  # answers of this target run long

    def gather(self, client: ContextClient | None) -> list[ContextItem]:
        items = schema_context(client)
        for item in items:
            item.title = "Existing database schema (reuse its names where they fit)"
        return items

    def extract(self, text: str) -> str:
        ddl, diagram = split_answer(text)
        if ddl is None or diagram is None:
            return text.strip()
        return f"```sql\n{ddl}\n```\n\n```mermaid\n{diagram}\n```"

    def validate(self, code: str, client: ContextClient | None) -> Validation:
        ddl, diagram_text = split_answer(code)
        missing = [label for label, part in (("```sql", ddl), ("```mermaid", diagram_text)) if part is None]
        if missing:
            return Validation(
                False,
                f"The answer must hold a ```sql block (DDL) and a ```mermaid block (erDiagram); missing: "
                f"{' and '.join(missing)}.",
            )
        assert ddl is not None and diagram_text is not None
        tables, error = run_ddl(ddl)
        if error:
            return Validation(False, error)
        assert tables is not None
        if not tables:
            return Validation(False, "The DDL creates no table.")
        try:
            diagram = parse_er_diagram(diagram_text)
        except MermaidError as exc:
            return Validation(False, f"The erDiagram does not parse: {exc}")
        problems = cross_check(tables, diagram)
        if problems:
            return Validation(False, "The diagram does not match the DDL:\n" + "\n".join(f"- {p}" for p in problems))
        return Validation(
            True,
            detail={
                "tables": [t.name for t in tables.values()],
                "foreign_keys": sum(len(t.foreign_keys) for t in tables.values()),
                "relationships": len(diagram.relationships),
            },
        )
