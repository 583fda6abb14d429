"""`%%copilot`, `%copilot`, `%%duckdb` and the buttons, in a real in-process IPython shell.

Context and validation are real (the SQL provider over the demo shop behind a stand-in ContextLab
server that also implements the Copilot REST contract); the model is a scripted OpenAI-compatible server.
"""

from __future__ import annotations

import pandas as pd
import pytest

from contextlab.kernels.session import CellError
from tests.kernels.conftest import model, models_file, serve_models
from tests.support.fake_llm import FakeLLM
from tests.support.server import free_port

GOOD = "```sql\nSELECT name, country FROM customers ORDER BY customer_id LIMIT 5\n```"
GOOD_SQL = "SELECT name, country FROM customers ORDER BY customer_id LIMIT 5"
OTHER = "```sql\nSELECT count(*) AS n FROM orders\n```"
WRITE = "```sql\nDELETE FROM customers\n```"


def generate(shell, request: str = "five customers with their country", options: str = ""):
    result, captured = shell.run(f"%%copilot sql {options}\n{request}")
    assert result.error_in_exec is None, captured.stdout
    return shell.session.history[-1], captured


def error_text(result, captured) -> str:
    """The cell failed with one clear message and no traceback."""
    assert isinstance(result.error_in_exec, CellError), result.error_in_exec
    assert "Traceback" not in captured.stdout + captured.stderr
    assert captured.stdout.count(str(result.error_in_exec)) == 1
    return str(result.error_in_exec)


def test_a_copilot_cell_streams_shows_provenance_and_inserts_a_duckdb_cell_below(shell):
    with FakeLLM([GOOD]) as llm:
        serve_models(shell.server, model(llm))
        record, captured = generate(shell)
    s = record.suggestion
    assert s.valid and s.code == GOOD_SQL and s.model == "scripted"
    # streamed: the first token opened a display, later updates replaced it; the last carries the provenance
    first, final = captured.outputs[0], [o for o in captured.outputs if o.update][-1]
    assert "Generating" in first.data["text/plain"] and not first.update
    assert final.metadata == {"contextlab": s.provenance()} and final.metadata["contextlab"]["suggestion_id"] == s.id
    assert (
        GOOD_SQL in final.data["text/markdown"] and "Inserted below as a new %%duckdb cell." in final.data["text/plain"]
    )
    assert "first rows (5)" in final.data["text/plain"]
    # a new cell, never a replacement of the asking cell, with the marker after the magic line
    assert shell.inserted == [(f"%%duckdb\n-- copilot:{s.id}\n{GOOD_SQL}", False)]
    # reported to the server with the user and project
    posted = shell.server.suggestions
    assert [p["id"] for p in posted] == [s.id] and posted[0]["project"] == "default" and posted[0]["user"]
    assert shell.server.requests[0]["authorization"] == "Bearer cl_test_token"
    assert {r["model"] for r in shell.server.usage} == {"scripted"}


def test_the_inserted_cell_runs_read_only_through_the_endpoint(shell):
    with FakeLLM([GOOD]) as llm:
        serve_models(shell.server, model(llm))
        generate(shell)
    result, captured = shell.run(shell.inserted[0][0])
    frame = result.result
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == ["name", "country"] and len(frame) == 5


def test_live_dataframes_reach_the_prompt_named_ones_first_and_capped(shell):
    ip = shell.ip
    ip.user_ns["regions"] = pd.DataFrame({"region": ["north", "south"], "target": [1.5, 2.5]})
    for i in range(6):
        ip.user_ns[f"frame{i}"] = pd.DataFrame({"x": [i]})
    ip.user_ns["_hidden"] = pd.DataFrame({"y": [1]})
    with FakeLLM([GOOD]) as llm:
        serve_models(shell.server, model(llm))
        record, _ = generate(shell, "customers per country, compare with frame5")
    system = llm.requests[0]["messages"][0]["content"]
    titles = [c["title"] for c in record.suggestion.context]
    assert titles[0] == "Database schema" and titles[1] == "DataFrame frame5"  # named in the request: first
    assert len(titles) == 1 + 5 and "DataFrame _hidden" not in titles
    assert "## DataFrame regions" in system and "2 rows x 2 columns" in system
    dtype = str(ip.user_ns["regions"].dtypes["region"])  # object, or str with pandas 3
    assert f"columns: region {dtype}, target float64" in system and "north" in system
    assert [c["source"] for c in record.suggestion.provenance()["context"]][1:] == ["kernel"] * 5


