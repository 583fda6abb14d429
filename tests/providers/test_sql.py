"""The sql provider on a real DuckDB file: schema, read-only queries, refusals and the sandbox beneath them."""

from __future__ import annotations

import asyncio
import multiprocessing

import duckdb
import pytest

from contextlab.providers.base import ProviderError
from contextlab.providers.sql import SQLProvider, SQLRefused, check_read_only
from contextlab.workspace import DEMO_DATABASE, create_demo_workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return create_demo_workspace(tmp_path_factory.mktemp("sqlws"), customers=50, orders=200)


@pytest.fixture()
def provider(workspace):
    return SQLProvider.discover(workspace, row_limit=5)


@pytest.mark.parametrize(
    ("sql", "phrase"),
    [
        ("INSERT INTO orders VALUES (1, 1, now(), 'x')", "INSERT statement"),
        ("UPDATE orders SET status = 'x'", "UPDATE statement"),
        ("DELETE FROM orders", "DELETE statement"),
        ("DROP TABLE orders", "DROP statement"),
        ("CREATE TABLE t AS SELECT 1", "CREATE statement"),
        ("COPY orders TO '/tmp/out.csv'", "COPY statement"),
        ("ATTACH '/tmp/other.db' AS other", "ATTACH statement"),
        ("INSTALL httpfs", "INSTALL statement"),
        ("LOAD httpfs", "read-only"),
        ("SET enable_external_access = true", "SET statement"),
        ("PRAGMA enable_profiling", "PRAGMA statement"),
        ("SELECT * FROM read_csv('/etc/passwd')", "read_csv() reads files"),
        ("SELECT * FROM read_parquet('s3://bucket/x.parquet')", "read_parquet() reads files"),
        ("SELECT * FROM '/etc/passwd'", "looks like a file path"),
        ("SELECT * FROM 'data.csv'", "looks like a file path"),
        ("SELECT * FROM glob('*')", "glob() reads files"),
        ("SELECT 1; DELETE FROM orders", "one statement at a time"),
        ("WITH x AS (SELECT 1) SELECT * INTO t FROM x", "INTO"),
        ("SELEC 1", "does not parse (line 1, column 7)"),
        ("", "Empty SQL"),
    ],
)
def test_writes_and_file_access_are_refused_before_execution(sql, phrase):
    with pytest.raises(SQLRefused) as info:
        check_read_only(sql)
    assert phrase in str(info.value)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "WITH a AS (SELECT 1 AS x) SELECT x FROM a",
        "SELECT 1 UNION ALL SELECT 2",
        "DESCRIBE orders",
        "SHOW TABLES",
        "FROM orders LIMIT 1",
        "SELECT 'read_csv(x)' AS text_mentioning_a_reader",
    ],
)
def test_read_only_queries_pass(sql):
    check_read_only(sql)


def test_schema_reports_tables_columns_keys_and_row_counts(provider):
    schema = asyncio.run(provider.schema()).model_dump(by_alias=True)
    (db,) = schema["databases"]
    assert db["name"] == "shop"
    tables = {t["name"]: t for t in db["tables"]}
    assert {"customers", "products", "orders", "order_items", "revenue_by_month"} <= set(tables)
    orders = tables["orders"]
    assert orders["schema"] == "main"
    assert orders["primary_key"] == ["order_id"]
    assert orders["row_count"] == 200
    assert orders["foreign_keys"] == [
        {"columns": ["customer_id"], "references_table": "customers", "references_columns": ["customer_id"]}
    ]
    assert {c["name"]: c["type"] for c in orders["columns"]}["ordered_at"] == "TIMESTAMP"
    assert tables["revenue_by_month"]["kind"] == "view"


def test_query_returns_columns_rows_and_truncation_flag(provider):
    result = asyncio.run(provider.query("SELECT order_id, status FROM orders ORDER BY order_id"))
    assert [c.name for c in result.columns] == ["order_id", "status"]
    assert result.row_count == 5 and result.truncated and result.limit == 5
    assert result.rows[0][0] == 1
    exact = asyncio.run(provider.query("SELECT order_id FROM orders ORDER BY order_id LIMIT 3", limit=3))
    assert exact.row_count == 3 and not exact.truncated


def test_values_are_json_safe(provider):
    result = asyncio.run(
        provider.query("SELECT DATE '2025-01-02' AS d, 1.50::DECIMAL(10,2) AS p, INTERVAL 2 SECOND AS i, [1, 2] AS l")
    )
    assert result.rows == [["2025-01-02", 1.5, 2.0, [1, 2]]]


def test_the_duckdb_sandbox_refuses_even_when_the_classifier_is_bypassed(provider, workspace):
    for sql, phrase in [
        ("COPY orders TO 'out.csv'", "sandbox"),
        ("SELECT * FROM read_csv('/etc/passwd')", "sandbox"),
        ("DELETE FROM orders", "read-only"),
    ]:
        with pytest.raises(ProviderError) as info:
            provider._run_query("shop", sql, 5)
        assert phrase in str(info.value)
    assert not (workspace / "out.csv").exists()
    assert asyncio.run(provider.query("SELECT count(*) FROM orders")).rows == [[200]]


def test_a_database_locked_by_a_writer_gives_an_actionable_error(workspace, tmp_path):
    path = tmp_path / "locked.duckdb"
    duckdb.connect(str(path)).close()
    provider = SQLProvider({"locked": path})
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    writer = ctx.Process(target=_hold_write_lock, args=(str(path), ready, release))
    writer.start()
    try:
        assert ready.wait(30)
        with pytest.raises(ProviderError) as info:
            asyncio.run(provider.query("SELECT 1", database="locked"))
        assert "open for writing in another process" in str(info.value)
    finally:
        release.set()
        writer.join(30)


def _hold_write_lock(path, ready, release):
    con = duckdb.connect(path)
    ready.set()
    release.wait(60)
    con.close()


def test_unknown_database_and_timeout_errors(workspace):
    provider = SQLProvider({"shop": workspace / DEMO_DATABASE}, timeout_seconds=0.2)
    with pytest.raises(ProviderError, match="Unknown database 'nope'. Configured databases: shop"):
        asyncio.run(provider.query("SELECT 1", database="nope"))
    with pytest.raises(ProviderError, match="Query stopped after 0.2 s"):
        asyncio.run(provider.query("SELECT count(*) FROM range(10000000000) a, range(100) b"))
