"""`contextlab apps …` on a real workspace (SQLite state store, DuckDB files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from contextlab.apps import db, dsl
from contextlab.cli import main

ACTIONS = [
    "new", "validate", "list", "show", "save", "publish", "unpublish", "export", "import", "versions", "diff",
    "rollback", "migrate", "er", "serve",
]  # fmt: skip


def run(capsys: pytest.CaptureFixture, ws: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["apps", *argv[:1], "--workspace", str(ws), "--author", "tester", *argv[1:]])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("action", ACTIONS)
def test_every_command_has_help(action: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["apps", action, "--help"])
    assert info.value.code == 0
    assert "--workspace" in capsys.readouterr().out


def test_example_lifecycle(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, tmp_path, "new", "expenses", "--example", "expenses", "--publish")
    assert code == 0 and "published version 1" in out
    assert (tmp_path / "apps" / "expense_approval.bpmn").is_file()  # the example's flow came along
    with db.connect(tmp_path / "apps" / "expenses.duckdb") as con:
        assert con.execute("SELECT count(*) FROM expenses").fetchone() == (0,)

    exported = tmp_path / "expenses.yaml"
    assert run(capsys, tmp_path, "export", "expenses", "-o", str(exported))[0] == 0
    doc, _ = dsl.parse(exported.read_text())
    assert doc["dsl"] == dsl.DSL_VERSION
    exported.write_text(exported.read_text().replace("Expense approvals", "Expenses v2"))
    code, out, _ = run(capsys, tmp_path, "save", "expenses", str(exported), "--base", "1")
    assert code == 0 and "version 2" in out

    # a second save from the same base is a conflict (exit 2) with the diff; version 2 stays
    code, _, err = run(capsys, tmp_path, "save", "expenses", str(exported), "--base", "1")
    assert code == 2 and "Expenses v2" in err
    code, out, _ = run(capsys, tmp_path, "versions", "expenses")
    assert code == 0 and out.count("tester") == 2

    code, out, _ = run(capsys, tmp_path, "diff", "expenses", "1", "2")
    assert code == 0 and "-  title: Expense approvals" in out and "+  title: Expenses v2" in out
    code, out, _ = run(capsys, tmp_path, "rollback", "expenses", "1")
    assert code == 0 and "version 3" in out
    assert "title: Expense approvals" in run(capsys, tmp_path, "show", "expenses")[1]
    assert run(capsys, tmp_path, "er", "expenses")[1].startswith("erDiagram")


def test_validate_prints_path_and_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text = (Path(dsl.__file__).parent / "examples" / "expenses.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("type: chart", "type: piechart"))
    code, out, err = run(capsys, tmp_path, "validate", str(bad))
    line = bad.read_text().splitlines().index("        type: piechart") + 1
    assert code == 1 and f"bad.yaml:{line}: pages[1].components[3].type: unknown component type 'piechart'" in out
    assert "1 issue(s)" in err


def test_import_refuses_a_newer_major_version(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    text = (Path(dsl.__file__).parent / "examples" / "expenses.yaml").read_text()
    newer = tmp_path / "newer.yaml"
    newer.write_text(text.replace('dsl: "1.0"', 'dsl: "2.0"'))
    code, _, err = run(capsys, tmp_path, "import", str(newer))
    assert code == 1 and "PageDSL 2.0" in err
    assert run(capsys, tmp_path, "list", "--json")[1].strip() == "[]"  # nothing imported


def test_migrate_refuses_data_loss_until_confirmed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(capsys, tmp_path, "new", "expenses", "--example", "expenses")[0] == 0
    database = tmp_path / "apps" / "expenses.duckdb"
    with db.connect(database) as con:
        con.execute("INSERT INTO expenses (employee, category, amount, description) VALUES ('a', 'meals', 9, 'x')")
    smaller = tmp_path / "smaller.yaml"
    doc, _ = dsl.parse(run(capsys, tmp_path, "show", "expenses")[1])
    del doc["data"]["tables"]["expenses"]["fields"]["description"]
    form = doc["pages"][0]["components"][1]
    form["fields"] = [f for f in form["fields"] if f != "description"]
    smaller.write_text(dsl.to_yaml(doc))
    code, _, err = run(capsys, tmp_path, "save", "expenses", str(smaller), "--base", "1")
    assert code == 1 and "destructive" in err and "expenses.description" in err
    with db.connect(database) as con:
        assert con.execute("SELECT description FROM expenses").fetchall() == [("x",)]
    code, out, _ = run(capsys, tmp_path, "save", "expenses", str(smaller), "--base", "1", "--confirm")
    assert code == 0 and "version 2" in out
    assert list((database.parent / ".backups").glob("expenses-*.duckdb"))


def test_export_as_a_panel_script_that_runs_and_extends(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import runpy

    import panel as pn

    assert run(capsys, tmp_path, "new", "expenses", "--example", "expenses")[0] == 0
    with db.connect(tmp_path / "apps" / "expenses.duckdb") as con:
        con.execute("INSERT INTO expenses (employee, category, amount) VALUES ('ann', 'meals', 42.5)")
    script = tmp_path / "expenses_app.py"
    code, _, _ = run(capsys, tmp_path, "export", "expenses", "--python", "-o", str(script))
    assert code == 0
    assert "panel serve expenses_app.py" in script.read_text()
    scope = runpy.run_path(str(script))  # builds the real pages: queries run against the DuckDB file
    assert isinstance(scope["app"], pn.Tabs) and len(scope["app"]) == 2
    tables = [o for o in scope["pages"]["submit"].select(pn.widgets.Tabulator)]
    assert tables and tables[0].value["employee"].tolist() == ["ann"]
    scope["pages"]["submit"].append(pn.pane.Markdown("extended"))  # a plain Panel layout to extend


def test_new_without_a_source_makes_a_skeleton(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, tmp_path, "new", "notes", "--title", "Team notes")
    assert code == 0 and "created app 'notes' version 1" in out
    doc, _ = dsl.parse(run(capsys, tmp_path, "show", "notes")[1])
    assert doc["app"]["title"] == "Team notes" and doc["pages"][0]["route"] == "/home"
    code, _, err = run(capsys, tmp_path, "new", "notes")
    assert code == 1 and "notes" in err  # the name is taken; nothing overwritten
    assert run(capsys, tmp_path, "versions", "notes", "--json")[1].count('"version"') == 1
