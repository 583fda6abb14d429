"""ER models on DuckDB: DDL with constraints, planned/applied migrations on real files, Mermaid diagrams."""

import copy
import decimal

import duckdb
import pytest

from contextlab.apps import er

MODEL = {
    "sources": {"main": {"type": "duckdb", "path": "expenses.duckdb"}},
    "tables": {
        # expenses first on purpose: ddl() must still create employees before it
        "expenses": {
            "fields": {
                "id": {"type": "integer", "key": True, "generated": True},
                "employee_id": {"type": "integer", "required": True, "references": "employees.id"},
                "amount": {"type": "decimal", "precision": 12, "scale": 2, "required": True, "min": 0},
                "status": {"type": "varchar", "enum": ["pending", "approved", "rejected"], "default": "pending"},
                "note": {"type": "text"},
                "submitted_at": {"type": "timestamp", "default": "now"},
                "paid": {"type": "boolean", "default": False},
                "day": {"type": "date"},
                "ratio": {"type": "double", "max": 1},
            }
        },
        "employees": {
            "source": "main",
            "description": "People who submit expenses",
            "fields": {
                "id": {"type": "integer", "key": True, "generated": True},
                "name": {"type": "varchar", "required": True, "max_length": 80},
                "email": {"type": "varchar", "unique": True, "description": "Work address"},
            },
        },
    },
}


def model():
    return copy.deepcopy(MODEL)


def fields(data, table):
    return data["tables"][table]["fields"]


@pytest.fixture
def db(tmp_path):
    """A migrated expenses database holding two employees and two expenses."""
    path = tmp_path / "expenses.duckdb"
    er.apply_migration(path, model())
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO employees (name, email) VALUES ('Ada', 'ada@x.org'), ('Bob', 'bob@x.org')")
    con.execute("INSERT INTO expenses (employee_id, amount, note) VALUES (1, 12.50, 'taxi'), (2, 3, 'coffee')")
    con.close()
    return path


def query(path, sql):
    con = duckdb.connect(str(path))
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def schema(path):
    con = duckdb.connect(str(path))
    try:
        return er.read_schema(con)
    finally:
        con.close()


# ----------------------------------------------------------------------------------------------------- DDL


def test_column_types():
    assert er.column_type({"type": "integer"}) == "INTEGER"
    assert er.column_type({"type": "decimal"}) == "DECIMAL(18,3)"
    assert er.column_type({"type": "decimal", "precision": 12, "scale": 2}) == "DECIMAL(12,2)"
    assert er.column_type({"type": "varchar", "max_length": 80}) == "VARCHAR(80)"
    assert er.column_type({"type": "text"}) == "VARCHAR"
    assert er.column_type({"type": "timestamp"}) == "TIMESTAMP"
    with pytest.raises(er.ERModelError, match="unknown field type"):
        er.column_type({"type": "blob"})


def test_ddl_orders_referenced_tables_first_and_runs():
    sql = er.ddl(model())
    assert sql.index('CREATE TABLE "employees"') < sql.index('CREATE TABLE "expenses"')
    assert 'CREATE SEQUENCE IF NOT EXISTS "expenses_id_seq"' in sql
    con = duckdb.connect(":memory:")
    con.execute(sql)
    live = er.read_schema(con)
    assert set(live) == {"employees", "expenses"}
    exp = live["expenses"]
    assert exp["id"].primary_key and exp["id"].default == "nextval('expenses_id_seq')"
    assert exp["employee_id"].references == "employees.id" and not exp["employee_id"].nullable
    assert exp["amount"].type == "DECIMAL(12,2)"
    assert live["employees"]["email"].unique and live["employees"]["email"].comment == "Work address"
    assert con.execute("SELECT comment FROM duckdb_tables() WHERE table_name = 'employees'").fetchone()[0] == (
        "People who submit expenses"
    )


def test_ddl_generates_ids_and_defaults():
    con = duckdb.connect(":memory:")
    con.execute(er.ddl(model()))
    con.execute("INSERT INTO employees (name) VALUES ('Ada'), ('Bob')")
    assert con.execute("SELECT id, name FROM employees ORDER BY id").fetchall() == [(1, "Ada"), (2, "Bob")]
    con.execute("INSERT INTO expenses (employee_id, amount) VALUES (2, 9.99)")
    row = con.execute("SELECT id, status, paid, submitted_at IS NOT NULL, amount FROM expenses").fetchone()
    assert row == (1, "pending", False, True, decimal.Decimal("9.99"))


