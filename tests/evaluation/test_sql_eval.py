"""Text-to-SQL evaluation: the packaged shop suite, execution matching, the suite loader, and one
end-to-end run of `benchmarks/copilot_sql.py` against a real ContextLab server with a scripted model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from contextlab.evaluation.sql import (
    GoldQueryError,
    SuiteFormatError,
    execution_match,
    gold_is_ordered,
    load_sql_suite,
    packaged_suite,
)
from contextlab.workspace import create_demo_workspace
from tests.support.fake_llm import FakeLLM

REPO = Path(__file__).resolve().parents[2]
CASES = load_sql_suite(packaged_suite())


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    root = create_demo_workspace(tmp_path_factory.mktemp("sql-eval"))
    with duckdb.connect(str(root / "data" / "shop.duckdb"), read_only=True) as connection:
        yield connection


# -- the packaged suite -------------------------------------------------------------------------------


def test_the_packaged_suite_is_large_and_unique():
    assert str(packaged_suite()).endswith("suites/shop_sql.jsonl")
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
    assert len({" ".join(c.question.lower().split()) for c in CASES}) == len(CASES)
    assert all(c.tags for c in CASES)
    tags = {tag for c in CASES for tag in c.tags}
    assert {"join", "window", "date", "subquery", "percentage", "null", "having", "top-k", "distinct"} <= tags


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_gold_query_runs_on_the_demo_database_and_returns_rows(con, case):
    lowered = case.gold_sql.lower()
    assert not any(word in lowered for word in ("now()", "current_date", "current_timestamp", "today()"))
    rows = con.execute(case.gold_sql).fetchall()
    assert rows, f"{case.id}: the gold query returns no rows"
    assert any(value is not None for row in rows for value in row), f"{case.id}: only NULLs"
    assert execution_match(con, case.gold_sql, case.gold_sql).match


# -- execution matching --------------------------------------------------------------------------------

BY_CATEGORY = "SELECT category, avg(unit_price) AS avg_price FROM products GROUP BY category"
TOP3 = "SELECT name, unit_price FROM products ORDER BY unit_price DESC LIMIT 3"


def test_same_rows_in_another_order_match_when_the_gold_is_unordered(con):
    assert execution_match(con, f"{BY_CATEGORY} ORDER BY category DESC", BY_CATEGORY).match


def test_an_ordered_gold_rejects_the_right_rows_in_the_wrong_order(con):
    wrong = f"SELECT * FROM ({TOP3}) ORDER BY unit_price"
    result = execution_match(con, wrong, TOP3)
    assert not result.match and "wrong order" in result.reason and "ORDER BY" in result.reason
    assert execution_match(con, TOP3, TOP3).match
    assert execution_match(con, wrong, TOP3, ordered=False).match  # the caller may waive the order
    unordered_gold = f"SELECT * FROM ({TOP3})"
    assert execution_match(con, wrong, unordered_gold).match
    assert not execution_match(con, wrong, unordered_gold, ordered=True).match


def test_swapped_columns_match_but_an_extra_or_missing_column_does_not(con):
    assert execution_match(con, "SELECT avg(unit_price), category FROM products GROUP BY category", BY_CATEGORY)
    swapped_ordered = "SELECT unit_price, name FROM products ORDER BY unit_price DESC LIMIT 3"
    assert execution_match(con, swapped_ordered, TOP3).match
    extra = execution_match(con, "SELECT category, avg(unit_price), count(*) FROM products GROUP BY 1", BY_CATEGORY)
    assert not extra.match and extra.reason == "the predicted result has 3 column(s), the gold result 2"
    missing = execution_match(con, "SELECT category FROM products GROUP BY 1", BY_CATEGORY)
    assert not missing.match and "1 column(s)" in missing.reason
    wrong_values = execution_match(con, "SELECT category, max(unit_price) FROM products GROUP BY 1", BY_CATEGORY)
    assert not wrong_values.match and "gold column 2 (avg_price)" in wrong_values.reason


def test_numbers_compare_with_a_small_tolerance_and_types_are_normalised(con):
    assert execution_match(con, "SELECT 0.333333333333::DOUBLE", "SELECT 1 / 3").match
    assert execution_match(con, "SELECT 1 / 3 + 1e-9", "SELECT 1 / 3").match
    close = execution_match(con, "SELECT round(1 / 3, 2)", "SELECT 1 / 3")
    assert not close.match and "the gold row (0.333" in close.reason
    assert execution_match(con, "SELECT 12.5::DOUBLE", "SELECT 12.50::DECIMAL(10, 2)").match
    assert execution_match(con, "SELECT 3.0", "SELECT 3").match
    assert execution_match(con, "SELECT NULL::INTEGER, 'a'", "SELECT NULL, 'a'").match
    assert execution_match(con, "SELECT DATE '2025-03-01'", "SELECT TIMESTAMP '2025-03-01 00:00:00'").match
    assert not execution_match(con, "SELECT DATE '2025-03-01'", "SELECT TIMESTAMP '2025-03-01 00:00:01'").match
    assert not execution_match(con, "SELECT '3'", "SELECT 3").match


def test_rows_are_compared_as_multisets(con):
    gold = "SELECT * FROM (VALUES (1), (1), (2)) t(x)"
    assert execution_match(con, "SELECT * FROM (VALUES (2), (1), (1)) t(x)", gold).match
    result = execution_match(con, "SELECT * FROM (VALUES (1), (2), (2)) t(x)", gold)
    assert result.reason == (
        "the predicted rows differ from the gold rows; e.g. the gold row (1,) is not in the prediction"
    )
    fewer = execution_match(con, "SELECT * FROM (VALUES (1), (2)) t(x)", gold)
    assert fewer.reason == "the predicted result has 2 row(s), the gold result 3"


def test_a_failing_or_refused_prediction_does_not_match_and_says_why(con):
    failed = execution_match(con, "SELECT nope FROM products", BY_CATEGORY)
    assert not failed.match and failed.reason.startswith("the predicted query failed: BinderException")
    assert '"nope" not found' in failed.reason
    refused = execution_match(con, "DELETE FROM products", BY_CATEGORY)
    assert not refused.match and "refused" in refused.reason and "DELETE" in refused.reason
    garbled = execution_match(con, "SELECT name FROM products WHERE name = 'SQL", BY_CATEGORY)
    assert not garbled.match and garbled.reason.startswith("the predicted query does not parse")
    empty = execution_match(con, "  ", BY_CATEGORY)
    assert not empty.match and empty.reason == "there is no predicted query"
    assert con.execute("SELECT count(*) FROM products").fetchone()[0] == 20


def test_a_broken_gold_query_raises(con):
    with pytest.raises(GoldQueryError, match="The gold query failed: .*nope"):
        execution_match(con, "SELECT 1", "SELECT nope FROM products")


@pytest.mark.parametrize(
    ("sql", "ordered"),
    [
        (TOP3, True),
        (BY_CATEGORY, False),
        ("WITH x AS (SELECT 1 AS a) SELECT a FROM x ORDER BY a", True),
        ("SELECT 1 AS a UNION ALL SELECT 2 ORDER BY a", True),
        ("SELECT * FROM (SELECT name FROM products ORDER BY name)", False),
        ("SELECT name, row_number() OVER (ORDER BY unit_price) FROM products", False),
    ],
)
def test_only_a_top_level_order_by_orders_the_gold(sql, ordered):
    assert gold_is_ordered(sql) is ordered


# -- the suite loader ----------------------------------------------------------------------------------

GOOD = '{"id": "a", "question": "How many customers?", "gold_sql": "SELECT count(*) FROM customers"}'


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"question": "q", ', "invalid JSON (Expecting property name enclosed in double quotes at column 19)"),
        ("[1, 2]", "expected a JSON object, got a list"),
        ('{"gold_sql": "SELECT 1"}', "question: is missing"),
        ('{"question": "q", "gold_sql": 7}', "gold_sql: expected a string, got a number"),
        ('{"question": "  ", "gold_sql": "SELECT 1"}', "question: must not be empty"),
        ('{"question": "q", "gold_sql": "SELECT 1", "tags": "join"}', "tags: expected a list of strings, got a string"),
        ('{"question": "q", "gold_sql": "SELECT 1", "tags": ["join", 3]}', "tags[1]: expected a string, got a number"),
        ('{"question": "q", "gold": "SELECT 1"}', "gold: unknown field; a case has only id, question, gold_sql, tags"),
        ('{"id": "a", "question": "q", "gold_sql": "SELECT 1"}', "id: duplicate id 'a' (first used on line 1)"),
        ('{"id": null, "question": "q", "gold_sql": "SELECT 1"}', "id: expected a string, got null"),
    ],
)
def test_a_malformed_line_is_reported_with_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "suite.jsonl"
    path.write_text(f"{GOOD}\n\n{line}\n", encoding="utf-8")
    with pytest.raises(SuiteFormatError) as info:
        load_sql_suite(path)
    assert str(info.value) == f"{path}:3: {message}"
    assert info.value.line == 3


def test_ids_default_to_file_and_line_and_an_empty_suite_is_an_error(tmp_path):
    path = tmp_path / "mini.jsonl"
    path.write_text(f'{GOOD}\n{{"question": "q", "gold_sql": "SELECT 1", "tags": ["x"]}}\n', encoding="utf-8")
    cases = load_sql_suite(path)
    assert [c.id for c in cases] == ["a", "mini-2"] and cases[1].tags == ["x"]
    assert cases[0].to_dict() == {**json.loads(GOOD), "tags": []}
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(SuiteFormatError, match="empty.jsonl: the suite holds no cases"):
        load_sql_suite(tmp_path / "empty.jsonl")


# -- the benchmark, end to end -------------------------------------------------------------------------


def test_the_benchmark_script_end_to_end_with_a_model_that_answers_the_gold_sql():
    gold = {case.question: case.gold_sql for case in CASES[:3]}

    def reply(body):
        return f"```sql\n{gold[body['messages'][-1]['content']]}\n```"

    with FakeLLM(reply) as llm:
        run = subprocess.run(
            [
                sys.executable,
                str(REPO / "benchmarks" / "copilot_sql.py"),
                "--base-url",
                llm.base_url,
                "--model-id",
                "gold-oracle",
                "--limit",
                "3",
                "--details",
                "--json-only",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
        )
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads(run.stdout)  # exactly one JSON object on stdout
    for key in (
        "cases",
        "accuracy_with_context",
        "accuracy_without_context",
        "first_suggestion_usable",
        "accuracy_after_repair",
        "p50_s",
        "p95_s",
        "model",
        "valid_rate_with_context",
        "repairs_used",
        "details",
    ):
        assert key in report, key
    assert report["cases"] == 3 and report["model"] == "gold-oracle"
    assert report["accuracy_with_context"] == 1.0 and report["accuracy_after_repair"] == 1.0
    assert report["first_suggestion_usable"] == 1.0 and report["valid_rate_with_context"] == 1.0
    assert report["accuracy_without_context"] == 1.0 and report["repairs_used"] == 0
    assert report["p50_s"] <= report["p95_s"]
    assert [d["id"] for d in report["details"]] == [c.id for c in CASES[:3]]
    # One request with the schema and one without per question, in that order.
    systems = [request["messages"][0]["content"] for request in llm.requests]
    assert len(systems) == 6
    assert ["customers(" in s for s in systems] == [True, False] * 3
