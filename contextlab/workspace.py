"""The demo workspace: a small generated DuckDB shop, two notebooks and a few markdown docs."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta
from pathlib import Path

import duckdb
import nbformat
import pandas as pd
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

DEMO_DATABASE = "data/shop.duckdb"

_FIRST = [
    "Ada",
    "Grace",
    "Alan",
    "Edsger",
    "Barbara",
    "Donald",
    "Frances",
    "Ken",
    "Margaret",
    "Linus",
    "Radia",
    "Tim",
    "Hedy",
    "John",
    "Katherine",
    "Guido",
    "Sophie",
    "Dennis",
    "Anita",
    "Bjarne",
]
_LAST = [
    "Lovelace",
    "Hopper",
    "Turing",
    "Dijkstra",
    "Liskov",
    "Knuth",
    "Allen",
    "Thompson",
    "Hamilton",
    "Torvalds",
    "Perlman",
    "Berners-Lee",
    "Lamarr",
    "McCarthy",
    "Johnson",
    "van Rossum",
    "Wilson",
    "Ritchie",
    "Borg",
    "Stroustrup",
]
_COUNTRIES = ["DE", "FR", "GB", "US", "NL", "SE", "ES", "IT", "PL", "JP"]
_CATEGORIES = {
    "Books": ["Data Pipelines", "SQL Cookbook", "Statistics Primer", "Notebook Craft", "Query Tuning"],
    "Hardware": [
        "USB-C Dock",
        "Mechanical Keyboard",
        "4K Monitor",
        "Laptop Stand",
        "Noise-cancelling Headset",
    ],
    "Software": ["Cloud Credits", "IDE Licence", "BI Seat", "Backup Plan", "VPN Subscription"],
    "Training": ["SQL Workshop", "Pandas Bootcamp", "MLOps Course", "Dashboard Design", "Data Governance"],
}


def create_demo_workspace(root: str | Path, *, customers: int = 400, orders: int = 3000, seed: int = 7) -> Path:
    """Create the demo workspace in `root` (files that already exist are left alone)."""
    root = Path(root)
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "docs").mkdir(exist_ok=True)
    database = root / DEMO_DATABASE
    if not database.exists():
        _create_database(database, customers=customers, orders=orders, seed=seed)
    for name, text in _DOCS.items():
        path = root / "docs" / name
        if not path.exists():
            path.write_text(text, encoding="utf-8")
    for name, notebook in _notebooks().items():
        path = root / name
        if not path.exists():
            nbformat.write(notebook, path)
    return root


def _create_database(path: Path, *, customers: int, orders: int, seed: int) -> None:
    rng = random.Random(seed)
    start = date(2025, 1, 1)
    customer_rows = [
        (
            i,
            f"{rng.choice(_FIRST)} {rng.choice(_LAST)}",
            f"customer{i}@example.com",
            rng.choice(_COUNTRIES),
            start - timedelta(days=rng.randint(0, 700)),
            rng.choice(["free", "pro", "enterprise"]),
        )
        for i in range(1, customers + 1)
    ]
    product_rows = []
    for category, names in _CATEGORIES.items():
        for name in names:
            product_rows.append((len(product_rows) + 1, name, category, round(rng.uniform(9, 900), 2)))
    order_rows, item_rows = [], []
    for order_id in range(1, orders + 1):
        customer = rng.randint(1, customers)
        ordered = datetime.combine(start, datetime.min.time()) + timedelta(
            days=rng.randint(0, 669), minutes=rng.randint(0, 1439)
        )
        status = rng.choices(["delivered", "shipped", "cancelled", "returned"], [80, 10, 6, 4])[0]
        order_rows.append((order_id, customer, ordered, status))
        for product in rng.sample(product_rows, rng.randint(1, 4)):
            item_rows.append((len(item_rows) + 1, order_id, product[0], rng.randint(1, 5), product[3]))
    with duckdb.connect(str(path)) as con:
        con.execute("""
            CREATE TABLE customers (customer_id INTEGER PRIMARY KEY, name VARCHAR NOT NULL,
                email VARCHAR NOT NULL, country VARCHAR(2), signup_date DATE, plan VARCHAR);
            CREATE TABLE products (product_id INTEGER PRIMARY KEY, name VARCHAR NOT NULL,
                category VARCHAR NOT NULL, unit_price DECIMAL(10, 2) NOT NULL);
            CREATE TABLE orders (order_id INTEGER PRIMARY KEY,
                customer_id INTEGER NOT NULL REFERENCES customers(customer_id),
                ordered_at TIMESTAMP NOT NULL, status VARCHAR NOT NULL);
            CREATE TABLE order_items (item_id INTEGER PRIMARY KEY,
                order_id INTEGER NOT NULL REFERENCES orders(order_id),
                product_id INTEGER NOT NULL REFERENCES products(product_id),
                quantity INTEGER NOT NULL, unit_price DECIMAL(10, 2) NOT NULL);
        """)
        for table, rows in [
            ("customers", customer_rows),
            ("products", product_rows),
            ("orders", order_rows),
            ("order_items", item_rows),
        ]:
            _insert(con, table, rows)
        con.execute("""
            CREATE VIEW revenue_by_month AS
            SELECT date_trunc('month', o.ordered_at) AS month, sum(i.quantity * i.unit_price) AS revenue
            FROM orders o JOIN order_items i USING (order_id)
            WHERE o.status IN ('delivered', 'shipped') GROUP BY 1 ORDER BY 1
        """)


def _insert(con: duckdb.DuckDBPyConnection, table: str, rows: list[tuple]) -> None:
    """Bulk insert through a DataFrame: DuckDB's executemany goes row by row (seconds for 10k rows)."""
    columns = [row[0] for row in con.execute(f"DESCRIBE {table}").fetchall()]
    con.register("incoming_rows", pd.DataFrame(rows, columns=columns))
    try:
        con.execute(f"INSERT INTO {table} SELECT * FROM incoming_rows")
    finally:
        con.unregister("incoming_rows")