@pytest.mark.parametrize(
    "sql",
    [
        pytest.param("INSERT INTO expenses (employee_id, amount, status) VALUES (1, 1, 'lost')", id="enum"),
        pytest.param("INSERT INTO expenses (employee_id, amount) VALUES (1, -1)", id="min"),
        pytest.param("INSERT INTO expenses (employee_id, amount, ratio) VALUES (1, 1, 1.5)", id="max"),
        pytest.param("INSERT INTO expenses (employee_id) VALUES (1)", id="required"),
        pytest.param("INSERT INTO expenses (employee_id, amount) VALUES (42, 1)", id="foreign-key"),
        pytest.param(f"INSERT INTO employees (name) VALUES ('{'x' * 81}')", id="max_length"),
        pytest.param("INSERT INTO employees (name, email) VALUES ('Cy', 'ada@x.org')", id="unique"),
        pytest.param("INSERT INTO employees (id, name) VALUES (1, 'Cy')", id="primary-key"),
    ],
)
def test_ddl_enforces_constraints(sql):
    con = duckdb.connect(":memory:")
    con.execute(er.ddl(model()))
    con.execute("INSERT INTO employees (name, email) VALUES ('Ada', 'ada@x.org')")
    con.execute("INSERT INTO expenses (employee_id, amount, ratio, status) VALUES (1, 0, 1, 'approved')")  # edges ok
    with pytest.raises(duckdb.ConstraintException):
        con.execute(sql)


def test_composite_key():
    data = {
        "tables": {
            "grid": {
                "fields": {
                    "x": {"type": "integer", "key": True},
                    "y": {"type": "integer", "key": True},
                    "v": {"type": "double"},
                }
            }
        }
    }
    con = duckdb.connect(":memory:")
    con.execute(er.ddl(data))
    con.execute("INSERT INTO grid VALUES (1, 1, 0), (1, 2, 0)")
    with pytest.raises(duckdb.ConstraintException):
        con.execute("INSERT INTO grid VALUES (1, 2, 5)")


def test_missing_reference_names_table_and_field():
    data = model()
    fields(data, "expenses")["employee_id"]["references"] = "staff.id"
    with pytest.raises(er.ERModelError, match=r"expenses\.employee_id references missing table 'staff'"):
        er.ddl(data)
    fields(data, "expenses")["employee_id"]["references"] = "employees.ident"
    with pytest.raises(er.ERModelError, match=r"expenses\.employee_id references missing field employees\.ident"):
        er.ddl(data)


def test_reference_cycle_is_reported():
    data = {
        "tables": {
            "a": {
                "fields": {"id": {"type": "integer", "key": True}, "b_id": {"type": "integer", "references": "b.id"}}
            },
            "b": {
                "fields": {"id": {"type": "integer", "key": True}, "a_id": {"type": "integer", "references": "a.id"}}
            },
        }
    }
    with pytest.raises(er.ERModelError, match="cycle: a -> b -> a"):
        er.ddl(data)


def test_invalid_field_specs_are_rejected():
    data = model()
    fields(data, "expenses")["note"]["generated"] = True
    with pytest.raises(er.ERModelError, match=r"expenses\.note.*generated"):
        er.ddl(data)
    data = model()
    fields(data, "expenses")["paid"]["default"] = "now"
    with pytest.raises(er.ERModelError, match=r"expenses\.paid.*now"):
        er.ddl(data)
    data = model()
    fields(data, "expenses")["employee_id"]["references"] = "employees.name"  # neither key nor unique
    with pytest.raises(er.ERModelError, match=r"expenses\.employee_id references employees\.name, which is neither"):
        er.ddl(data)
    data = model()
    fields(data, "employees")["name"]["type"] = "string"
    with pytest.raises(er.ERModelError, match=r"employees\.name: unknown field type 'string'"):
        er.mermaid(data)


# ---------------------------------------------------------------------------------------------- migrations


def test_plan_on_empty_database_creates_everything(tmp_path):
    con = duckdb.connect(str(tmp_path / "new.duckdb"))
    plan = er.plan_migration(con, model())
    kinds = [(s.kind, s.table) for s in plan.steps]
    assert ("create_table", "employees") in kinds and ("create_table", "expenses") in kinds
    assert kinds.index(("create_table", "employees")) < kinds.index(("create_table", "expenses"))
    assert {s.table for s in plan.steps if s.kind == "create_sequence"} == {"employees", "expenses"}
    assert not plan.destructive and not plan.errors
    assert er.read_schema(con) == {}  # planning changes nothing


