"""Question → SQL pairs generated from a workspace's own DuckDB database, to teach the offline model
that database before any user feedback exists.

Templates cover what analysts ask (counts, group-bys, top-N, filters on real values, date buckets,
joins along foreign keys, min/max/average). Each one is filled from the schema and from values
sampled in the data, then executed: only pairs whose SQL runs and returns rows are kept. Questions
get several wordings, so a model learns the mapping rather than one phrasing.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import duckdb

_NUMERIC = re.compile(r"^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|DECIMAL|DOUBLE|FLOAT|REAL|NUMERIC)", re.I)
_TEMPORAL = re.compile(r"^(DATE|TIMESTAMP)", re.I)
_TEXT = re.compile(r"^(VARCHAR|TEXT|STRING)", re.I)


@dataclass(frozen=True)
class SQLExample:
    request: str
    code: str
    template: str
    target: str = "sql"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Table:
    name: str
    rows: int
    columns: dict[str, str]
    primary_key: list[str]
    foreign_keys: list[tuple[str, str, str]]  # (column, referenced table, referenced column)
    categories: dict[str, list[Any]]

    @property
    def singular(self) -> str:
        return _singular(self.name)

    def numeric(self) -> list[str]:
        return [c for c, t in self.columns.items() if _NUMERIC.match(t) and not _is_key(c, self)]

    def temporal(self) -> list[str]:
        return [c for c, t in self.columns.items() if _TEMPORAL.match(t)]

    def label(self) -> str | None:
        """A column that names a row (name, title, email), for readable top-N answers."""
        for candidate in ("name", "title", "label", "email"):
            if candidate in self.columns:
                return candidate
        return None


def generate_sql_examples(database: str | Path, *, limit: int = 400, seed: int = 0) -> list[SQLExample]:
    """Up to `limit` distinct, executable (question, SQL) pairs about `database`'s tables."""
    rng = random.Random(seed)
    with duckdb.connect(str(database), read_only=True) as con:
        tables = _tables(con)
        candidates: list[SQLExample] = []
        for make in _TEMPLATES:
            for table in tables.values():
                candidates.extend(make(table, tables, rng))
        rng.shuffle(candidates)
        kept: list[SQLExample] = []
        seen: set[str] = set()
        for example in candidates:
            key = example.request.lower()
            if key in seen:
                continue
            try:
                rows = con.execute(example.code).fetchmany(1)
            except duckdb.Error:
                continue
            if rows:
                seen.add(key)
                kept.append(example)
            if len(kept) >= limit:
                break
    return kept


def _tables(con: duckdb.DuckDBPyConnection) -> dict[str, _Table]:
    from contextlab.providers.sql import _read_tables

    out: dict[str, _Table] = {}
    for info in _read_tables(con):
        if info.kind != "table" or not info.row_count:
            continue
        columns = {c.name: c.type for c in info.columns}
        categories: dict[str, list[Any]] = {}
        for column, dtype in columns.items():
            if not _TEXT.match(dtype) or column.endswith("_id"):
                continue
            distinct = con.execute(f'SELECT count(DISTINCT "{column}") FROM "{info.name}"').fetchone()[0]
            if 1 < distinct <= 30:
                values = con.execute(
                    f'SELECT "{column}" FROM "{info.name}" WHERE "{column}" IS NOT NULL '
                    f"GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 8"
                ).fetchall()
                categories[column] = [v[0] for v in values]
        out[info.name] = _Table(
            name=info.name,
            rows=info.row_count or 0,
            columns=columns,
            primary_key=list(info.primary_key),
            foreign_keys=[
                (fk.columns[0], fk.references_table, (fk.references_columns or ["?"])[0])
                for fk in info.foreign_keys
                if fk.columns
            ],
            categories=categories,
        )
    return out


def _is_key(column: str, table: _Table) -> bool:
    return column in table.primary_key or column.endswith("_id") or column == "id"


def _singular(name: str) -> str:
    if name.endswith("ies"):
        return name[:-3] + "y"
    if name.endswith("s") and not name.endswith("ss"):
        return name[:-1]
    return name


def _words(column: str) -> str:
    return column.replace("_", " ")


def _quote(value: Any) -> str:
    return "'" + str(value).replace("'", "''") + "'"


Template = Callable[[_Table, dict[str, _Table], random.Random], Iterator[SQLExample]]


