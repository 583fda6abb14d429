"""The shipped pipeline notebooks, run by the real runner with papermill on real kernels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest
from mlflow import MlflowClient

from contextlab.evaluation.sql import load_sql_suite, packaged_suite
from contextlab.pipelines.runner import PipelineRunner, notebook_parameters, packaged_pipelines, resolve_notebook
from contextlab.state import StateStore
from tests.support.fake_llm import FakeLLM


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory):
    state = tmp_path_factory.mktemp("state")
    store = StateStore(f"sqlite:///{state / 'state.db'}")
    store.migrate()
    runner = PipelineRunner(store, state, cwd=state)
    yield runner
    runner.close()
    store.close()


@pytest.mark.parametrize("name", packaged_pipelines())
def test_every_parameter_line_parses(name: str) -> None:
    """papermill skips a parameter line it cannot parse (e.g. a comment with `=`); none may be skipped."""
    nb = nbformat.read(resolve_notebook(name), as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assigned = re.findall(r"^([A-Za-z_]\w*)\s*=", cell.source, flags=re.M)
    assert sorted(notebook_parameters(resolve_notebook(name))) == sorted(assigned)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


def _gold_when_grounded():
    gold = {case.question: case.gold_sql for case in load_sql_suite(packaged_suite())}

    def reply(body: dict) -> str:
        system = body["messages"][0]["content"]
        question = body["messages"][-1]["content"]
        if "## Database schema" in system and question in gold:
            return f"```sql\n{gold[question]}\n```"
        return "```sql\nSELECT * FROM customer_table\n```"  # without the schema it guesses a table name

    return reply


def test_copilot_eval(runner: PipelineRunner) -> None:
    with FakeLLM(_gold_when_grounded()) as llm:
        model = {"name": "scripted", "backend": "openai", "model": "m", "base_url": llm.base_url, "api_key_env": "HOME"}
        record = runner.run("copilot_eval", {"models": [model], "limit": 3, "max_repairs": 1})
    assert record["status"] == "succeeded", record["error"]
    metrics = record["metrics"]
    assert metrics["scripted.accuracy_with_context"] == 1.0
    assert metrics["scripted.accuracy_without_context"] == 0.0
    assert metrics["scripted.context_gain"] == 1.0
    assert metrics["scripted.first_suggestion_usable"] == 1.0
    run = MlflowClient(runner.tracking_uri).get_run(record["mlflow_run_id"])
    assert run.data.metrics["scripted.accuracy_with_context"] == 1.0
    assert run.data.params["cases"] == "3"
    executed = json.loads(Path(record["output_path"]).read_text())
    outputs = json.dumps([c.get("outputs", []) for c in executed["cells"]])
    assert "image/png" in outputs and "Best with context: scripted" in outputs


def test_mcp_prompt_eval(runner: PipelineRunner, server) -> None:
    from contextlab.evaluation.ast_checker import reference_calls
    from contextlab.evaluation.bfcl import load_bfcl_suite

    right = {c.query: reference_calls(c) for c in load_bfcl_suite(["simple_python", "multiple"]).cases}

    def reply(body: dict):
        calls = right.get(body["messages"][-1]["content"])
        tools = body.get("tools") or []
        short = tools and all(len(t["function"]["description"].split(". ")) == 1 for t in tools)
        if calls and not short:
            return {"tool_calls": calls}
        return "I would rather not call anything."

    with FakeLLM(reply) as llm:
        model = {"name": "scripted", "backend": "openai", "model": "m", "base_url": llm.base_url, "api_key_env": "HOME"}
        record = runner.run(
            "mcp_prompt_eval",
            {
                "models": [model],
                "prompt_labels": ["stable", "short"],
                "suites": ["bfcl", "workspace"],
                "bfcl_categories": ["simple_python", "multiple", "irrelevance"],
                "cases_per_category": 3,
                "min_cases": 3,
                "server_url": server.url,
                "token": server.token,
            },
        )
    assert record["status"] == "succeeded", record["error"]
    metrics = record["metrics"]
    assert metrics["bfcl.stable.scripted.irrelevance_abstention"] == 1.0
    assert metrics["bfcl.stable.scripted.argument_accuracy"] >= metrics["bfcl.short.scripted.argument_accuracy"]
    assert "workspace.stable.scripted.tool_name_accuracy" in metrics
    client = MlflowClient(runner.tracking_uri)
    parent = client.get_run(record["mlflow_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert {c.info.run_name for c in children} >= {"bfcl stable x scripted", "bfcl short x scripted"}
    assert parent.data.tags["contextlab.proposal.bfcl"] in ("keep", "stable", "short")
    executed = json.loads(Path(record["output_path"]).read_text())
    assert "promote = False: nothing was changed" in json.dumps(executed["cells"][-1]["outputs"])


def test_rag_build_then_rag_eval(runner: PipelineRunner, tmp_path: Path) -> None:
    from contextlab.workspace import create_demo_workspace

    root = create_demo_workspace(tmp_path / "ws")
    built = runner.run("rag_build", {"workspace": str(root)})
    assert built["status"] == "succeeded", built["error"]
    assert built["metrics"]["files_added"] == 5 and built["metrics"]["chunks_total"] >= 5
    again = runner.run("rag_build", {"workspace": str(root)})
    assert again["metrics"]["files_unchanged"] == 5 and again["metrics"]["chunks_written"] == 0
    evaluated = runner.run("rag_eval", {"workspace": str(root), "k": 3})
    assert evaluated["status"] == "succeeded", evaluated["error"]
    assert evaluated["metrics"]["hit_at_3"] >= 0.8 and evaluated["metrics"]["questions"] >= 15
    assert evaluated["metrics"]["hit_curve"] >= evaluated["metrics"]["hit_at_3"]  # the last step is hit@10
    artifacts = {a.path for a in MlflowClient(runner.tracking_uri).list_artifacts(evaluated["mlflow_run_id"], "plots")}
    assert artifacts == {"plots/retrieval.png"}


def test_rag_eval_without_an_index_fails_with_the_next_step(runner: PipelineRunner, tmp_path: Path) -> None:
    record = runner.run("rag_eval", {"workspace": str(tmp_path)})
    assert record["status"] == "failed"
    assert "is empty: run the rag_build pipeline first" in record["error"] and record["error_cell"] == 2


def test_delta_finetune_trains_measures_registers_and_serves(
    runner: PipelineRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    from contextlab.copilot.llm import LLMRouter
    from contextlab.evaluation.copilot_eval import resolve_model
    from contextlab.extension.copilot_records import CopilotRecords
    from contextlab.state import StateStore, sqlite_url_for_workspace
    from contextlab.workspace import create_demo_workspace

    root = create_demo_workspace(tmp_path / "ws")
    store = StateStore(sqlite_url_for_workspace(root / ".contextlab"))
    store.migrate()
    records = CopilotRecords(store)
    for request, code, kind in (
        ("count the customers", "SELECT count(*) FROM customers", "accepted"),
        ("orders per status", "SELECT status FROM orders", "edited"),
        ("drop everything", "SELECT 1", "rejected"),
    ):
        sid = uuid.uuid4().hex
        records.add_suggestion(
            {
                "id": sid,
                "target": "sql",
                "request": request,
                "code": code,
                "valid": True,
                "model": "m",
                "prompt_version": "builtin",
            },
            "ada",
        )
        executed = "SELECT status, count(*) FROM orders GROUP BY status" if kind == "edited" else None
        records.add_feedback({"suggestion_id": sid, "kind": kind, "executed_code": executed}, "ada")
    store.close()
    parameters = {
        "workspace": str(root),
        "workspace_example_limit": 12,
        "steps": 2,
        "batch_size": 2,
        "max_length": 384,
        "generate_cases": 1,
    }
    record = runner.run("delta_finetune", parameters)
    assert record["status"] == "succeeded", record["error"]
    metrics = record["metrics"]
    assert metrics["examples_accepted"] == 1 and metrics["examples_edited"] == 1 and metrics["examples_rejected"] == 1
    assert metrics["base_loss"] > 0 and metrics["adapter_loss"] > 0 and metrics["seconds_per_step"] > 0
    client = MlflowClient(runner.tracking_uri)
    candidate = client.get_model_version_by_alias("contextlab-local-adapter", "candidate")
    assert candidate.run_id == record["mlflow_run_id"]
    assert len(candidate.tags["base_gguf_sha256"]) == 64
    tags = client.get_run(record["mlflow_run_id"]).data.tags
    aliases = client.get_registered_model("contextlab-local-adapter").aliases
    assert (tags["contextlab.adapter_champion"] == "True") == (aliases.get("champion") == candidate.version)
    if tags["contextlab.adapter_champion"] == "True":
        assert metrics["adapter_loss"] < metrics["base_loss"]
    # The router serves the registered adapter by its alias.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", runner.tracking_uri)
    spec = resolve_model("local+adapter@candidate")
    router = LLMRouter([spec])
    backend = router.backend(spec)
    answer = router.complete([{"role": "user", "content": "count the customers"}], max_tokens=8)
    assert answer.completion_tokens > 0 and backend.adapter_path is not None
    assert (backend.adapter_path / "contextlab-adapter.json").exists()


def test_delta_finetune_without_feedback_says_what_to_do(runner: PipelineRunner, tmp_path: Path) -> None:
    record = runner.run("delta_finetune", {"workspace": str(tmp_path), "include_workspace_examples": False})
    assert record["status"] == "failed"
    assert record["error"].startswith("NoTrainingData: only 0 usable example(s)")
    assert "Accept (or edit and run) some %%copilot suggestions first" in record["error"]