def _notebooks() -> dict[str, nbformat.NotebookNode]:
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    metadata = {"kernelspec": kernelspec, "language_info": {"name": "python"}}
    sales = new_notebook(
        metadata=metadata,
        cells=[
            new_markdown_cell("# Sales overview\nRevenue by month and the top customers, from `data/shop.duckdb`."),
            new_code_cell("import duckdb\ncon = duckdb.connect('data/shop.duckdb', read_only=True)"),
            new_code_cell("revenue = con.sql('SELECT * FROM revenue_by_month').df()\nrevenue.tail()"),
            new_code_cell(
                "top_customers = con.sql('''\n"
                "    SELECT c.name, c.country, sum(i.quantity * i.unit_price) AS revenue,\n"
                "           count(DISTINCT o.order_id) AS orders\n"
                "    FROM customers c JOIN orders o USING (customer_id) JOIN order_items i USING (order_id)\n"
                "    WHERE o.status = 'delivered'\n"
                "    GROUP BY ALL ORDER BY revenue DESC LIMIT 10\n"
                "''').df()\ntop_customers"
            ),
            new_markdown_cell("## Notes\nCancelled and returned orders are excluded from revenue."),
        ],
    )
    quality = new_notebook(
        metadata=metadata,
        cells=[
            new_markdown_cell("# Data quality checks\nRow counts, nulls and orphaned rows."),
            new_code_cell("import duckdb\ncon = duckdb.connect('data/shop.duckdb', read_only=True)"),
            new_code_cell(
                "checks = con.sql('''\n"
                "    SELECT 'orders without items' AS check_name, count(*) AS failures FROM orders o\n"
                "    WHERE NOT EXISTS (SELECT 1 FROM order_items i WHERE i.order_id = o.order_id)\n"
                "    UNION ALL\n"
                "    SELECT 'customers without email', count(*) FROM customers WHERE email IS NULL\n"
                "''').df()\nchecks"
            ),
            new_code_cell("assert (checks.failures == 0).all(), checks"),
        ],
    )
    return {"sales_overview.ipynb": sales, "data_quality.ipynb": quality}


_DOCS = {
    "README.md": (
        "# Demo shop workspace\n\nA generated online shop: `customers`, `products`, `orders` and "
        "`order_items` in `data/shop.duckdb`, plus the view `revenue_by_month`.\n\n"
        "- `sales_overview.ipynb`: revenue by month and top customers\n"
        "- `data_quality.ipynb`: consistency checks\n"
    ),
    "metrics.md": (
        "# Metric definitions\n\n"
        "- **Revenue**: sum of `quantity * unit_price` over order items of delivered or shipped orders.\n"
        "- **Active customer**: a customer with at least one delivered order in the last 90 days.\n"
        "- **Return rate**: returned orders divided by delivered plus returned orders.\n"
    ),
    "data_dictionary.md": (
        "# Data dictionary\n\n"
        "| table | column | meaning |\n|---|---|---|\n"
        "| customers | plan | subscription tier: free, pro or enterprise |\n"
        "| orders | status | delivered, shipped, cancelled or returned |\n"
        "| order_items | unit_price | price paid per unit at order time (may differ from products.unit_price) |\n"
    ),
}