def test_apply_then_plan_again_is_empty(db):
    assert query(db, "SELECT count(*) FROM expenses") == [(2,)]
    con = duckdb.connect(str(db))
    plan = er.plan_migration(con, model())
    con.close()
    assert plan.steps == [] and plan.errors == []
    assert er.apply_migration(db, model()).steps == []


def test_add_column_keeps_rows(db):
    data = model()
    fields(data, "employees")["team"] = {"type": "varchar", "default": "ops"}
    fields(data, "expenses")["category"] = {"type": "varchar", "enum": ["travel", "food"]}  # CHECK → rebuild
    result = er.apply_migration(db, data)
    assert {(s.kind, s.table, s.column) for s in result.steps} >= {("add_column", "employees", "team")}
    assert result.backup_path is None
    assert query(db, "SELECT id, name, email, team FROM employees ORDER BY id") == [
        (1, "Ada", "ada@x.org", "ops"),
        (2, "Bob", "bob@x.org", "ops"),
    ]
    assert query(db, "SELECT id, employee_id, amount, note, category FROM expenses ORDER BY id") == [
        (1, 1, decimal.Decimal("12.50"), "taxi", None),
        (2, 2, decimal.Decimal("3.00"), "coffee", None),
    ]
    live = schema(db)
    assert live["expenses"]["category"].checks  # the enum CHECK exists after the rebuild
    assert live["expenses"]["employee_id"].references == "employees.id"
    # generated ids continue after the rebuild
    query(db, "INSERT INTO expenses (employee_id, amount) VALUES (1, 1)")
    assert query(db, "SELECT max(id) FROM expenses") == [(3,)]
    with pytest.raises(duckdb.ConstraintException):
        query(db, "INSERT INTO expenses (employee_id, amount, category) VALUES (1, 1, 'other')")
    assert er.apply_migration(db, data).steps == []


def test_widen_types_keeps_data(db):
    data = model()
    fields(data, "expenses")["amount"].update(precision=18, scale=3)  # column with a CHECK → rebuild
    fields(data, "expenses")["ratio"] = {"type": "double"}  # drop the CHECK
    fields(data, "employees")["name"]["max_length"] = 200  # varchar(80) → varchar(200)
    fields(data, "employees")["id"]["type"] = "bigint"  # referenced key → rebuild both tables
    fields(data, "expenses")["employee_id"]["type"] = "bigint"
    con = duckdb.connect(str(db))
    plan = er.plan_migration(con, data)
    con.close()
    assert not plan.destructive and not plan.errors
    assert {s.kind for s in plan.steps} >= {"alter_type", "stash_table", "rebuild_table"}
    er.apply_migration(db, data)
    live = schema(db)
    assert live["expenses"]["amount"].type == "DECIMAL(18,3)"
    assert live["employees"]["id"].type == "BIGINT" and live["expenses"]["employee_id"].type == "BIGINT"
    assert query(db, "SELECT e.name, x.amount FROM expenses x JOIN employees e ON e.id = x.employee_id ORDER BY 2") == [
        ("Bob", decimal.Decimal("3.000")),
        ("Ada", decimal.Decimal("12.500")),
    ]
    query(db, f"INSERT INTO employees (name) VALUES ('{'y' * 150}')")  # the wider limit holds
    assert query(db, "SELECT max(id) FROM employees") == [(3,)]
    assert er.apply_migration(db, data).steps == []


def test_in_place_widen_of_unconstrained_column(db):
    data = model()
    fields(data, "expenses")["extra"] = {"type": "integer"}
    er.apply_migration(db, data)
    query(db, "UPDATE expenses SET extra = 7 WHERE id = 1")
    fields(data, "expenses")["extra"]["type"] = "bigint"
    con = duckdb.connect(str(db))
    plan = er.plan_migration(con, data)
    con.close()
    assert [(s.kind, s.sql) for s in plan.steps] == [
        ("alter_type", 'ALTER TABLE "expenses" ALTER "extra" TYPE BIGINT;'),
    ]
    er.apply_migration(db, data)
    assert query(db, "SELECT id, extra FROM expenses ORDER BY id") == [(1, 7), (2, None)]
    assert schema(db)["expenses"]["extra"].type == "BIGINT"


