"""What kernels report to the server (suggestions, feedback, usage) and read from it (models), and how a
kernel the server starts finds the endpoint, then generates through it with no setup."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid

import pytest

from contextlab.workspace import create_demo_workspace
from tests.support.fake_llm import FakeLLM
from tests.support.gateway import create_token
from tests.support.kernel import KernelSession
from tests.support.server import start_server

MODELS = [
    {
        "name": "cloud",
        "backend": "openai",
        "model": "gpt-x",
        "base_url": "http://127.0.0.1:9/v1",
        "api_key_env": "OPENAI_API_KEY",
        "cost_per_1k_output": 2.0,
    }
]


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("copilot-api-root")
    home = tmp_path_factory.mktemp("copilot-api-home")
    create_demo_workspace(root)
    server = start_server(
        root,
        home,
        extra_args=[
            "--ContextLab.providers=sql",
            "--ContextLab.providers=examples",
            *(f"--ContextLab.copilot_models={json.dumps(model)}" for model in MODELS),
            '--ContextLab.copilot_budgets={"team": 5.0}',
        ],
    )
    yield server
    server.stop()


def suggestion(**overrides) -> dict:
    body = {
        "id": uuid.uuid4().hex,
        "target": "sql",
        "request": "top customers",
        "code": "SELECT 1",
        "valid": True,
        "model": "cloud",
        "prompt_version": "copilot.sql@builtin",
        "context": [{"source": "sql__schema", "title": "Database schema", "text": "..."}],
        "attempts": [],
        "project": "team",
        "user": "somebody-else",
    }
    return {**body, **overrides}


def test_models_are_served_with_the_offline_default_appended(srv):
    config = srv.api("GET", "contextlab/api/copilot/models").json()
    assert [m["name"] for m in config["models"]] == ["cloud", "smollm2"]
    assert config["default_chain"] == ["cloud", "smollm2"] and config["budgets"] == {"team": 5.0}
    assert config["models"][0]["api_key_env"] == "OPENAI_API_KEY"  # the name of the variable, never a key


def test_suggestions_feedback_and_usage_are_recorded_as_the_caller(srv):
    viewer = create_token(srv, "analyst", ["*"], roles=["Viewer"])
    as_viewer = {"Authorization": f"Bearer {viewer}"}
    body = suggestion()
    assert srv.api("POST", "contextlab/api/copilot/suggestions", json=body, headers=as_viewer).status_code == 201
    feedback = {
        "suggestion_id": body["id"],
        "kind": "ran",
        "edit_distance": 0.25,
        "executed_code": "SELECT 2",
        "succeeded": True,
    }
    assert srv.api("POST", "contextlab/api/copilot/feedback", json=feedback, headers=as_viewer).status_code == 201
    usage = {
        "records": [
            {
                "model": "cloud",
                "backend": "openai",
                "target": "sql",
                "project": "team",
                "prompt_tokens": 100,
                "completion_tokens": 50,
                "cost": 0.1,
                "latency_s": 0.5,
                "ok": True,
                "ts": "2026-11-22T07:00:00+00:00",
            }
        ]
    }
    assert srv.api("POST", "contextlab/api/copilot/usage", json=usage, headers=as_viewer).status_code == 201
    mine = srv.api("GET", "contextlab/api/copilot/usage", params={"project": "team"}, headers=as_viewer).json()
    assert mine["spent"] == pytest.approx(0.1)
    assert mine["summary"] == [
        {
            "user": "token:analyst",
            "project": "team",
            "model": "cloud",
            "calls": 1,
            "failures": 0,
            "prompt_tokens": 100,
            "completion_tokens": 50,
            "cost": 0.1,
            "latency_s": 0.5,
        }
    ]
    with sqlite3.connect(srv.state_db) as db:
        assert db.execute("SELECT user FROM copilot_suggestions WHERE id = ?", (body["id"],)).fetchone() == (
            "token:analyst",
        )
        assert db.execute(
            "SELECT kind, edit_distance, succeeded FROM copilot_feedback WHERE suggestion_id = ?", (body["id"],)
        ).fetchone() == ("ran", 0.25, 1)


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("suggestions", {"id": "x"}, 422, '"target" must be a non-empty string'),
        ("suggestions", [1, 2], 400, "must be a JSON object"),
        ("feedback", {"suggestion_id": "nope", "kind": "ran"}, 404, "No suggestion 'nope'"),
        ("feedback", {"suggestion_id": "x", "kind": "loved"}, 422, '"kind" must be one of accepted'),
        ("feedback", {"suggestion_id": "x", "kind": "ran", "edit_distance": 3}, 422, "between 0 and 1"),
        ("usage", {"records": []}, 422, "non-empty list"),
        ("usage", {"records": [{"model": "m", "prompt_tokens": -1}]}, 422, "records[0]: prompt_tokens"),
        ("usage", {"records": [{"prompt_tokens": 1}]}, 422, "records[0]: 'model'"),
    ],
)
def test_bad_reports_get_precise_errors_and_write_nothing(srv, path, body, status, message):
    with sqlite3.connect(srv.state_db) as db:
        before = [
            db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("copilot_suggestions", "copilot_feedback", "llm_usage")
        ]
    response = srv.api("POST", f"contextlab/api/copilot/{path}", json=body)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    with sqlite3.connect(srv.state_db) as db:
        after = [
            db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("copilot_suggestions", "copilot_feedback", "llm_usage")
        ]
    assert after == before


def test_a_duplicate_suggestion_is_a_conflict(srv):
    body = suggestion()
    assert srv.api("POST", "contextlab/api/copilot/suggestions", json=body).status_code == 201
    assert srv.api("POST", "contextlab/api/copilot/suggestions", json=body).status_code == 409


def test_a_kernel_started_by_the_server_knows_the_endpoint_and_its_token(srv):
    kernel = KernelSession(srv, "probe.ipynb")
    try:
        reply = kernel.execute("import os; print(os.environ['CONTEXTLAB_MCP_URL'], os.environ['CONTEXTLAB_TOKEN'])")
    finally:
        kernel.close()
    url, token = reply["stdout"].split()
    assert url == srv.mcp_url and token == srv.token


def test_a_server_kernel_generates_sql_through_the_endpoint_with_no_setup(srv, tmp_path):
    """The engine inside a kernel the server started: context and validation go through the gateway."""
    good = "```sql\nSELECT count(*) AS n FROM customers\n```"
    with FakeLLM([good]) as llm:
        kernel = KernelSession(srv, "gen.ipynb")
        try:
            code = (
                "from contextlab.copilot.engine import Copilot\n"
                "from contextlab.copilot.context import ContextClient, Endpoint\n"
                "from contextlab.copilot.llm import LLMRouter, ModelSpec\n"
                f"router = LLMRouter([ModelSpec(name='m', backend='openai', model='m', base_url={llm.base_url!r})])\n"
                "s = Copilot(router, ContextClient(Endpoint.from_env())).generate('sql', 'how many customers')\n"
                "print(s.valid, s.validation['rows'][0][0] if s.valid else s.validation)"
            )
            reply = kernel.execute(code, timeout=120)
        finally:
            kernel.close()
    valid, count = reply["stdout"].split()
    assert valid == "True" and int(count) > 0
    system = llm.requests[0]["messages"][0]["content"]
    assert "## Database schema" in system
    # Worked examples generated from the served database come with the context.
    assert "## Similar questions and their SQL" in system and "Q: How many customers are there?" in system


def _notebook(*sources: str) -> dict:
    cells = [
        {"id": f"c{i}", "cell_type": "code", "source": source, "metadata": {}, "outputs": [], "execution_count": None}
        for i, source in enumerate(sources)
    ]
    return {"type": "notebook", "content": {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}}


def test_deleting_a_copilot_cell_and_saving_records_deleted_feedback(srv):
    kept, dropped = suggestion(), suggestion()
    for body in (kept, dropped):
        assert srv.api("POST", "contextlab/api/copilot/suggestions", json=body).status_code == 201
    marked = [f"# copilot:{kept['id']}\nSELECT 1", f"# copilot:{dropped['id']}\nSELECT 2", "x = 1"]
    path = "api/contents/feedback-watch.ipynb"
    assert srv.api("PUT", path, json=_notebook(*marked)).status_code in (200, 201)
    assert srv.api("PUT", path, json=_notebook(marked[0], marked[2])).status_code == 200  # second cell deleted

    def kinds(suggestion_id: str) -> list[str]:
        with sqlite3.connect(srv.state_db) as db:
            rows = db.execute("SELECT kind, user FROM copilot_feedback WHERE suggestion_id = ?", (suggestion_id,))
            return [f"{kind}:{user}" for kind, user in rows]

    deadline = time.monotonic() + 10
    while not kinds(dropped["id"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    with sqlite3.connect(srv.state_db) as db:
        (owner,) = db.execute("SELECT user FROM copilot_suggestions WHERE id = ?", (dropped["id"],)).fetchone()
    assert kinds(dropped["id"]) == [f"deleted:{owner}"]
    assert kinds(kept["id"]) == []
    # A save without changes records nothing more.
    assert srv.api("PUT", path, json=_notebook(marked[0], marked[2])).status_code == 200
    time.sleep(0.5)
    assert len(kinds(dropped["id"])) == 1
