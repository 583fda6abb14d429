"""Text-to-SQL evaluation: the question / gold-SQL suite format and execution matching.

A text-to-SQL suite is stored as JSON Lines, one case a line (blank lines are skipped):

```
{"id": "revenue-2025", "question": "What was our total revenue in 2025?", "gold_sql": "SELECT ...", "tags": ["join"]}
```

`question` and `gold_sql` are required non-empty strings; `id` (a non-empty string, unique in the
file; default `<file stem>-<line>`) and `tags` (a list of strings) are optional; any other field is
an error. `load_sql_suite` reports a malformed line as `file:line: field: what is wrong`.

A prediction is judged by what it returns, not by its text (execution accuracy, as in Spider and
BIRD): `execution_match` runs the gold and the predicted query on the same DuckDB connection and
compares the results; see its docstring for the rules.

The packaged suite over the demo shop database (`contextlab.workspace.create_demo_workspace`) is
`packaged_suite("shop_sql.jsonl")`.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import duckdb

from .suite import SuiteFormatError

SQL_CASE_FIELDS = ("id", "question", "gold_sql", "tags")
SHOP_SUITE = "shop_sql.jsonl"

__all__ = [
    "SHOP_SUITE",
    "GoldQueryError",
    "MatchResult",
    "SQLCase",
    "SuiteFormatError",
    "execution_match",
    "gold_is_ordered",
    "load_sql_suite",
    "packaged_suite",
]


@dataclass
class SQLCase:
    """One question with the DuckDB query whose result answers it."""

    id: str
    question: str
    gold_sql: str
    tags: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The case as one JSON-ready suite line."""
        return {"id": self.id, "question": self.question, "gold_sql": self.gold_sql, "tags": list(self.tags)}


def packaged_suite(name: str = SHOP_SUITE) -> Traversable:
    """A suite file shipped in `contextlab.evaluation/suites/` (works from an editable install too)."""
    return resources.files("contextlab.evaluation") / "suites" / name


def load_sql_suite(path: str | os.PathLike[str] | Traversable) -> list[SQLCase]:
    """Read a text-to-SQL suite; a malformed line raises `SuiteFormatError` naming file, line and field."""
    where = str(path)
    stem = Path(getattr(path, "name", where)).stem
    cases: list[SQLCase] = []
    first_line: dict[str, int] = {}
    opener = path.open if not isinstance(path, str | os.PathLike) else Path(path).open
    with opener("r", encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                data = json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as error:
                raise SuiteFormatError(
                    f"invalid JSON ({error.msg} at column {error.colno})", path=where, line=number
                ) from None
            try:
                case = _case_from_dict(data, default_id=f"{stem}-{number}")
            except SuiteFormatError as error:
                raise SuiteFormatError(error.detail, field=error.field, path=where, line=number) from None
            if case.id in first_line:
                raise SuiteFormatError(
                    f"duplicate id {case.id!r} (first used on line {first_line[case.id]})",
                    field="id",
                    path=where,
                    line=number,
                )
            first_line[case.id] = number
            cases.append(case)
    if not cases:
        raise SuiteFormatError("the suite holds no cases", path=where)
    return cases


def _case_from_dict(data: Any, *, default_id: str) -> SQLCase:
    if not isinstance(data, dict):
        raise SuiteFormatError(f"expected a JSON object, got {_json_type(data)}")
    unknown = [key for key in data if key not in SQL_CASE_FIELDS]
    if unknown:
        raise SuiteFormatError(f"unknown field; a case has only {', '.join(SQL_CASE_FIELDS)}", field=unknown[0])
    question = _text(data, "question")
    gold_sql = _text(data, "gold_sql")
    case_id = _text(data, "id") if "id" in data else default_id
    tags = data.get("tags", [])
    if not isinstance(tags, list):
        raise SuiteFormatError(f"expected a list of strings, got {_json_type(tags)}", field="tags")
    for index, tag in enumerate(tags):
        if not isinstance(tag, str):
            raise SuiteFormatError(f"expected a string, got {_json_type(tag)}", field=f"tags[{index}]")
    return SQLCase(id=case_id, question=question, gold_sql=gold_sql, tags=list(tags))


def _text(data: dict[str, Any], name: str) -> str:
    if name not in data:
        raise SuiteFormatError("is missing", field=name)
    value = data[name]
    if not isinstance(value, str):
        raise SuiteFormatError(f"expected a string, got {_json_type(value)}", field=name)
    if not value.strip():
        raise SuiteFormatError("must not be empty", field=name)
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}[
        type(value)
    ]


