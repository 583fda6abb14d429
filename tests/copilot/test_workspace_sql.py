"""Question → SQL pairs generated from the workspace's own DuckDB database."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import sqlglot

from contextlab.copilot.workspace_sql import generate_sql_examples
from contextlab.workspace import create_demo_workspace


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_demo_workspace(tmp_path_factory.mktemp("ws")) / "data" / "shop.duckdb"


def test_pairs_run_return_rows_and_are_distinct(shop: Path) -> None:
    examples = generate_sql_examples(shop, limit=500)
    assert len(examples) >= 80
    assert len({e.request.lower() for e in examples}) == len(examples)
    with duckdb.connect(str(shop), read_only=True) as con:
        for example in examples:
            assert con.execute(example.code).fetchmany(1), example
            assert sqlglot.parse_one(example.code, read="duckdb").key == "select"
    templates = {e.template for e in examples}
    assert {"count", "count_by", "filter_count", "join_count_by", "revenue_2hop", "per_month"} <= templates


def test_joins_follow_the_foreign_keys(shop: Path) -> None:
    examples = generate_sql_examples(shop, limit=500)
    two_hop = [e for e in examples if e.template == "revenue_2hop"]
    assert two_hop and all("JOIN orders p ON c.order_id = p.order_id" in e.code for e in two_hop)
    assert all("JOIN customers g ON p.customer_id = g.customer_id" in e.code for e in two_hop)


def test_filters_use_values_from_the_data(shop: Path) -> None:
    with duckdb.connect(str(shop), read_only=True) as con:
        countries = {row[0] for row in con.execute("SELECT DISTINCT country FROM customers").fetchall()}
    filters = [e for e in generate_sql_examples(shop, limit=500) if "WHERE country = " in e.code]
    assert filters and all(e.code.split("'")[1] in countries for e in filters)


def test_deterministic_per_seed_and_bounded(shop: Path) -> None:
    assert generate_sql_examples(shop, seed=3) == generate_sql_examples(shop, seed=3)
    assert [e.request for e in generate_sql_examples(shop, seed=3)] != [
        e.request for e in generate_sql_examples(shop, seed=4)
    ]
    assert len(generate_sql_examples(shop, limit=10)) == 10


def test_an_empty_database_gives_no_pairs(tmp_path: Path) -> None:
    path = tmp_path / "empty.duckdb"
    duckdb.connect(str(path)).close()
    assert generate_sql_examples(path) == []
