"""`contextlab provider new --from-db`: a provider generated from the demo DuckDB shop, registered with a running
server and called through the official MCP client (key lookups, cursor pages, refused writes, clear errors), and
one generated from a SQLite file (composite keys, tables without a key, awkward column names)."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import duckdb
import pytest
from mcp.shared.exceptions import MCPError

from contextlab.cli import main as cli_main
from contextlab.providers.base import ProviderError
from contextlab.providers.generate import GenerationError, database
from contextlab.providers.generate.package import load as load_package
from contextlab.providers.sql import SQLRefused
from contextlab.workspace import DEMO_DATABASE, create_demo_workspace
from tests.support.gateway import call_tool, listed_names
from tests.support.server import REPO, error_text, mcp_session, start_server, structured, wait_for


def ruff(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(REPO / "pyproject.toml"), str(path)],
        capture_output=True,
        text=True,
    )


# -- the demo DuckDB shop behind a running server -------------------------------------------------
@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A Jupyter server on a demo workspace (its own sql provider reads the same file) with the generated
    `shop` provider registered through `contextlab provider new`."""
    root = create_demo_workspace(tmp_path_factory.mktemp("db-root"))
    server = start_server(
        root,
        tmp_path_factory.mktemp("db-home"),
        extra_args=["--ContextLab.providers=sql", "--ContextLab.providers=logs"],
    )
    server.database = root / DEMO_DATABASE
    out = tmp_path_factory.mktemp("db-work") / "providers" / "shop"
    try:
        args = ["provider", "new", "--from-db", f"duckdb:///{server.database}", "--out", str(out)]
        assert cli_main([*args, "--url", server.url, "--token", server.token]) == 0
        server.package = out
        assert wait_for(lambda: "shop__lookup_customers" in tool_names(server), timeout=60), server.log_text()[-3000:]
        yield server
    finally:
        server.stop()


tool_names = listed_names
call = call_tool


def direct(server, sql: str) -> list[tuple]:
    with duckdb.connect(str(server.database), read_only=True) as con:
        return con.execute(sql).fetchall()


def test_the_generated_provider_is_registered_with_schema_query_and_a_lookup_per_table(shop):
    names = {n for n in tool_names(shop) if n.startswith("shop__")}
    assert names == {
        "shop__schema",
        "shop__query",
        "shop__lookup_customers",
        "shop__lookup_products",
        "shop__lookup_orders",
        "shop__lookup_order_items",
        "shop__lookup_revenue_by_month",
    }
    record = shop.api("GET", "contextlab/api/registry/shop").json()
    assert record["source"] == "provider" and record["command"][-1] == "shop.provider:ShopProvider"
    assert "context: SQLSchema, QueryResult" in record["description"]
    assert ruff(shop.package).returncode == 0
    code = (shop.package / "provider.py").read_text()
    assert "class CustomersRow(Row):" in code and "    signup_date: dt.date | None = None" in code

    async def read_schema():
        async with mcp_session(shop.mcp_url, shop.token) as client:
            uris = [str(r.uri) for r in (await client.list_resources()).resources]
            uri = next(u for u in uris if u.startswith("upstream://shop/"))
            return (await client.read_resource(uri)).contents[0].text

    text = anyio.run(read_schema)
    assert '"name": "customers"' in text and '"primary_key": [\n    "customer_id"' in text
    tables = {t["name"]: t for t in structured(call(shop, "shop__schema", {}))["tables"]}
    assert tables["orders"]["foreign_keys"][0]["references_table"] == "customers"


def test_a_key_lookup_returns_the_right_row(shop):
    page = structured(call(shop, "shop__lookup_customers", {"customer_id": 42}))
    (row,) = page["rows"]
    customer_id, name, email, country, signup, plan = direct(shop, "SELECT * FROM customers WHERE customer_id = 42")[0]
    assert row["customer_id"] == customer_id and row["name"] == name and row["country"] == country
    assert row["signup_date"] == signup.isoformat() and row["plan"] == plan
    assert row["email"] in (email, "[REDACTED:email]")  # the gateway's DLP is on by default
    assert page["table"] == "customers" and page["next_cursor"] is None
    product = structured(call(shop, "shop__lookup_products", {"product_id": 3}))["rows"][0]
    assert product["unit_price"] == float(direct(shop, "SELECT unit_price FROM products WHERE product_id = 3")[0][0])