# -- execution matching ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchResult:
    """Whether a prediction returns the gold result; `reason` says why not (None on a match)."""

    match: bool
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.match


class GoldQueryError(ValueError):
    """The gold query itself failed or returned too much: a broken suite, not a wrong prediction."""


@dataclass
class _Result:
    columns: list[str]
    rows: list[tuple[Any, ...]]


def gold_is_ordered(sql: str) -> bool:
    """True if the query's outermost SELECT (or set operation) has an ORDER BY.

    ORDER BY inside subqueries, CTEs or window functions does not count: it does not order the result.
    """
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(sql, read="duckdb")
    except sqlglot.errors.SqlglotError:
        return False
    while isinstance(tree, exp.Subquery | exp.Paren) and tree.args.get("order") is None:
        tree = tree.this
    return tree is not None and tree.args.get("order") is not None


def execution_match(
    con: duckdb.DuckDBPyConnection,
    predicted_sql: str,
    gold_sql: str,
    *,
    ordered: bool | None = None,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-6,
    timeout_s: float | None = 30.0,
    max_rows: int = 100_000,
) -> MatchResult:
    """Run both queries on `con` and say whether the predicted result equals the gold result.

    Open `con` read-only (`duckdb.connect(path, read_only=True)`, best with
    `config={"enable_external_access": False}`); the predicted query must also pass the sql
    provider's read-only guard (one SELECT-like statement, no file readers), else it does not match.

    The rules (Spider / BIRD execution accuracy, made tolerant where the SQL text is free to differ):

    - **Errors**: a predicted query that is refused, fails, runs over `timeout_s` or returns more
      than `max_rows` rows does not match; `reason` carries the error text. A failing gold query
      raises `GoldQueryError`.
    - **Shape**: both results need the same number of columns and of rows. An extra or a missing
      column is a mismatch; column *names* are ignored.
    - **Values**: `Decimal` is read as float; numbers compare with `math.isclose(rel_tol, abs_tol)`
      (so `3`, `3.0` and `Decimal('3.00')` are equal, `1/3` and `0.3333` are not); NULL equals NULL
      and NaN equals NaN; a timestamp at exactly midnight equals the date of that day; strings,
      booleans, dates and times compare exactly.
    - **Rows**: compared as multisets (sorted tuples of values, duplicates counted), unless the
      comparison is ordered: then row i must equal row i. Ordering is enforced when `ordered` is
      True, or when it is None (the default) and the gold query has a top-level ORDER BY (found
      with sqlglot; ORDER BY in subqueries or windows does not count). The gold's order is taken
      as written, so gold queries should order without ties.
    - **Column order**: ignored. The columns are first compared as given; if that fails, each gold
      column is paired with a predicted column holding the same multiset of values, and every such
      pairing (up to 1,000) is tried.
    """
    from sqlglot.errors import SqlglotError

    from contextlab.providers.sql import SQLRefused, SQLUnparsable, check_read_only

    try:
        gold = _run(con, gold_sql, timeout_s, max_rows)
    except _TooManyRows:
        raise GoldQueryError(f"The gold query returned more than {max_rows} rows.") from None
    except duckdb.Error as exc:
        raise GoldQueryError(f"The gold query failed: {type(exc).__name__}: {exc}") from exc
    if not predicted_sql or not predicted_sql.strip():
        return MatchResult(False, "there is no predicted query")
    try:
        check_read_only(predicted_sql)
    except (SQLUnparsable, SqlglotError) as exc:
        return MatchResult(False, f"the predicted query does not parse: {exc}")
    except SQLRefused as exc:
        return MatchResult(False, f"the predicted query was refused: {exc}")
    try:
        predicted = _run(con, predicted_sql, timeout_s, max_rows)
    except _TooManyRows:
        return MatchResult(False, f"the predicted query returned more than {max_rows} rows")
    except duckdb.InterruptException:
        return MatchResult(False, f"the predicted query did not finish within {timeout_s} s")
    except duckdb.Error as exc:
        return MatchResult(False, f"the predicted query failed: {type(exc).__name__}: {_first_lines(str(exc))}")
    if ordered is None:
        ordered = gold_is_ordered(gold_sql)
    return compare_results(
        gold.rows, predicted.rows, gold_columns=gold.columns, ordered=ordered, rel_tol=rel_tol, abs_tol=abs_tol
    )


