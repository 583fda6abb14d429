"""Tool choice per description variant × model × suite, scored by the AST checker, against a scripted
OpenAI-compatible server (the real openai-SDK backend) and the real offline model."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from distributed import Client, LocalCluster
from matplotlib.figure import Figure

from contextlab.copilot.llm import ModelSpec
from contextlab.evaluation.ast_checker import reference_calls
from contextlab.evaluation.bfcl import load_bfcl_suite
from contextlab.evaluation.suite import ToolSelectionSuite
from contextlab.evaluation.tool_choice import (
    evaluate,
    load_irrelevance_cases,
    plot_accuracy,
    propose,
    resolve_models,
    results_frame,
    summarize,
    with_descriptions,
)
from tests.support.fake_llm import FakeLLM
from tests.support.server import free_port


@pytest.fixture(scope="module")
def suite() -> ToolSelectionSuite:
    loaded = load_bfcl_suite(["simple_python", "multiple", "parallel"])
    by_category: dict[str, list] = {}
    for case in loaded.cases:
        by_category.setdefault(case.category, []).append(case)
    picked = by_category["simple_python"][:4] + by_category["multiple"][:3] + by_category["parallel"][:2]
    return ToolSelectionSuite("bfcl-sample", picked + load_bfcl_suite(["irrelevance"]).cases[:3])


def _answer_key(cases):
    """A model that answers right when every offered tool's description says CLEAR, else wrong."""
    right = {case.query: reference_calls(case) for case in cases}

    def decide(question: str, descriptions: list[str], names: list[str]):
        clear = bool(descriptions) and all("CLEAR" in d for d in descriptions)
        calls = right.get(question, [])
        if not calls:  # an irrelevance case: a clear model declines
            return [] if clear else [{"name": names[0], "arguments": {}}]
        return calls if clear else [{"name": calls[0]["name"], "arguments": {}}]  # right tool, arguments missing

    def reply(body: dict):
        question = body["messages"][-1]["content"]
        if body.get("tools"):
            functions = [t["function"] for t in body["tools"]]
            calls = decide(question, [f["description"] for f in functions], [f["name"] for f in functions])
            return {"tool_calls": calls} if calls else "None of these functions fits."
        # the text protocol: the tools are in the system prompt, one JSON object a line
        system = body["messages"][0]["content"]
        offered = [json.loads(line) for line in system.split("<tools>")[1].split("</tools>")[0].splitlines()]
        calls = decide(question, [t["description"] for t in offered], [t["name"] for t in offered])
        return f"<tool_call>{json.dumps(calls)}</tool_call>"

    return reply


def _model(llm: FakeLLM, name: str = "scripted") -> ModelSpec:
    return ModelSpec(name=name, backend="openai", model="m", base_url=llm.base_url, api_key_env="HOME", timeout_s=20)


def _variants(cases) -> dict[str, dict[str, str]]:
    names = {t["name"]: t.get("description", "") for case in cases for t in case.tools}
    return {"stable": {}, "canary": {name: f"CLEAR. {text}" for name, text in names.items()}}


def test_scores_variants_and_proposes_the_better_one(suite) -> None:
    with FakeLLM(_answer_key(suite.cases)) as llm:
        results = evaluate(suite, _variants(suite.cases), [_model(llm)], progress=False)
    assert [(r.variant, r.case_id) for r in results[:2]] == [
        ("stable", suite.cases[0].id),
        ("stable", suite.cases[1].id),
    ]
    summary = summarize(results).set_index("variant")
    canary, stable = summary.loc["canary"], summary.loc["stable"]
    assert canary["suite"] == "bfcl-sample" and canary["cases"] == len(suite.cases)
    assert canary["argument_accuracy"] == 1.0 and canary["tool_name_accuracy"] == 1.0
    assert canary["irrelevance_abstention"] == 1.0 and canary["call_f1"] == 1.0 and canary["parse_rate"] == 1.0
    assert stable["argument_accuracy"] == 0.0 and stable["irrelevance_abstention"] == 0.0
    assert stable["tool_name_accuracy"] == pytest.approx(7 / 9)  # parallel cases need every call
    assert 0 < stable["call_f1"] < 1 and stable["retrieval_recall"] is None
    assert canary["prompt_tokens"] > 0 and canary["latency_p95_s"] >= canary["latency_p50_s"] > 0

    frame = results_frame(results)
    assert len(frame) == 2 * len(suite.cases) and set(frame["protocol"]) == {"native"}
    stable_rows = frame[frame["variant"] == "stable"].set_index("case_id")
    assert stable_rows.loc["simple_python_0", "error_type"] == "simple_function_checker:missing_required"
    assert "missing required parameter" in stable_rows.loc["simple_python_0", "reason"]
    assert stable_rows.loc["irrelevance_0", "error_type"] == "irrelevance:called"

    proposal = propose(results, current="stable", min_cases=5)
    assert proposal["promote"] == "canary" and proposal["decision"] == "promote canary"
    assert "beats stable by 1.000" in proposal["reason"]
    assert proposal["scores"]["canary"]["argument_accuracy"] == 1.0 and proposal["cases"]["canary"] == 12
    failures = proposal["failures"]["stable"]
    assert len(failures) == 10 and {"simple_function_checker:missing_required", "irrelevance:called"} <= {
        f["error_type"] for f in failures
    }
    assert proposal["failures"]["canary"] == [] and len(proposal["fixed"]) == 12 and proposal["broken"] == []

    figure = plot_accuracy(summarize(results))
    assert isinstance(figure, Figure) and len(figure.axes) == 3
    assert [t.get_text() for t in figure.axes[0].get_xticklabels()] == ["stable", "canary"]