def test_no_context_sends_only_the_request(shell):
    shell.ip.user_ns["regions"] = pd.DataFrame({"region": ["north"]})
    with FakeLLM([GOOD]) as llm:
        serve_models(shell.server, model(llm))
        record, _ = generate(shell, options="--no-context")
    assert record.suggestion.context == [] and "regions" not in llm.requests[0]["messages"][0]["content"]


def test_an_invalid_suggestion_is_inserted_under_a_warning_header(shell):
    with FakeLLM([WRITE]) as llm:
        serve_models(shell.server, model(llm))
        record, captured = generate(shell, "remove every customer")
    s = record.suggestion
    assert not s.valid and len(s.attempts) == 3
    cell = shell.inserted[0][0]
    lines = cell.splitlines()
    assert lines[:2] == ["%%duckdb", f"-- copilot:{s.id}"]
    assert lines[2].startswith("-- COPILOT WARNING: this code did not pass validation:") and "read-only" in lines[2]
    assert lines[-1] == "DELETE FROM customers"
    assert "did not pass validation" in captured.outputs[-2].data["text/plain"]
    assert shell.server.suggestions[0]["valid"] is False


def test_model_option_project_and_explain(shell):
    with FakeLLM([GOOD, "It lists five customers and their countries."]) as llm:
        serve_models(shell.server, model(llm, "slow"), model(llm, "fast"))
        record, captured = generate(shell, options="--model fast --project growth --explain")
    assert record.suggestion.model == "fast" and shell.server.suggestions[0]["project"] == "growth"
    assert record.explanation == "It lists five customers and their countries."
    assert "Explanation" in [o for o in captured.outputs if o.update][-1].data["text/plain"]
    assert "explain" in llm.requests[1]["messages"][0]["content"].lower()
    assert {(u["project"], u["target"]) for u in shell.server.usage} == {("growth", "sql"), ("growth", "explain")}


# -- errors: one clear message, nothing recorded ------------------------------------------------------


def assert_nothing_recorded(shell):
    assert shell.session.history == [] and shell.inserted == []
    assert shell.server.suggestions == [] and shell.server.feedback == []


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("%%copilot poem\nroses are red", "Unknown target 'poem'. Targets: "),
        ("%%copilot sql\n   \n", "Write what you need below `%%copilot sql`"),
        ("%%copilot\ntop customers", "Name a target"),
        ("%%copilot sql --model nope\ntop customers", "Unknown model 'nope'. Configured models: scripted"),
    ],
)
def test_bad_requests_fail_with_one_message_before_any_model_call(shell, cell, message):
    with FakeLLM([GOOD]) as llm:
        serve_models(shell.server, model(llm))
        result, captured = shell.run(cell)
    assert message in error_text(result, captured)
    assert llm.requests == [] and captured.outputs == []
    assert_nothing_recorded(shell)


def test_no_reachable_server_fails_with_one_message(shell, monkeypatch, tmp_path):
    with FakeLLM([GOOD]) as llm:
        monkeypatch.setenv("CONTEXTLAB_MODELS", str(models_file(tmp_path / "m.json", model(llm))))
        monkeypatch.setenv("CONTEXTLAB_MCP_URL", f"http://127.0.0.1:{free_port()}/contextlab/mcp")
        result, captured = shell.run("%%copilot sql\ntop customers")
        assert "Cannot reach the ContextLab endpoint" in error_text(result, captured)
        monkeypatch.delenv("CONTEXTLAB_MCP_URL")
        result, captured = shell.run("%%copilot sql\ntop customers")
        assert "No ContextLab server is known to this kernel" in error_text(result, captured)
    assert llm.requests == [] and shell.session.history == [] and shell.inserted == []