def compare_results(
    gold_rows: Sequence[Sequence[Any]],
    predicted_rows: Sequence[Sequence[Any]],
    *,
    gold_columns: Sequence[str] | None = None,
    ordered: bool = False,
    rel_tol: float = 1e-6,
    abs_tol: float = 1e-6,
) -> MatchResult:
    """Compare two fetched results by the rules of `execution_match` (the ordering decided by the caller)."""
    gold = [tuple(_normalize(v) for v in row) for row in gold_rows]
    pred = [tuple(_normalize(v) for v in row) for row in predicted_rows]
    width = len(gold[0]) if gold else len(gold_columns or ())
    pred_width = len(pred[0]) if pred else width
    if gold and pred and pred_width != width:
        return MatchResult(False, f"the predicted result has {pred_width} column(s), the gold result {width}")
    if len(pred) != len(gold):
        return MatchResult(False, f"the predicted result has {len(pred)} row(s), the gold result {len(gold)}")
    if not gold:
        return MatchResult(True)
    eq = _Equality(rel_tol, abs_tol)
    reordered: list[tuple[Any, ...]] | None = None  # a column pairing with the right rows in the wrong order
    for perm in _column_pairings(gold, pred, eq):
        candidate = [tuple(row[i] for i in perm) for row in pred] if perm != tuple(range(width)) else pred
        if ordered:
            if all(eq.rows(g, p) for g, p in zip(gold, candidate, strict=True)):
                return MatchResult(True)
            if reordered is None and _same_multiset(gold, candidate, eq):
                reordered = candidate
        elif _same_multiset(gold, candidate, eq):
            return MatchResult(True)
    if reordered is not None:
        first = next(i for i, (g, p) in enumerate(zip(gold, reordered, strict=True)) if not eq.rows(g, p))
        return MatchResult(
            False,
            "the predicted result has the right rows in the wrong order (the gold query has ORDER BY); "
            f"first difference at row {first + 1}",
        )
    for index in range(width if width > 1 else 0):
        column = [row[index] for row in gold]
        if not any(eq.columns(column, [row[j] for row in pred]) for j in range(width)):
            name = f" ({gold_columns[index]})" if gold_columns and index < len(gold_columns) else ""
            return MatchResult(False, f"no predicted column holds the values of gold column {index + 1}{name}")
    missing = _first_unmatched(gold, pred, eq)
    detail = f"; e.g. the gold row {_short(missing)} is not in the prediction" if missing is not None else ""
    return MatchResult(False, f"the predicted rows differ from the gold rows{detail}")


class _TooManyRows(Exception):
    pass


def _run(con: duckdb.DuckDBPyConnection, sql: str, timeout_s: float | None, max_rows: int) -> _Result:
    timer = threading.Timer(timeout_s, con.interrupt) if timeout_s else None
    if timer is not None:
        timer.daemon = True
        timer.start()
    try:
        cursor = con.execute(sql)
        columns = [d[0] for d in cursor.description or []]
        rows = cursor.fetchmany(max_rows + 1)
    finally:
        if timer is not None:
            timer.cancel()
    if len(rows) > max_rows:
        raise _TooManyRows
    return _Result(columns, [tuple(r) for r in rows])