def test_the_text_protocol_for_a_marked_endpoint(suite) -> None:
    cases = suite.cases[:2] + suite.cases[-1:]
    with FakeLLM(_answer_key(cases)) as llm:
        results = evaluate(cases, _variants(cases), [_model(llm)], text_protocol=["scripted"], progress=False)
        assert all("tools" not in body for body in llm.requests)
    summary = summarize(results).set_index("variant")
    assert summary.loc["canary", "argument_accuracy"] == 1.0 and summary.loc["canary", "irrelevance_abstention"] == 1
    assert summary.loc["stable", "argument_accuracy"] == 0.0
    assert {r.protocol for r in results} == {"text"} and all(r.answer.startswith("<tool_call>") for r in results)


def test_no_promotion_without_margin_or_cases(suite) -> None:
    with FakeLLM(_answer_key(suite.cases)) as llm:
        same = evaluate(suite.cases[:4], {"stable": {}, "same": {}}, [_model(llm)], progress=False)
        both = evaluate(suite, _variants(suite.cases), [_model(llm)], progress=False)
    kept = propose(same, current="stable", min_cases=1)
    assert kept["promote"] is None and kept["decision"] == "keep current"
    assert "stable is already the best variant" in kept["reason"]  # a tie keeps the current label
    assert "need 100" in propose(both, current="stable", min_cases=100)["reason"]
    assert "below the 2 margin" in propose(both, current="stable", min_cases=1, min_margin=2)["reason"]
    assert "was not evaluated" in propose(both, current="champion", min_cases=1)["reason"]


def test_ties_on_arguments_are_broken_by_names_then_abstention(suite) -> None:
    simple = suite.cases[:2]
    irrelevant = suite.cases[-2:]

    def reply(body: dict):
        description = body["tools"][0]["function"]["description"]
        question = body["messages"][-1]["content"]
        if any(question == c.query for c in irrelevant):
            return "No function fits." if "ABSTAIN" in description else {"tool_calls": [{"name": "x", "arguments": {}}]}
        name = next(c.tools[0]["name"] for c in simple if c.query == question)
        return {"tool_calls": [{"name": name if "NAME" in description else "wrong", "arguments": {}}]}

    def variant(word: str) -> dict[str, str]:
        return {t["name"]: f"{word} {t['description']}" for c in simple + irrelevant for t in c.tools}

    with FakeLLM(reply) as llm:
        results = evaluate(
            simple + irrelevant,
            {"stable": {}, "names": variant("NAME"), "abstains": variant("ABSTAIN"), "both": variant("NAME ABSTAIN")},
            [_model(llm)],
            progress=False,
        )
    proposal = propose(results, current="stable", min_cases=1, min_margin=0.0)
    assert list(proposal["scores"]) == ["both", "names", "abstains", "stable"]  # all at 0 argument accuracy
    assert proposal["best"] == "both" and proposal["promote"] == "both"


def test_top_k_listing_reports_retrieval_recall(suite) -> None:
    with FakeLLM(_answer_key(suite.cases)) as llm:
        results = evaluate(suite, {"canary": _variants(suite.cases)["canary"]}, [_model(llm)], top_k=2, progress=False)
        offered = [len(body["tools"]) for body in llm.requests]
    row = summarize(results).iloc[0]
    assert 0 < row["retrieval_recall"] <= 1 and offered == [2] * len(suite.cases)
    assert {r.offered for r in results} == {2}
    assert all(r.retrieval_recall is None for r in results if r.abstain_expected)
    assert all(r.retrieval_recall is not None for r in results if not r.abstain_expected)


def test_two_models_and_two_suites_are_summarised_apart(suite) -> None:
    first, second = suite.cases[:3], suite.cases[-2:]
    with FakeLLM(_answer_key(suite.cases)) as one, FakeLLM(["I do not know."]) as two:
        models = [_model(one, "good"), _model(two, "silent")]
        results = evaluate(first, _variants(first), models, suite_name="a", progress=False)
        results += evaluate(second, _variants(second), models, suite_name="b", progress=False)
    summary = summarize(results)
    assert list(zip(summary["suite"], summary["variant"], summary["model"], strict=True)) == [
        ("a", "stable", "good"),
        ("a", "stable", "silent"),
        ("a", "canary", "good"),
        ("a", "canary", "silent"),
        ("b", "stable", "good"),
        ("b", "stable", "silent"),
        ("b", "canary", "good"),
        ("b", "canary", "silent"),
    ]
    silent = summary[(summary["model"] == "silent") & (summary["suite"] == "b")]
    assert list(silent["irrelevance_abstention"]) == [1.0, 1.0] and silent["argument_accuracy"].isna().all()
    frame = results_frame(results)
    assert set(frame[(frame["model"] == "silent") & (frame["suite"] == "a")]["error_type"]) == {"no_call"}
    assert len(plot_accuracy(summary, ["argument_accuracy"]).axes) == 1