def test_drop_column_refused_without_confirm_and_nothing_changes(db):
    data = model()
    del fields(data, "expenses")["note"]
    before_schema, before_rows = schema(db), query(db, "SELECT * FROM expenses ORDER BY id")
    with pytest.raises(er.DestructiveChangeError) as err:
        er.apply_migration(db, data)
    message = str(err.value)
    assert "drop_column expenses.note" in message and "confirm" in message
    assert schema(db) == before_schema
    assert query(db, "SELECT * FROM expenses ORDER BY id") == before_rows
    assert not (db.parent / ".backups").exists()


def test_drop_column_with_confirm_backs_up_first(db):
    data = model()
    del fields(data, "expenses")["note"]
    result = er.apply_migration(db, data, confirm=True)
    assert "note" not in schema(db)["expenses"]
    assert query(db, "SELECT id, amount FROM expenses ORDER BY id") == [
        (1, decimal.Decimal("12.50")),
        (2, decimal.Decimal("3.00")),
    ]
    backup = result.backup_path
    assert backup is not None and backup.parent == db.parent / ".backups"
    assert backup.name.startswith("expenses-") and backup.suffix == ".duckdb"
    assert query(backup, "SELECT note FROM expenses ORDER BY id") == [("taxi",), ("coffee",)]
    assert any(s.kind == "drop_column" and s.destructive for s in result.steps)
    assert er.apply_migration(db, data).steps == []


def test_backup_dir_option(db, tmp_path):
    data = model()
    del fields(data, "employees")["email"]  # a UNIQUE column: rebuilt, with its referencing table
    result = er.apply_migration(db, data, confirm=True, backup_dir=tmp_path / "bk")
    assert result.backup_path.parent == tmp_path / "bk"
    assert query(result.backup_path, "SELECT email FROM employees ORDER BY id") == [("ada@x.org",), ("bob@x.org",)]
    assert "email" not in schema(db)["employees"]
    assert query(db, "SELECT count(*) FROM expenses") == [(2,)]


@pytest.mark.parametrize(
    ("table", "name", "spec"),
    [
        ("expenses", "ratio", {"type": "integer"}),  # double → integer
        ("expenses", "note", {"type": "varchar", "max_length": 10}),  # text → varchar(10): the rows fit, still narrower
        ("expenses", "amount", {"type": "decimal", "precision": 6, "scale": 1, "required": True}),
    ],
)
def test_narrowing_is_refused_without_confirm(db, table, name, spec):
    data = model()
    fields(data, table)[name] = spec
    before = query(db, f"SELECT * FROM {table} ORDER BY 1")
    with pytest.raises(er.DestructiveChangeError, match=f"{table}.{name}"):
        er.apply_migration(db, data)
    assert query(db, f"SELECT * FROM {table} ORDER BY 1") == before


def test_confirmed_narrowing_that_fails_rolls_back(db):
    data = model()
    fields(data, "expenses")["score"] = {"type": "double", "unique": True}
    er.apply_migration(db, data)
    query(db, "UPDATE expenses SET score = 1.2 + id / 10")  # 1.3 and 1.4: unique, but both round to 1
    fields(data, "expenses")["score"]["type"] = "integer"
    fields(data, "expenses")["extra"] = {"type": "integer"}  # a harmless step, rolled back too
    before_schema, before = schema(db), query(db, "SELECT * FROM expenses ORDER BY id")
    with pytest.raises(er.MigrationError, match="rolled back") as err:
        er.apply_migration(db, data, confirm=True)
    assert err.value.statement and "INSERT INTO" in err.value.statement
    assert err.value.statement in str(err.value)
    assert schema(db) == before_schema
    assert query(db, "SELECT * FROM expenses ORDER BY id") == before


def test_unconvertible_values_are_refused_up_front(db):
    data = model()
    fields(data, "expenses")["note"] = {"type": "integer"}  # 'taxi' and 'coffee' are no numbers
    with pytest.raises(er.MigrationError, match=r"expenses\.note: 2 value\(s\) cannot become INTEGER"):
        er.apply_migration(db, data, confirm=True)
    assert schema(db)["expenses"]["note"].type == "VARCHAR"
    query(db, "UPDATE expenses SET note = CAST(id * 10 AS VARCHAR)")
    er.apply_migration(db, data, confirm=True)
    assert query(db, "SELECT note FROM expenses ORDER BY id") == [(10,), (20,)]