def test_without_a_server_no_context_still_generates_parse_checked_sql(shell, monkeypatch, tmp_path):
    monkeypatch.delenv("CONTEXTLAB_MCP_URL")
    with FakeLLM([GOOD]) as llm:
        monkeypatch.setenv("CONTEXTLAB_MODELS", str(models_file(tmp_path / "m.json", model(llm))))
        record, _ = generate(shell, options="--no-context")
    assert record.suggestion.valid and "parsed only" in record.suggestion.validation["checked"]
    assert shell.inserted and shell.session.api is None


def test_a_dead_model_endpoint_fails_with_one_message(shell):
    serve_models(shell.server, model(type("Dead", (), {"base_url": f"http://127.0.0.1:{free_port()}/v1"})(), "gone"))
    result, captured = shell.run("%%copilot sql\ntop customers")
    assert "No model answered. Every model failed: gone: APIConnectionError" in error_text(result, captured)
    assert_nothing_recorded(shell)
    assert [(u["model"], u["ok"]) for u in shell.server.usage] == [("gone", False)]  # the failed attempt is accounted


def test_a_policy_that_forbids_every_model_fails_with_one_message(shell):
    with FakeLLM([GOOD]) as llm:
        serve_models(shell.server, model(llm, "cloud"), budgets={"capped": 0.5})
        shell.server.usage.append(  # what other kernels spent: the server knows it
            {
                "user": "bo",
                "project": "capped",
                "model": "cloud",
                "prompt_tokens": 1,
                "completion_tokens": 1,
                "cost": 0.75,
                "latency_s": 0.1,
                "ok": True,
            }
        )
        result, captured = shell.run("%%copilot sql --sensitivity secret\ntop customers")
        assert "public models may not receive secret context" in error_text(result, captured)
        result, captured = shell.run("%%copilot sql --project capped\ntop customers")
        assert "project 'capped' is over its budget" in error_text(result, captured)
    assert llm.requests == [] and len(shell.server.usage) == 1
    assert_nothing_recorded(shell)