def test_executors_thread_pool_and_dask(suite) -> None:
    few = suite.cases[:3]
    with FakeLLM(_answer_key(few)) as llm:
        sequential = evaluate(few, _variants(few), [_model(llm)], progress=False)
        with ThreadPoolExecutor(2) as pool:
            threaded = evaluate(few, _variants(few), [_model(llm)], executor=pool, progress=False)
        with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
            dask = evaluate(few, _variants(few), [_model(llm)], executor=client.get_executor(), progress=False)
    key = [(r.case_id, r.variant, r.args_correct) for r in sequential]
    assert [(r.case_id, r.variant, r.args_correct) for r in threaded] == key
    assert [(r.case_id, r.variant, r.args_correct) for r in dask] == key


def test_the_offline_model_runs_through_the_text_protocol(suite) -> None:
    cases = [suite.cases[0], suite.cases[-1]]  # one simple case, one irrelevance case
    results = evaluate(cases, {"stable": {}}, ["local"], max_tokens=24, progress=False)
    assert [(r.model, r.protocol) for r in results] == [("local", "text")] * 2
    for r in results:  # whatever it answered was read or explained, never raised
        assert r.completion_tokens > 0 and r.prompt_tokens > 100
        assert r.args_correct or r.error_type
    summary = summarize(results).iloc[0]
    assert summary["cases"] == 2 and summary["parse_rate"] is not None


def test_descriptions_and_parameter_texts_are_overridden() -> None:
    tool = {
        "name": "t",
        "description": "old",
        "inputSchema": {"type": "object", "properties": {"a": {"type": "string", "description": "old a"}}},
    }
    [plain] = with_descriptions([tool], {"t": "new"})
    assert plain["description"] == "new" and plain["inputSchema"] == tool["inputSchema"]
    [full] = with_descriptions([tool], {"t": {"description": "new", "parameters": {"a": "new a", "zz": "x"}}})
    assert full["inputSchema"]["properties"]["a"]["description"] == "new a"
    assert tool["inputSchema"]["properties"]["a"]["description"] == "old a"  # the suite's tool is untouched
    assert with_descriptions([tool], {}) == [tool]


def test_model_names_resolve() -> None:
    configured = [ModelSpec(name="team-gpt", backend="openai", model="gpt-4o-mini", base_url="http://x/v1")]
    local, team, cloud = resolve_models(["local", "team-gpt", "openai:gpt-4o-mini"], configured)
    assert (local.backend, local.locality) == ("local", "local")
    assert team is configured[0]
    assert (cloud.backend, cloud.model) == ("openai", "gpt-4o-mini")


def test_bad_input(suite) -> None:
    with pytest.raises(ValueError, match="no cases"):
        evaluate(ToolSelectionSuite("empty"), {"stable": {}}, ["local"])
    with pytest.raises(ValueError, match="at least one description variant"):
        evaluate(suite, {}, ["local"])
    with pytest.raises(ValueError, match="variant 'x' describes tools no case offers: calculate_triangle_ara"):
        evaluate(suite, {"x": {"calculate_triangle_ara": "text"}}, ["local"])
    with pytest.raises(ValueError, match="did you mean calculate_triangle_area"):
        evaluate(suite, {"x": {"calculate_triangle_ara": "text"}}, ["local"])
    with pytest.raises(ValueError, match="give a description string"):
        evaluate(suite, {"x": {"calculate_triangle_area": 3}}, ["local"])
    with pytest.raises(ValueError, match="unknown model 'gpt-9'"):
        evaluate(suite, {"stable": {}}, ["gpt-9"])
    with pytest.raises(ValueError, match="named twice: local"):
        evaluate(suite, {"stable": {}}, ["local", "local"])
    with pytest.raises(ValueError, match="at least one model"):
        evaluate(suite, {"stable": {}}, [])
    with pytest.raises(ValueError, match="text_protocol names model"):
        evaluate(suite, {"stable": {}}, ["local"], text_protocol=["other"])
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        evaluate(suite, {"stable": {}}, ["local"], top_k=0)
    with pytest.raises(ValueError, match="unknown irrelevance category"):
        load_irrelevance_cases(["simple_python"])
    with pytest.raises(ValueError, match="no results"):
        propose([])
    dead = ModelSpec(
        name="dead", backend="openai", model="m", base_url=f"http://127.0.0.1:{free_port()}/v1", timeout_s=2
    )
    (result,) = evaluate(suite.cases[:1], {"stable": {}}, [dead], progress=False)
    assert result.error_type == "model_error" and not result.args_correct and "Connection" in result.reason