def _count(table: _Table, _all: dict[str, _Table], rng: random.Random) -> Iterator[SQLExample]:
    for question in (f"How many {table.name} are there?", f"Count the {table.name}.", f"Number of {table.name}"):
        yield SQLExample(question, f"SELECT count(*) AS n FROM {table.name}", "count")


def _count_by(table: _Table, _all: dict[str, _Table], rng: random.Random) -> Iterator[SQLExample]:
    for column in table.categories:
        sql = f"SELECT {column}, count(*) AS n FROM {table.name} GROUP BY {column} ORDER BY n DESC"
        for question in (
            f"How many {table.name} per {_words(column)}?",
            f"Number of {table.name} by {_words(column)}",
            f"Break down {table.name} by {_words(column)}.",
        ):
            yield SQLExample(question, sql, "count_by")


def _filter_count(table: _Table, _all: dict[str, _Table], rng: random.Random) -> Iterator[SQLExample]:
    for column, values in table.categories.items():
        for value in values[:4]:
            sql = f"SELECT count(*) AS n FROM {table.name} WHERE {column} = {_quote(value)}"
            question = rng.choice(
                [
                    f"How many {table.name} have {_words(column)} {value}?",
                    f"Count {table.name} where {_words(column)} is {value}.",
                    f"How many {value} {table.name} are there?",
                ]
            )
            yield SQLExample(question, sql, "filter_count")


def _aggregate(table: _Table, _all: dict[str, _Table], rng: random.Random) -> Iterator[SQLExample]:
    for column in table.numeric():
        words = _words(column)
        for fn, phrase in (("avg", "average"), ("max", "highest"), ("min", "lowest"), ("sum", "total")):
            sql = f"SELECT {fn}({column}) AS {fn}_{column} FROM {table.name}"
            yield SQLExample(f"What is the {phrase} {words} of {table.name}?", sql, f"aggregate_{fn}")
        for category in table.categories:
            sql = (
                f"SELECT {category}, avg({column}) AS avg_{column} FROM {table.name} "
                f"GROUP BY {category} ORDER BY avg_{column} DESC"
            )
            yield SQLExample(f"Average {words} by {_words(category)} for {table.name}", sql, "avg_by")


def _top(table: _Table, _all: dict[str, _Table], rng: random.Random) -> Iterator[SQLExample]:
    label = table.label()
    for column in table.numeric():
        n = rng.choice([3, 5, 10])
        shown = f"{label}, {column}" if label else "*"
        sql = f"SELECT {shown} FROM {table.name} ORDER BY {column} DESC LIMIT {n}"
        yield SQLExample(f"Top {n} {table.name} by {_words(column)}", sql, "top")
        sql = f"SELECT {shown} FROM {table.name} ORDER BY {column} ASC LIMIT {n}"
        yield SQLExample(f"Which {n} {table.name} have the lowest {_words(column)}?", sql, "bottom")


def _distinct(table: _Table, _all: dict[str, _Table], rng: random.Random) -> Iterator[SQLExample]:
    for column in table.categories:
        sql = f"SELECT DISTINCT {column} FROM {table.name} ORDER BY {column}"
        yield SQLExample(f"List the different {_words(column)} values of {table.name}.", sql, "distinct")


def _temporal(table: _Table, _all: dict[str, _Table], rng: random.Random) -> Iterator[SQLExample]:
    for column in table.temporal():
        words = _words(column)
        sql = (
            f"SELECT date_trunc('month', {column}) AS month, count(*) AS n FROM {table.name} "
            "GROUP BY month ORDER BY month"
        )
        yield SQLExample(f"How many {table.name} per month (by {words})?", sql, "per_month")
        sql = f"SELECT year({column}) AS year, count(*) AS n FROM {table.name} GROUP BY year ORDER BY year"
        yield SQLExample(f"Number of {table.name} per year of {words}", sql, "per_year")
        sql = f"SELECT min({column}) AS first, max({column}) AS last FROM {table.name}"
        yield SQLExample(f"What are the earliest and latest {words} in {table.name}?", sql, "range")