def test_a_broken_models_file_fails_with_one_message(shell, monkeypatch, tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text("models:\n  - {name: x, backend: telepathy}\n")
    monkeypatch.setenv("CONTEXTLAB_MODELS", str(path))
    result, captured = shell.run("%%copilot sql\ntop customers")
    assert "backend must be openai, anthropic or local" in error_text(result, captured)
    assert_nothing_recorded(shell)


# -- buttons ------------------------------------------------------------------------------------------


def test_accept_and_reject_buttons_send_feedback(shell):
    with FakeLLM([GOOD]) as llm:
        serve_models(shell.server, model(llm))
        first, _ = generate(shell)
        second, _ = generate(shell, "again")
    shell.session.views[first.id].accept.click()
    view = shell.session.views[second.id]
    view.reject.click()
    assert [(f["suggestion_id"], f["kind"]) for f in shell.server.feedback] == [
        (first.id, "accepted"),
        (second.id, "rejected"),
    ]
    assert view.accept.disabled and view.reject.disabled and "Rejected" in view.status.value
    assert first.feedback == ["accepted"] and second.feedback == ["rejected"]


def test_regenerate_makes_a_new_suggestion_with_its_own_buttons(shell):
    with FakeLLM([GOOD, OTHER]) as llm:
        serve_models(shell.server, model(llm))
        record, _ = generate(shell)
        view = shell.session.views[record.id]
        view.regenerate.click()
    new = shell.session.history[-1]
    assert len(shell.session.history) == 2 and new.id != record.id and new.request == record.request
    assert new.suggestion.code == "SELECT count(*) AS n FROM orders" and new.suggestion.valid
    shown = view.output.outputs[0]
    assert "SELECT count(*) AS n FROM orders" in shown["data"]["text/plain"]
    assert shown["metadata"] == {"contextlab": new.suggestion.provenance()}
    assert "%copilot insert" in shown["data"]["text/plain"]
    assert view.children[0].record is new and [s["id"] for s in shell.server.suggestions] == [record.id, new.id]
    assert len(shell.inserted) == 1  # a button cannot insert a cell; %copilot insert does
    shell.run("%copilot insert")
    assert shell.inserted[-1][0] == f"%%duckdb\n-- copilot:{new.id}\nSELECT count(*) AS n FROM orders"


def test_explain_shows_the_models_explanation(shell):
    with FakeLLM([GOOD, "It returns the first five customers and their country."]) as llm:
        serve_models(shell.server, model(llm))
        record, _ = generate(shell)
        view = shell.session.views[record.id]
        view.explain.click()
    assert view.output.outputs[-1]["data"]["text/plain"].endswith(
        "It returns the first five customers and their country."
    )
    asked = llm.requests[1]["messages"]
    assert "explain" in asked[0]["content"].lower() and GOOD_SQL in asked[1]["content"]
    assert not view.explain.disabled


def test_a_failing_button_says_why_in_its_status_line(shell):
    with FakeLLM([GOOD]) as llm:
        serve_models(shell.server, model(llm))
        record, _ = generate(shell)
    view = shell.session.views[record.id]  # the model server is gone now
    view.regenerate.click()
    assert "No model answered" in view.status.value and len(shell.session.history) == 1
    assert not view.regenerate.disabled


# -- implicit feedback --------------------------------------------------------------------------------


def test_running_the_inserted_cell_records_ran_edited_and_reverted_with_edit_distances(shell):
    with FakeLLM([GOOD]) as llm:
        serve_models(shell.server, model(llm))
        record, _ = generate(shell)
    cell = shell.inserted[0][0]
    shell.run(cell)
    shell.run(cell.replace("LIMIT 5", "LIMIT 3"))
    shell.run(cell)
    result, _ = shell.run(cell.replace("country", "nationality"))
    assert not result.success
    kinds = [(f["kind"], f["edit_distance"], f["succeeded"]) for f in shell.server.feedback]
    assert kinds[0] == ("ran", 0.0, True)
    assert kinds[1][0] == "edited" and 0 < kinds[1][1] < 0.1 and kinds[2][:1] == ("ran",) and kinds[2][2] is True
    assert kinds[3] == ("reverted", 0.0, None) and kinds[4] == ("ran", 0.0, True)
    assert kinds[5][0] == "edited" and kinds[6][0] == "ran" and kinds[6][2] is False
    assert shell.server.feedback[1]["executed_code"] == GOOD_SQL.replace("LIMIT 5", "LIMIT 3")
    assert [run["levenshtein"] for run in record.runs] == [0, 1, 0, len("nationality") - 2]
    assert record.feedback == ["ran", "edited", "ran", "reverted", "ran", "edited", "ran"]


def test_a_python_marker_is_recognised_and_a_cell_without_one_is_ignored(shell):
    from contextlab.copilot.engine import Suggestion
    from contextlab.kernels.session import Record, Request

    suggestion = Suggestion("ab" * 16, "python", "add", "total = 1 + 2", True, "m", "p@1", [], [])
    shell.session.history.append(Record(suggestion, Request("python", "add"), None, (f"# copilot:{'ab' * 16}",)))
    shell.server.suggestions.append({"id": "ab" * 16})
    shell.run("x = 1")
    shell.run(f"# copilot:{'ab' * 16}\ntotal = 1 + 2")
    shell.run(f"# copilot:{'ab' * 16}\ntotal = 1 + 2 + 3")
    assert [(f["kind"], f["edit_distance"]) for f in shell.server.feedback][:1] == [("ran", 0.0)]
    assert [f["kind"] for f in shell.server.feedback] == ["ran", "edited", "ran"]
    assert shell.ip.user_ns["total"] == 6


# -- line magics --------------------------------------------------------------------------------------


def test_models_history_usage_and_config(shell):
    with FakeLLM([GOOD]) as llm:
        serve_models(shell.server, model(llm, "a"), model(llm, "b", locality="local"), budgets={"default": 10.0})
        record, _ = generate(shell)
    _, captured = shell.run("%copilot models")
    table = captured.outputs[0].data["text/plain"]
    assert "Models (from server)" in table and "a " in table and "local" in table
    assert "default chain: a → b" in captured.stdout and "budgets: default: 10" in captured.stdout

    shell.run("%copilot accept")
    _, captured = shell.run("%copilot history")
    history = captured.outputs[0].data["text/plain"]
    assert record.id[:12] in history and "accepted" in history and "five customers" in history

    _, captured = shell.run("%copilot usage")
    usage = captured.outputs[0].data["text/plain"]
    assert "LLM usage (server)" in usage and "default" in usage and "a " in usage
    assert "prompt_tokens" in usage and "mean_latency_s" in usage

    result, captured = shell.run("%copilot config model=b project=growth sensitivity=confidential")
    assert result.error_in_exec is None
    settings = captured.outputs[0].data["text/plain"]
    assert "growth" in settings and "confidential" in settings and "Bearer" in settings
    assert shell.session.settings.model == "b"
    result, captured = shell.run("%copilot config model=zzz")
    assert "Unknown model 'zzz'" in error_text(result, captured)
    result, captured = shell.run("%copilot frobnicate")
    assert "Unknown command 'frobnicate'" in error_text(result, captured)


def test_context_shows_the_schema_and_the_kernels_dataframes(shell):
    shell.ip.user_ns["targets"] = pd.DataFrame({"country": ["DE"], "goal": [3]})
    _, captured = shell.run("%copilot context sql")
    texts = [o.data["text/plain"] for o in captured.outputs]
    assert texts[0].startswith("## Database schema (sql__schema)") and "customers(customer_id" in texts[0]
    assert texts[1].startswith("## DataFrame targets (kernel)") and "goal int64" in texts[1]


def test_accept_and_reject_by_id_and_errors_for_unknown_ids(shell):
    result, captured = shell.run("%copilot accept")
    assert "No suggestion in this kernel yet" in error_text(result, captured)
    with FakeLLM([GOOD]) as llm:
        serve_models(shell.server, model(llm))
        first, _ = generate(shell)
        generate(shell, "again")
    shell.run(f"%copilot reject {first.id[:8]}")
    assert shell.server.feedback[-1] == {
        "suggestion_id": first.id,
        "kind": "rejected",
        "edit_distance": None,
        "executed_code": None,
        "succeeded": None,
    }
    assert shell.session.views[first.id].reject.disabled
    result, captured = shell.run("%copilot accept ffffffffffff")
    assert "No suggestion 'ffffffffffff'" in error_text(result, captured)


def test_feedback_survives_a_server_outage(shell):
    with FakeLLM([GOOD]) as llm:
        serve_models(shell.server, model(llm))
        record, _ = generate(shell)
    shell.server.down = True
    result, captured = shell.run("%copilot accept")
    assert result.error_in_exec is None and "Recorded: accepted" in captured.stdout and captured.stderr == ""
    assert shell.server.feedback == [] and len(shell.session.api.pending) == 1
    shell.server.down = False
    shell.run("%copilot reject")
    assert [f["kind"] for f in shell.server.feedback] == ["accepted", "rejected"]
    _, captured = shell.run("%copilot log")
    assert "HTTP 503" in captured.stdout


# -- %%duckdb -----------------------------------------------------------------------------------------


def test_duckdb_returns_a_dataframe_stores_it_and_notes_truncation(shell):
    result, captured = shell.run("%%duckdb -o top --limit 3\nSELECT customer_id, signup_date FROM customers")
    frame = result.result
    assert list(frame.columns) == ["customer_id", "signup_date"] and len(frame) == 3
    assert shell.ip.user_ns["top"] is frame
    assert "Showing the first 3 rows" in captured.stdout


def test_duckdb_errors_are_one_message(shell):
    result, captured = shell.run("%%duckdb\nSELECT nope FROM customers")
    assert error_text(result, captured).startswith("The query failed:")
    assert "DuckDB: The query failed" in captured.stdout
    result, captured = shell.run("%%duckdb\nDROP TABLE customers")
    assert "read-only" in error_text(result, captured)
    result, captured = shell.run("%%duckdb\n-- only a comment\n")
    assert "Write one SQL query" in error_text(result, captured)


def test_unload_removes_the_magics_and_the_hook(shell):
    ip = shell.ip
    session = shell.session
    ip.run_line_magic("unload_ext", "contextlab.kernels")
    assert "copilot" not in ip.magics_manager.magics["cell"] and "duckdb" not in ip.magics_manager.magics["cell"]
    assert session.on_post_run_cell not in ip.events.callbacks["post_run_cell"]
    ip.run_line_magic("load_ext", "contextlab.kernels")
    assert shell.session is not session
