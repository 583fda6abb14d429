"""The apps REST API inside a real Jupyter server: create, bad input, conflicts, data-model safety, scopes."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from contextlab.apps import db, dsl
from tests.support.gateway import create_token
from tests.support.server import JupyterServer, start_server

EXAMPLE = (Path(dsl.__file__).parent / "examples" / "expenses.yaml").read_text()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    root = tmp_path_factory.mktemp("ws")
    (root / "apps").mkdir()
    (root / "apps" / "expense_approval.bpmn").write_text(
        (Path(dsl.__file__).parent / "examples" / "expense_approval.bpmn").read_text()
    )
    srv = start_server(root, tmp_path_factory.mktemp("home"))
    yield srv
    srv.stop()


def create(server: JupyterServer, name: str) -> dict:
    response = server.api(
        "POST", "contextlab/api/apps", json={"yaml": EXAMPLE.replace("name: expenses", f"name: {name}")}
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_create_get_and_versions(server: JupyterServer) -> None:
    created = create(server, "rest_one")
    assert created["version"] == 1
    got = server.api("GET", "contextlab/api/apps/rest_one").json()
    assert got["dsl"]["app"]["title"] == "Expense approvals"
    assert [v["version"] for v in server.api("GET", "contextlab/api/apps/rest_one/versions").json()["versions"]] == [1]
    er = server.api("GET", "contextlab/api/apps/rest_one/er").json()
    assert er["mermaid"].startswith("erDiagram") and "expenses {" in er["mermaid"]
    with db.connect(server.root / "apps" / "expenses.duckdb") as con:  # the model was applied
        assert ("amount",) in con.execute("SELECT column_name FROM information_schema.columns").fetchall()


def test_unknown_component_type_is_422_with_the_path(server: JupyterServer) -> None:
    bad = EXAMPLE.replace("name: expenses", "name: rest_bad").replace("type: chart", "type: piechart")
    response = server.api("POST", "contextlab/api/apps", json={"yaml": bad})
    assert response.status_code == 422
    [issue] = [i for i in response.json()["issues"] if "piechart" in i["message"]]
    assert issue["path"] == "pages[1].components[3].type" and issue["line"]
    assert server.api("GET", "contextlab/api/apps/rest_bad").status_code == 404  # nothing created


def test_query_on_a_missing_table_is_422(server: JupyterServer) -> None:
    bad = EXAMPLE.replace("name: expenses", "name: rest_missing").replace("FROM expenses GROUP", "FROM spend GROUP")
    response = server.api("POST", "contextlab/api/apps", json={"yaml": bad})
    assert response.status_code == 422
    assert any("table 'spend' does not exist" in i["message"] for i in response.json()["issues"])


def test_concurrent_edits_conflict_with_the_diff(server: JupyterServer) -> None:
    create(server, "rest_cas")
    doc = server.api("GET", "contextlab/api/apps/rest_cas").json()["dsl"]
    first, second = copy.deepcopy(doc), copy.deepcopy(doc)
    first["app"]["title"] = "First writer"
    second["app"]["title"] = "Second writer"
    assert server.api("PUT", "contextlab/api/apps/rest_cas", json={"dsl": first, "base_version": 1}).status_code == 200
    response = server.api("PUT", "contextlab/api/apps/rest_cas", json={"dsl": second, "base_version": 1})
    assert response.status_code == 409
    body = response.json()
    assert "First writer" in body["diff"] and body["attempted"]["app"]["title"] == "Second writer"
    assert server.api("GET", "contextlab/api/apps/rest_cas").json()["dsl"]["app"]["title"] == "First writer"


def test_dropping_a_column_needs_confirmation_and_backs_up(server: JupyterServer) -> None:
    create(server, "rest_drop")
    doc = server.api("GET", "contextlab/api/apps/rest_drop").json()["dsl"]
    doc["data"]["sources"]["main"]["path"] = "rest_drop.duckdb"
    assert server.api("PUT", "contextlab/api/apps/rest_drop", json={"dsl": doc, "base_version": 1}).status_code == 200
    database = server.root / "apps" / "rest_drop.duckdb"
    with db.connect(database) as con:
        con.execute("INSERT INTO expenses (employee, category, amount, description) VALUES ('a', 'meals', 12, 'x')")
    smaller = copy.deepcopy(doc)
    del smaller["data"]["tables"]["expenses"]["fields"]["description"]
    for page in smaller["pages"]:
        for comp in page["components"]:
            if comp.get("fields"):
                comp["fields"] = [f for f in comp["fields"] if f != "description"]
    refused = server.api("PUT", "contextlab/api/apps/rest_drop", json={"dsl": smaller, "base_version": 2})
    assert refused.status_code == 409 and refused.json()["reason"] == "confirm_required", refused.text
    assert server.api("GET", "contextlab/api/apps/rest_drop").json()["version"] == 2  # nothing saved
    with db.connect(database) as con:
        assert con.execute("SELECT description FROM expenses").fetchall() == [("x",)]
    confirmed = server.api(
        "PUT", "contextlab/api/apps/rest_drop", json={"dsl": smaller, "base_version": 2, "confirm": True}
    )
    assert confirmed.status_code == 200, confirmed.text
    backups = list((database.parent / ".backups").glob("rest_drop-*.duckdb"))
    assert len(backups) == 1
    with db.connect(backups[0]) as con:  # the dropped data is in the backup
        assert con.execute("SELECT description FROM expenses").fetchall() == [("x",)]


def test_writing_needs_the_apps_scope(server: JupyterServer) -> None:
    reader = create_token(server, "apps-reader", ["tools"])
    headers = {"Authorization": f"Bearer {reader}"}
    assert server.api("GET", "contextlab/api/apps", headers=headers).status_code == 200
    response = server.api("POST", "contextlab/api/apps", headers=headers, json={"yaml": EXAMPLE})
    assert response.status_code == 403 and "'apps' scope" in response.text
    assert server.api("GET", "contextlab/api/apps/rest_unknown").status_code == 404
    assert httpx.get(f"{server.url}contextlab/api/apps").status_code == 403  # no token at all