def test_new_rule_broken_by_rows_is_refused_up_front(db):
    data = model()
    fields(data, "expenses")["note"]["enum"] = ["taxi", "hotel"]  # 'coffee' breaks it
    fields(data, "employees")["name"]["unique"] = True  # fine: names differ
    with pytest.raises(er.MigrationError, match=r"expenses\.note: 1 row\(s\) break the new rule") as err:
        er.apply_migration(db, data, confirm=True)
    assert err.value.statement is None
    assert not (db.parent / ".backups").exists()  # refused before the backup
    query(db, "UPDATE expenses SET note = 'taxi'")
    er.apply_migration(db, data)
    assert schema(db)["employees"]["name"].unique


def test_required_on_column_with_nulls_is_refused(db):
    data = model()
    fields(data, "expenses")["note"]["required"] = True
    query(db, "INSERT INTO expenses (employee_id, amount) VALUES (1, 5)")  # note is NULL
    with pytest.raises(er.MigrationError, match=r"expenses\.note.*1 row\(s\) hold NULL"):
        er.apply_migration(db, data, confirm=True)
    assert schema(db)["expenses"]["note"].nullable
    query(db, "UPDATE expenses SET note = 'n/a' WHERE note IS NULL")
    er.apply_migration(db, data)
    assert not schema(db)["expenses"]["note"].nullable


def test_drop_tables_only_when_owned(db):
    query(db, "CREATE TABLE scratch (x INTEGER)")
    data = model()
    data["tables"]["projects"] = {"fields": {"id": {"type": "integer", "key": True}}}
    er.apply_migration(db, data)
    assert "scratch" in schema(db)  # not owned: left alone
    del data["tables"]["projects"]
    with pytest.raises(er.DestructiveChangeError, match="drop_table projects"):
        er.apply_migration(db, data, owned_tables={"projects"})
    result = er.apply_migration(db, data, owned_tables={"projects"}, confirm=True)
    assert set(schema(db)) == {"employees", "expenses", "scratch"}
    assert "projects" in {t for t, *_ in query(result.backup_path, "SHOW TABLES")}


def test_drop_referenced_table_drops_its_sequence(db):
    data = model()
    del data["tables"]["expenses"]
    er.apply_migration(db, data, owned_tables={"expenses"}, confirm=True)
    assert set(schema(db)) == {"employees"}
    seqs = {r[0] for r in query(db, "SELECT sequence_name FROM duckdb_sequences()")}
    assert seqs == {"employees_id_seq"}


def test_change_on_referenced_table_rebuilds_it_and_its_children(db):
    data = model()
    fields(data, "employees")["name"]["default"] = "anon"  # DuckDB cannot ALTER a table an FK references
    fields(data, "employees")["email"]["description"] = "Where receipts go"
    result = er.apply_migration(db, data)
    rebuilt = {s.table for s in result.steps if s.kind == "rebuild_table"}
    assert rebuilt == {"employees", "expenses"}
    assert query(db, "SELECT count(*) FROM employees JOIN expenses ON employees.id = employee_id") == [(2,)]
    assert schema(db)["employees"]["email"].comment == "Where receipts go"
    query(db, "INSERT INTO employees (email) VALUES ('z@x.org')")
    assert query(db, "SELECT id, name FROM employees WHERE email = 'z@x.org'") == [(3, "anon")]
    assert er.apply_migration(db, data).steps == []


def test_self_reference_survives_a_rebuild(tmp_path):
    path = tmp_path / "org.duckdb"
    data = {
        "tables": {
            "people": {
                "fields": {
                    "id": {"type": "integer", "key": True, "generated": True},
                    "name": {"type": "varchar", "max_length": 20},
                    "boss_id": {"type": "integer", "references": "people.id"},
                }
            }
        }
    }
    er.apply_migration(path, data)
    query(path, "INSERT INTO people (name) VALUES ('root')")
    query(path, "INSERT INTO people (name, boss_id) VALUES ('mid', 1)")
    query(path, "INSERT INTO people (name, boss_id) VALUES ('leaf', 2)")
    fields(data, "people")["name"].update(max_length=40, required=True)  # its CHECK changes → rebuild
    er.apply_migration(path, data)
    assert query(path, "SELECT id, name, boss_id FROM people ORDER BY id") == [
        (1, "root", None),
        (2, "mid", 1),
        (3, "leaf", 2),
    ]
    with pytest.raises(duckdb.ConstraintException):
        query(path, "INSERT INTO people (name, boss_id) VALUES ('x', 99)")
    assert er.apply_migration(path, data).steps == []