def test_cursor_pages_walk_every_row_once(shop):
    seen, cursor, pages = [], None, 0
    while True:
        arguments = {"limit": 90} | ({"cursor": cursor} if cursor else {})
        page = structured(call(shop, "shop__lookup_customers", arguments))
        seen += [row["customer_id"] for row in page["rows"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 5 and len(seen) == len(set(seen)) == 400 and seen == sorted(seen)
    months, cursor = [], None
    while True:  # a view without a key pages by offset
        page = structured(
            call(shop, "shop__lookup_revenue_by_month", {"limit": 7} | ({"cursor": cursor} if cursor else {}))
        )
        months += [row["month"] for row in page["rows"]]
        if (cursor := page["next_cursor"]) is None:
            break
    assert len(months) == len(set(months)) == direct(shop, "SELECT count(*) FROM revenue_by_month")[0][0]


def test_filters_combine_with_the_key_and_with_each_other(shop):
    page = structured(call(shop, "shop__lookup_orders", {"customer_id": 7, "status": "delivered", "limit": 500}))
    expected = direct(shop, "SELECT order_id FROM orders WHERE customer_id = 7 AND status = 'delivered' ORDER BY 1")
    assert [r["order_id"] for r in page["rows"]] == [r[0] for r in expected]
    assert all(r["customer_id"] == 7 and r["status"] == "delivered" for r in page["rows"])
    assert structured(call(shop, "shop__lookup_orders", {"order_id": 10**6}))["rows"] == []


def test_writes_through_query_are_refused_and_the_data_is_intact(shop):
    before = direct(shop, "SELECT count(*), sum(customer_id) FROM customers")
    for sql, phrase in [
        ("DELETE FROM customers", "this is a DELETE statement"),
        ("UPDATE customers SET plan = 'free'", "this is a UPDATE statement"),
        ("DROP TABLE orders", "this is a DROP statement"),
        ("SELECT 1; DELETE FROM customers", "one statement at a time"),
        ("COPY customers TO '/tmp/leak.csv'", "COPY statement"),
    ]:
        assert phrase in error_text(call(shop, "shop__query", {"sql": sql}))
    assert direct(shop, "SELECT count(*), sum(customer_id) FROM customers") == before
    result = structured(call(shop, "shop__query", {"sql": "SELECT count(*) AS n FROM customers"}))
    assert result["rows"] == [[400]] and result["columns"][0]["name"] == "n"


def test_unknown_tables_columns_and_bad_arguments_give_clear_errors(shop):
    assert "Table with name suppliers does not exist" in error_text(
        call(shop, "shop__query", {"sql": "SELECT * FROM suppliers"})
    )
    assert 'Referenced column "colour" not found' in error_text(
        call(shop, "shop__query", {"sql": "SELECT colour FROM customers"})
    )
    assert "customer_id" in error_text(call(shop, "shop__lookup_customers", {"customer_id": "forty-two"}))
    assert "Invalid cursor for the lookup of customers" in error_text(
        call(shop, "shop__lookup_customers", {"cursor": "bm90LWEtY3Vyc29y"})
    )
    assert "limit" in error_text(call(shop, "shop__lookup_customers", {"limit": 100_000}))

    async def unknown_table():
        async with mcp_session(shop.mcp_url, shop.token) as client:
            with pytest.raises(MCPError) as info:
                await client.call_tool("shop__lookup_suppliers", {})
            return str(info.value)

    assert "Unknown tool 'shop__lookup_suppliers'" in anyio.run(unknown_table)


def test_a_writer_holding_the_file_gives_a_clear_error_and_reads_resume_after(shop):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('open', flush=True); time.sleep(60)",
            str(shop.database),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        message = error_text(call(shop, "shop__lookup_customers", {"customer_id": 1}))
        assert "is open for writing in another process" in message
    finally:
        holder.kill()
        holder.wait()
    assert structured(call(shop, "shop__lookup_customers", {"customer_id": 1}))["rows"][0]["customer_id"] == 1


# -- SQLite, no server ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app(tmp_path_factory):
    work = tmp_path_factory.mktemp("sqlite")
    path = work / "app.db"
    with sqlite3.connect(path) as con:
        con.executescript("""
            CREATE TABLE events (id INTEGER PRIMARY KEY, "from" TEXT, "limit" INTEGER, "Email Address" TEXT,
                happened DATETIME, score REAL, payload BLOB);
            CREATE TABLE grades (student TEXT NOT NULL, course TEXT NOT NULL, grade INTEGER,
                PRIMARY KEY (student, course));
            CREATE TABLE notes (body TEXT, schema TEXT);
        """)
        con.executemany(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (i, f"u{i % 3}", i * 2, f"a{i}@x.test", f"2025-01-0{1 + i % 9} 10:00:00", i / 4, b"\x01")
                for i in range(1, 26)
            ],
        )
        con.executemany(
            "INSERT INTO grades VALUES (?, ?, ?)",
            [(s, c, (i * 7) % 100) for i, (s, c) in enumerate((s, c) for s in "abcde" for c in ("art", "bio", "math"))],
        )
        con.executemany("INSERT INTO notes VALUES (?, ?)", [(f"n{i}", "s") for i in range(5)] + [("dup", "s")] * 2)
    out = work / "providers" / "app"
    common = ["--no-register", "--url", "http://127.0.0.1:9/", "--token", "x"]
    assert cli_main(["provider", "new", "--from-db", f"sqlite:///{path}", "--out", str(out), *common]) == 0
    return out, path


def walk(method, **filters) -> list:
    rows, cursor = [], None
    while True:
        page = asyncio.run(method(**filters, cursor=cursor))
        rows += page.rows
        if (cursor := page.next_cursor) is None:
            return rows


def test_sqlite_provider_code_is_ruff_clean_and_typed(app):
    out, _path = app
    assert ruff(out).returncode == 0
    code = (out / "provider.py").read_text()
    assert '    from_: str | None = Field(None, alias="from")' in code
    assert '    email_address: str | None = Field(None, alias="Email Address")' in code
    assert '    schema_: str | None = Field(None, alias="schema")' in code  # a BaseModel attribute is renamed
    assert "limit_: Annotated[int | None" in code  # the column `limit` does not hide the page size
    assert "payload: Annotated" not in code  # binary columns are not offered as filters
    assert 'key=["student", "course"]' in code


def test_sqlite_lookups_page_composite_keys_and_tables_without_keys(app):
    out, _path = app
    provider = load_package(out, "AppProvider")
    grades = walk(provider.lookup_grades, limit=4)
    assert [(g.student, g.course) for g in grades] == sorted((s, c) for s in "abcde" for c in ("art", "bio", "math"))
    notes = walk(provider.lookup_notes, limit=3)
    assert sorted(n.body for n in notes) == ["dup", "dup", "n0", "n1", "n2", "n3", "n4"]
    page = asyncio.run(provider.lookup_events(from_="u1", limit_=2, limit=5))
    (event,) = page.rows
    assert event.model_dump(mode="json") == {
        "id": 1,
        "from": "u1",
        "limit": 2,
        "Email Address": "a1@x.test",
        "happened": "2025-01-02T10:00:00",
        "score": 0.25,
        "payload": "01",
    }


def test_sqlite_writes_are_refused_by_the_parser_and_by_the_read_only_connection(app):
    out, path = app
    provider = load_package(out, "AppProvider")
    with pytest.raises(SQLRefused, match="this is a UPDATE statement"):
        asyncio.run(provider.query("UPDATE grades SET grade = 0"))
    backend = provider.backend()
    with pytest.raises(ProviderError, match="read-only|readonly"):
        backend.fetch("app", "INSERT INTO notes VALUES ('x', 'y')", {}, 1)
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT count(*) FROM notes").fetchone() == (7,)
    assert asyncio.run(provider.query("SELECT count(*) FROM grades WHERE grade > 50")).row_count == 1


@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        ("mysql://db/x", "Unsupported database URL scheme 'mysql': use duckdb:///file.duckdb"),
        ("shop.duckdb", "'shop.duckdb' is not a database URL"),
        ("duckdb:///no/such.duckdb", "(duckdb:///no/such.duckdb is relative to the current folder"),
        ("postgresql://reader:pw@127.0.0.1:9/sales", "needs the driver 'psycopg': pip install 'psycopg[binary]'"),
    ],
)
def test_bad_database_urls_get_precise_errors(url, phrase):
    with pytest.raises(GenerationError) as info:
        database.load(url, name="x")
    assert phrase in str(info.value)
    assert "pw" not in str(info.value)


def test_a_file_that_is_not_a_database_is_reported(tmp_path):
    (tmp_path / "notes.duckdb").write_text("just text\n" * 100)
    with pytest.raises(GenerationError, match=r"Cannot read the schema of duckdb:///.*not a valid DuckDB database"):
        database.load(f"duckdb:///{tmp_path / 'notes.duckdb'}", name="x")
    (tmp_path / "notes.db").write_text("just text\n" * 100)
    with pytest.raises(GenerationError, match=r"Cannot read the schema of sqlite:///.*file is not a database"):
        database.load(f"sqlite:///{tmp_path / 'notes.db'}", name="x")
