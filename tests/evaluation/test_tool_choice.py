"""Tool choice per description variant × model, scored by the AST checker, against a scripted
OpenAI-compatible server (the real openai-SDK backend) and the real offline model."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from distributed import Client, LocalCluster

from contextlab.copilot.llm import OFFLINE_MODEL, ModelSpec
from contextlab.evaluation.ast_checker import reference_calls
from contextlab.evaluation.bfcl import load_bfcl_suite
from contextlab.evaluation.tool_choice import (
    evaluate,
    load_irrelevance_cases,
    parse_tool_calls,
    propose,
    results_frame,
    summarize,
)
from tests.support.fake_llm import FakeLLM


@pytest.fixture(scope="module")
def cases():
    suite = load_bfcl_suite(["simple_python", "multiple", "parallel"])
    by_category: dict[str, list] = {}
    for case in suite.cases:
        by_category.setdefault(case.category, []).append(case)
    picked = by_category["simple_python"][:4] + by_category["multiple"][:3] + by_category["parallel"][:2]
    return picked + load_irrelevance_cases(limit=3)


def _answer_key(cases):
    """A model that answers right when the tools carry the word CLEAR in their description, else wrong."""
    right = {case.query: reference_calls(case) for case in cases}

    def reply(body: dict):
        question = body["messages"][-1]["content"]
        tools = body.get("tools") or []
        clear = tools and all("CLEAR" in t["function"]["description"] for t in tools)
        calls = right.get(question, [])
        if not calls:  # an irrelevance case: a clear model declines
            return (
                "None of these functions fits."
                if clear
                else {"tool_calls": [{"name": tools[0]["function"]["name"], "arguments": {}}]}
            )
        if clear:
            return {"tool_calls": calls}
        return {"tool_calls": [{"name": calls[0]["name"], "arguments": {}}]}  # right tool, arguments missing

    return reply


def _model(llm: FakeLLM) -> ModelSpec:
    return ModelSpec(name="scripted", backend="openai", model="m", base_url=llm.base_url, api_key_env="HOME")


def _variants(cases) -> dict[str, dict[str, str]]:
    names = {t["name"]: t.get("description", "") for case in cases for t in case.tools}
    return {"stable": {}, "canary": {name: f"CLEAR. {text}" for name, text in names.items()}}


def test_scores_variants_and_proposes_the_better_one(cases) -> None:
    with FakeLLM(_answer_key(cases)) as llm:
        results = evaluate(cases, _variants(cases), [_model(llm)], progress=False)
    summary = summarize(results).set_index("variant")
    canary, stable = summary.loc["canary"], summary.loc["stable"]
    assert canary["argument_accuracy"] == 1.0 and canary["tool_name_accuracy"] == 1.0
    assert canary["irrelevance_abstention"] == 1.0 and canary["call_f1"] == 1.0
    assert stable["argument_accuracy"] == 0.0 and stable["irrelevance_abstention"] == 0.0
    assert stable["tool_name_accuracy"] == pytest.approx(7 / 9)  # parallel cases need both calls
    assert canary["prompt_tokens"] > 0 and canary["latency_p95_s"] >= canary["latency_p50_s"]
    frame = results_frame(results)
    assert len(frame) == 2 * len(cases)
    proposal = propose(results, current="stable", min_cases=5)
    assert proposal["promote"] == "canary" and "beats stable by 1.000" in proposal["reason"]
    failures = proposal["failures"]["stable"]
    assert failures and {f["error_type"] for f in failures} >= {"simple_function_checker:missing_required"}


def test_no_promotion_without_margin_or_cases(cases) -> None:
    with FakeLLM(_answer_key(cases)) as llm:
        results = evaluate(cases[:4], {"stable": {}, "same": {}}, [_model(llm)], progress=False)
    assert propose(results, current="stable", min_cases=1)["promote"] is None
    with FakeLLM(_answer_key(cases)) as llm:
        results = evaluate(cases, _variants(cases), [_model(llm)], progress=False)
    assert "need 100" in propose(results, current="stable", min_cases=100)["reason"]


def test_top_k_listing_reports_retrieval_recall(cases) -> None:
    with FakeLLM(_answer_key(cases)) as llm:
        results = evaluate(cases, {"canary": _variants(cases)["canary"]}, [_model(llm)], top_k=2, progress=False)
    summary = summarize(results).iloc[0]
    assert 0 < summary["retrieval_recall"] <= 1
    assert {r.offered for r in results} == {2}


def test_executors_thread_pool_and_dask(cases) -> None:
    few = cases[:3]
    with FakeLLM(_answer_key(cases)) as llm:
        sequential = evaluate(few, _variants(few), [_model(llm)], progress=False)
        with ThreadPoolExecutor(2) as pool:
            threaded = evaluate(few, _variants(few), [_model(llm)], executor=pool, progress=False)
        with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
            dask = evaluate(few, _variants(few), [_model(llm)], executor=client.get_executor(), progress=False)
    key = [(r.case_id, r.variant, r.args_correct) for r in sequential]
    assert [(r.case_id, r.variant, r.args_correct) for r in threaded] == key
    assert [(r.case_id, r.variant, r.args_correct) for r in dask] == key


def test_the_offline_model_runs_through_the_text_protocol(cases) -> None:
    results = evaluate(cases[:2], {"stable": {}}, [OFFLINE_MODEL], max_tokens=64, progress=False)
    assert len(results) == 2 and all(r.model == "smollm2" and r.completion_tokens > 0 for r in results)
    for r in results:  # whatever it answered was read or reported, never raised
        assert r.parsed or r.reason


def test_bad_input(cases) -> None:
    with pytest.raises(ValueError, match="no cases"):
        evaluate([], {"stable": {}}, [OFFLINE_MODEL])
    with pytest.raises(ValueError, match="at least one description variant"):
        evaluate(cases, {}, [OFFLINE_MODEL])
    with pytest.raises(ValueError, match="variant 'x' describes tools no case offers: nope"):
        evaluate(cases, {"x": {"nope": "text"}}, [OFFLINE_MODEL])
    with pytest.raises(ValueError, match="unknown irrelevance category"):
        load_irrelevance_cases(["simple"])
    dead = ModelSpec(
        name="dead", backend="openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env="HOME", timeout_s=2
    )
    (result,) = evaluate(cases[:1], {"stable": {}}, [dead], progress=False)
    assert result.error_type == "model_error" and not result.args_correct


@pytest.mark.parametrize(
    ("text", "calls"),
    [
        ('<tool_call>[{"name": "f", "arguments": {"x": 1}}]</tool_call>', [{"name": "f", "arguments": {"x": 1}}]),
        (
            '<tool_call>{"name": "f", "arguments": "{\\"x\\": 2}"}</tool_call> done',
            [{"name": "f", "arguments": {"x": 2}}],
        ),
        (
            '<tool_call>{"name": "f", "arguments": {}}</tool_call>\n'
            '<tool_call>{"name": "g", "arguments": {}}</tool_call>',
            [{"name": "f", "arguments": {}}, {"name": "g", "arguments": {}}],
        ),
        ('```json\n[{"name": "f", "parameters": {"a": "b"}}]\n```', [{"name": "f", "arguments": {"a": "b"}}]),
        ("<tool_call>[]</tool_call>", []),
        ('Sure! {"name": "f", "arguments": {"y": [1, 2]}} is the call', [{"name": "f", "arguments": {"y": [1, 2]}}]),
        ("I cannot help with that.", None),
        ('<tool_call>[{"name": ', None),
    ],
)
def test_parse_tool_calls(text: str, calls) -> None:
    assert parse_tool_calls(text) == calls