def test_generated_key_added_to_existing_rows(tmp_path):
    path = tmp_path / "notes.duckdb"
    data = {"tables": {"notes": {"fields": {"body": {"type": "text"}}}}}
    er.apply_migration(path, data)
    query(path, "INSERT INTO notes VALUES ('a'), ('b')")
    data["tables"]["notes"]["fields"] = {
        "id": {"type": "integer", "key": True, "generated": True},
        "body": {"type": "text"},
    }
    er.apply_migration(path, data)
    query(path, "INSERT INTO notes (body) VALUES ('c')")
    assert query(path, "SELECT id, body FROM notes ORDER BY id") == [(1, "a"), (2, "b"), (3, "c")]


def test_required_field_needs_a_default_on_a_table_with_rows(db):
    data = model()
    fields(data, "expenses")["currency"] = {"type": "varchar", "required": True}
    with pytest.raises(er.MigrationError, match=r"expenses\.currency: cannot add a required field without a default"):
        er.apply_migration(db, data)
    fields(data, "expenses")["currency"]["default"] = "EUR"
    er.apply_migration(db, data)
    assert query(db, "SELECT DISTINCT currency FROM expenses") == [("EUR",)]
    assert not schema(db)["expenses"]["currency"].nullable


def test_several_sources_need_a_source_name(tmp_path):
    data = model()
    data["tables"]["audit"] = {"source": "logs", "fields": {"msg": {"type": "text"}}}
    with pytest.raises(er.ERModelError, match="several sources"):
        er.apply_migration(tmp_path / "x.duckdb", data)
    er.apply_migration(tmp_path / "logs.duckdb", data, source="logs")
    assert set(schema(tmp_path / "logs.duckdb")) == {"audit"}
    assert "audit" not in er.ddl(data, source="main") and 'CREATE TABLE "audit"' in er.ddl(data)


def test_in_place_changes_then_new_child_table(tmp_path):
    path = tmp_path / "cats.duckdb"
    data = {
        "tables": {
            "cats": {
                "fields": {
                    "id": {"type": "integer", "key": True, "generated": True},
                    "name": {"type": "varchar"},
                    "old": {"type": "integer"},
                }
            }
        }
    }
    er.apply_migration(path, data)
    query(path, "INSERT INTO cats (name, old) VALUES ('tom', 1)")
    cats = fields(data, "cats")
    cats["name"].update(default="kit", description="Call name")
    cats["age"] = {"type": "integer"}
    del cats["old"]
    data["tables"]["toys"] = {
        "fields": {
            "id": {"type": "integer", "key": True, "generated": True},
            "cat_id": {"type": "integer", "required": True, "references": "cats.id"},
        }
    }
    con = duckdb.connect(str(path))
    plan = er.plan_migration(con, data)
    con.close()
    assert [(s.kind, s.column) for s in plan.steps if s.table == "cats"] == [
        ("alter_default", "name"),
        ("comment", "name"),
        ("add_column", "age"),
        ("drop_column", "old"),
    ]  # no rebuild: nothing references cats yet
    assert 'ALTER TABLE "cats" DROP COLUMN "old";' in plan.sql
    assert plan.sql.index('ALTER TABLE "cats"') < plan.sql.index('CREATE TABLE "toys"')
    er.apply_migration(path, data, confirm=True)
    query(path, "INSERT INTO toys (cat_id) VALUES (1)")
    query(path, "INSERT INTO cats DEFAULT VALUES")
    assert query(path, "SELECT id, name, age FROM cats ORDER BY id") == [(1, "tom", None), (2, "kit", None)]
    assert schema(path)["cats"]["name"].comment == "Call name"
    assert er.apply_migration(path, data).steps == []


# ------------------------------------------------------------------------------------------------- mermaid


def test_mermaid_diagram():
    data = model()
    fields(data, "expenses")["approver_id"] = {"type": "integer", "references": "employees.id"}
    text = er.mermaid(data)
    assert text.startswith("erDiagram\n")
    assert "    employees {" in text and "    expenses {" in text
    assert "        integer id PK" in text
    assert '        varchar name "required; max 80 chars"' in text
    assert '        varchar email UK "Work address"' in text
    assert '        integer employee_id FK "required"' in text
    assert "    employees ||--o{ expenses : employee_id" in text
    assert "    employees |o--o{ expenses : approver_id" in text
    assert text.index("employees {") < text.index("expenses {")