def _joins(table: _Table, tables: dict[str, _Table], rng: random.Random) -> Iterator[SQLExample]:
    for column, parent_name, parent_key in table.foreign_keys:
        parent = tables.get(parent_name)
        if parent is None:
            continue
        for category in parent.categories:
            sql = (
                f"SELECT p.{category}, count(*) AS n FROM {table.name} c JOIN {parent.name} p "
                f"ON c.{column} = p.{parent_key} GROUP BY p.{category} ORDER BY n DESC"
            )
            yield SQLExample(f"How many {table.name} per {parent.singular} {_words(category)}?", sql, "join_count_by")
            for measure in table.numeric():
                sql = (
                    f"SELECT p.{category}, sum(c.{measure}) AS total_{measure} FROM {table.name} c "
                    f"JOIN {parent.name} p ON c.{column} = p.{parent_key} GROUP BY p.{category} "
                    f"ORDER BY total_{measure} DESC"
                )
                yield SQLExample(
                    f"Total {table.singular} {_words(measure)} by {parent.singular} {_words(category)}",
                    sql,
                    "join_sum_by",
                )
        label = parent.label()
        if label:
            n = rng.choice([5, 10])
            sql = (
                f"SELECT p.{label}, count(*) AS n FROM {table.name} c JOIN {parent.name} p "
                f"ON c.{column} = p.{parent_key} GROUP BY p.{label} ORDER BY n DESC LIMIT {n}"
            )
            yield SQLExample(f"Which {n} {parent.name} have the most {table.name}?", sql, "join_top")


def _value_measure(table: _Table) -> tuple[str, str] | None:
    """`quantity * price`-style revenue when a table has both a count-like and a price-like column."""
    numeric = table.numeric()
    counts = [c for c in numeric if any(w in c for w in ("quantity", "qty", "units", "count"))]
    prices = [c for c in numeric if any(w in c for w in ("price", "amount", "cost"))]
    if counts and prices:
        return f"{counts[0]} * {prices[0]}", "revenue"
    return None


def _revenue(table: _Table, tables: dict[str, _Table], rng: random.Random) -> Iterator[SQLExample]:
    measure = _value_measure(table)
    if measure is None:
        return
    expr, name = measure
    yield SQLExample(f"What is the total {name}?", f"SELECT sum({expr}) AS {name} FROM {table.name}", "revenue")
    # One hop (order_items → products) and two hops (order_items → orders → customers).
    for column, parent_name, parent_key in table.foreign_keys:
        parent = tables.get(parent_name)
        if parent is None:
            continue
        join = f"FROM {table.name} c JOIN {parent.name} p ON c.{column} = p.{parent_key}"
        for category in parent.categories:
            sql = f"SELECT p.{category}, sum(c.{expr.replace(' * ', ' * c.')}) AS {name} {join} "
            sql += f"GROUP BY p.{category} ORDER BY {name} DESC"
            yield SQLExample(f"{name.capitalize()} by {parent.singular} {_words(category)}", sql, "revenue_by")
        for when in parent.temporal():
            sql = (
                f"SELECT date_trunc('month', p.{when}) AS month, sum(c.{expr.replace(' * ', ' * c.')}) AS {name} "
                f"{join} GROUP BY month ORDER BY month"
            )
            yield SQLExample(f"Monthly {name}", sql, "revenue_by_month")
        for hop_column, grand_name, grand_key in parent.foreign_keys:
            grand = tables.get(grand_name)
            if grand is None:
                continue
            join2 = f"{join} JOIN {grand.name} g ON p.{hop_column} = g.{grand_key}"
            for category in grand.categories:
                sql = f"SELECT g.{category}, sum(c.{expr.replace(' * ', ' * c.')}) AS {name} {join2} "
                sql += f"GROUP BY g.{category} ORDER BY {name} DESC"
                yield SQLExample(f"{name.capitalize()} per {grand.singular} {_words(category)}", sql, "revenue_2hop")
            label = grand.label()
            if label:
                n = rng.choice([3, 5, 10])
                sql = f"SELECT g.{label}, sum(c.{expr.replace(' * ', ' * c.')}) AS {name} {join2} "
                sql += f"GROUP BY g.{label} ORDER BY {name} DESC LIMIT {n}"
                yield SQLExample(f"Top {n} {grand.name} by {name}", sql, "revenue_top")


def _year_filter(table: _Table, _all: dict[str, _Table], rng: random.Random) -> Iterator[SQLExample]:
    for column in table.temporal():
        for year in (2024, 2025, 2026):
            sql = f"SELECT count(*) AS n FROM {table.name} WHERE year({column}) = {year}"
            yield SQLExample(f"How many {table.name} in {year} (by {_words(column)})?", sql, "year_filter")


_TEMPLATES: list[Template] = [
    _count,
    _count_by,
    _filter_count,
    _aggregate,
    _top,
    _distinct,
    _temporal,
    _joins,
    _revenue,
    _year_filter,
]