def _normalize(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime) and value.tzinfo is None and value.time() == dt.time():
        return value.date()
    if isinstance(value, list | tuple):
        return tuple(_normalize(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((str(k), _normalize(v)) for k, v in value.items()))
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _sort_key(value: Any) -> tuple[int, Any]:
    """A total order over mixed values; numbers are rounded to 6 significant digits so near-equal ones sit together."""
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if _is_number(value):
        number = float(value)
        if math.isnan(number):
            return (2, math.inf)
        return (2, float(f"{number:.6g}"))
    if isinstance(value, str):
        return (3, value)
    if isinstance(value, dt.date | dt.time):
        return (4, value.isoformat())
    if isinstance(value, dt.timedelta):
        return (5, value.total_seconds())
    return (6, repr(value))


def _row_key(row: tuple[Any, ...]) -> tuple[tuple[int, Any], ...]:
    return tuple(_sort_key(v) for v in row)


class _Equality:
    def __init__(self, rel_tol: float, abs_tol: float) -> None:
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol

    def values(self, a: Any, b: Any) -> bool:
        if _is_number(a) and _is_number(b):
            if isinstance(a, int) and isinstance(b, int):
                return a == b
            x, y = float(a), float(b)
            if math.isnan(x) or math.isnan(y):
                return math.isnan(x) and math.isnan(y)
            return math.isclose(x, y, rel_tol=self.rel_tol, abs_tol=self.abs_tol)
        if isinstance(a, tuple) and isinstance(b, tuple):
            return self.rows(a, b)
        return type(a) is type(b) and a == b

    def rows(self, a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
        return len(a) == len(b) and all(self.values(x, y) for x, y in zip(a, b, strict=True))

    def columns(self, a: list[Any], b: list[Any]) -> bool:
        return all(self.values(x, y) for x, y in zip(sorted(a, key=_sort_key), sorted(b, key=_sort_key), strict=True))


def _same_multiset(gold: list[tuple[Any, ...]], pred: list[tuple[Any, ...]], eq: _Equality) -> bool:
    if all(eq.rows(g, p) for g, p in zip(sorted(gold, key=_row_key), sorted(pred, key=_row_key), strict=True)):
        return True
    # Sorting can separate near-equal numbers that round differently; pair rows greedily within
    # groups that agree on every non-numeric value before giving up.
    return _first_unmatched(gold, pred, eq) is None


def _first_unmatched(
    gold: list[tuple[Any, ...]], pred: list[tuple[Any, ...]], eq: _Equality, limit: int = 3000
) -> tuple[Any, ...] | None:
    """The first gold row with no equal predicted row left (greedy pairing); None if all pair up."""

    def group(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(None if _is_number(v) else _sort_key(v) for v in row)

    buckets: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
    for row in pred:
        buckets.setdefault(group(row), []).append(row)
    for row in gold:
        bucket = buckets.get(group(row), [])
        if len(bucket) > limit:
            return row
        for index, candidate in enumerate(bucket):
            if eq.rows(row, candidate):
                del bucket[index]
                break
        else:
            return row
    return None


def _column_pairings(
    gold: list[tuple[Any, ...]], pred: list[tuple[Any, ...]], eq: _Equality, limit: int = 1000
) -> Iterator[tuple[int, ...]]:
    """Predicted column index for each gold column: the identity first, then pairings of equal value multisets."""
    width = len(gold[0])
    identity = tuple(range(width))
    yield identity
    gold_cols = [[row[i] for row in gold] for i in range(width)]
    pred_cols = [[row[j] for row in pred] for j in range(width)]
    options = [[j for j in range(width) if eq.columns(gold_cols[i], pred_cols[j])] for i in range(width)]
    if any(not choices for choices in options):
        return
    count = 0
    chosen: list[int] = []

    def search(i: int) -> Iterator[tuple[int, ...]]:
        nonlocal count
        if count >= limit:
            return
        if i == width:
            count += 1
            yield tuple(chosen)
            return
        for j in options[i]:
            if j not in chosen:
                chosen.append(j)
                yield from search(i + 1)
                chosen.pop()

    for perm in search(0):
        if perm != identity:
            yield perm


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_lines(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
