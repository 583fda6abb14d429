"""The data side of apps: source paths, typed parameters, form rows checked against the model."""

from __future__ import annotations

import decimal

import duckdb
import pytest

from contextlab.apps import db

FIELDS = {
    "id": {"type": "integer", "key": True, "generated": True},
    "employee": {"type": "varchar", "required": True, "max_length": 10, "label": "Employee"},
    "category": {"type": "varchar", "required": True, "enum": ["travel", "meals"]},
    "amount": {"type": "decimal", "precision": 12, "scale": 2, "required": True, "min": 0.01},
    "paid": {"type": "boolean", "default": False},
    "day": {"type": "date"},
}


@pytest.fixture
def path(tmp_path):
    file = tmp_path / "x.duckdb"
    con = duckdb.connect(str(file))
    con.execute("CREATE SEQUENCE s; CREATE TABLE employees(name VARCHAR PRIMARY KEY)")
    con.execute("INSERT INTO employees VALUES ('ann')")
    con.execute(
        "CREATE TABLE expenses(id INTEGER PRIMARY KEY DEFAULT nextval('s'), employee VARCHAR NOT NULL "
        "REFERENCES employees(name), category VARCHAR, amount DECIMAL(12,2) NOT NULL, paid BOOLEAN DEFAULT false, "
        "day DATE)"
    )
    con.close()
    return file


def count(path) -> int:
    with db.connect(path) as con:
        return con.execute("SELECT count(*) FROM expenses").fetchone()[0]


def test_valid_row_is_inserted_with_types_coerced(path):
    row = db.insert_row(
        path,
        "expenses",
        FIELDS,
        {"employee": "ann", "category": "travel", "amount": "12.50", "paid": "yes", "day": "2026-11-01"},
    )
    assert row["id"] == 1 and row["amount"] == decimal.Decimal("12.50") and row["paid"] is True
    assert str(row["day"]) == "2026-11-01"
    assert count(path) == 1


def test_each_broken_constraint_is_reported_per_field_and_nothing_is_written(path):
    with pytest.raises(db.FormErrors) as err:
        db.insert_row(
            path,
            "expenses",
            FIELDS,
            {"employee": "a" * 11, "category": "golf", "amount": "0", "day": "yesterday", "id": 5},
        )
    assert err.value.errors == {
        "id": "id is filled in automatically",
        "employee": "Employee must be at most 10 characters",
        "category": "category must be one of: travel, meals",
        "amount": "amount must be at least 0.01",
        "day": "'yesterday' is not a valid date",
    }
    with pytest.raises(db.FormErrors) as err:
        db.insert_row(path, "expenses", FIELDS, {"category": "meals", "amount": "1.234"})
    assert err.value.errors == {"employee": "Employee is required", "amount": "amount takes at most 2 decimal places"}
    assert count(path) == 0


def test_database_constraint_violation_is_a_form_error_and_rolls_back(path):
    with pytest.raises(db.FormErrors) as err:
        db.insert_row(path, "expenses", FIELDS, {"employee": "zed", "category": "meals", "amount": 3})
    assert "a referenced record does not exist" in err.value.errors["_form"]
    assert count(path) == 0
    db.insert_row(path, "expenses", FIELDS, {"employee": "ann", "category": "meals", "amount": 3})
    assert count(path) == 1


def test_unknown_field_is_refused(path):
    with pytest.raises(db.FormErrors, match="no field 'colour'"):
        db.insert_row(path, "expenses", FIELDS, {"employee": "ann", "category": "meals", "amount": 3, "colour": 1})


def test_queries_take_typed_parameters_never_spliced(path):
    db.insert_row(path, "expenses", FIELDS, {"employee": "ann", "category": "meals", "amount": 30})
    query = {
        "sql": "SELECT count(*) AS n FROM expenses WHERE amount >= $min AND category = $cat",
        "params": {"min": {"type": "decimal", "default": 0}, "cat": {"type": "varchar"}},
    }
    assert db.run_query(path, query, {"cat": "meals"})["n"][0] == 1
    assert db.run_query(path, query, {"cat": "meals", "min": "31"})["n"][0] == 0
    assert db.run_query(path, query, {"cat": "x' OR '1'='1"})["n"][0] == 0
    with pytest.raises(db.AppDataError, match="min: 'lots' is not a valid decimal"):
        db.run_query(path, query, {"cat": "meals", "min": "lots"})


def test_write_query_failure_rolls_back(path):
    db.insert_row(path, "expenses", FIELDS, {"employee": "ann", "category": "meals", "amount": 30})
    query = {"kind": "write", "sql": "UPDATE expenses SET employee = $who WHERE id = 1", "params": {"who": {}}}
    with pytest.raises(db.AppDataError, match="the query failed"):
        db.run_query(path, query, {"who": "nobody"})
    with db.connect(path) as con:
        assert con.execute("SELECT employee FROM expenses").fetchone()[0] == "ann"


def test_source_paths_stay_inside_the_apps_folder(tmp_path):
    doc = {"app": {"name": "x"}, "data": {"sources": {"main": {"type": "duckdb", "path": "../../etc/x.duckdb"}}}}
    with pytest.raises(db.AppDataError, match="leaves the apps data folder"):
        db.source_path(tmp_path, doc)
    doc["data"]["sources"]["main"]["path"] = "sub/x.duckdb"
    assert db.source_path(tmp_path, doc) == (tmp_path / "sub" / "x.duckdb").resolve()
    doc["environments"] = {"prod": {"sources": {"main": {"type": "duckdb", "path": "prod.duckdb"}}}}
    assert db.source_path(tmp_path, doc, env="prod").name == "prod.duckdb"
    with pytest.raises(db.AppDataError, match="no environment 'staging'"):
        db.source_path(tmp_path, doc, env="staging")
    assert db.source_path(tmp_path, {"app": {"name": "y"}}).name == "y.duckdb"


def test_a_file_held_by_another_process_is_waited_for_then_refused(path) -> None:
    import subprocess
    import sys

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('open', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(db.AppDataError, match="in use by another process"):
            with db.connect(path, wait=0.2):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert count(path) >= 0  # usable again once the other process let go
