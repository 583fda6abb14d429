"""RAG evaluation on a real document index: retrieval metrics, offline answer metrics, plots, executors, and
an LLM judge served by a scripted OpenAI-compatible endpoint through the real openai-SDK backend."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

from contextlab.copilot.llm import LLMRouter, ModelSpec
from contextlab.evaluation.rag import (
    context_recall,
    evaluate_rag,
    evaluate_retrieval,
    hit_curve,
    hit_curve_of,
    judge_answers,
    load_qa_set,
    normalize,
    packaged_qa_set,
    plot_hit_curve,
    plot_score_histogram,
    summarize,
    token_f1,
)
from contextlab.evaluation.suite import SuiteFormatError
from contextlab.providers.docs_index import DocIndex
from contextlab.workspace import create_demo_workspace
from tests.support.fake_llm import FakeLLM


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> DocIndex:
    root = create_demo_workspace(tmp_path_factory.mktemp("ws"))
    index = DocIndex(tmp_path_factory.mktemp("ix") / "ix")
    index.build(root, progress=False)
    return index


def test_the_demo_questions_retrieve_their_documents(index: DocIndex) -> None:
    cases = load_qa_set(packaged_qa_set())
    assert len(cases) >= 15 and len({c.id for c in cases}) == len(cases)
    indexed = {d["doc_id"] for d in index.documents()}
    assert all(set(c.doc_ids) <= indexed for c in cases), "every gold document is in the demo workspace"
    result = evaluate_rag(index, cases, k=3)
    summary = result.summary
    assert summary["questions"] == len(cases) and len(result.frame) == len(cases)
    assert summary["hit@3"] >= 0.9 and summary["hit@1"] >= 0.6 and 0.7 <= summary["mrr"] <= 1
    assert 0 < summary["ndcg@3"] <= 1 and summary["context_recall"] >= 0.9
    plans = result.frame.set_index("id").loc["plans"]
    assert plans["ranked"][0] == "docs/data_dictionary.md" and plans["hit@1"] == 1.0 and plans["mrr"] == 1.0
    assert plans["answer_in_context"] == 1.0 and "free, pro or enterprise" in plans["context"]
    curve = hit_curve(index, cases, 5)
    assert curve == sorted(curve) and curve[2] == summary["hit@3"] and curve[-1] == 1.0


def test_questions_can_be_mapped_by_an_executor(index: DocIndex) -> None:
    cases = load_qa_set(packaged_qa_set())[:6]
    with ThreadPoolExecutor(2) as pool:
        mapped = evaluate_retrieval(index, cases, k=3, executor=pool)
    assert mapped == evaluate_retrieval(index, cases, k=3)


def test_a_question_whose_document_is_missing_scores_zero(index: DocIndex, tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "How is revenue defined?", "doc_ids": ["docs/absent.md"], "answer": "zebra"}\n')
    (row,) = evaluate_retrieval(index, load_qa_set(path), k=3)
    assert row["id"] == "qa-1" and row["hit@3"] == row["mrr"] == row["ndcg@3"] == 0.0
    assert row["context_recall"] == row["answer_in_context"] == 0.0
    with pytest.raises(ValueError, match="k must be an integer between 1 and 50"):
        evaluate_retrieval(index, load_qa_set(path), k=0)
    with pytest.raises(ValueError, match="no questions"):
        evaluate_retrieval(index, [], k=3)


def test_plots(index: DocIndex) -> None:
    result = evaluate_rag(index, load_qa_set(packaged_qa_set()), k=3)
    curve = plot_hit_curve(result)
    (axes,) = curve.axes
    assert list(axes.lines[0].get_ydata()) == hit_curve_of(result.frame.to_dict("records"))
    assert axes.lines[0].get_ydata()[2] == result.summary["hit@3"]
    assert axes.get_xlabel().startswith("k")
    histogram = plot_score_histogram(result)
    assert [a.get_xlabel() for a in histogram.axes] == ["mrr", "context_recall", "answer_in_context"]
    with pytest.raises(ValueError, match="no column 'faithfulness'"):
        plot_score_histogram(result, ["faithfulness"])


def test_judged_faithfulness_relevancy_and_answer_f1(index: DocIndex) -> None:
    def reply(body: dict) -> str:
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        if "You grade an answer" in system:
            answer = user.split("Answer:")[-1]
            if "unreadable" in answer:
                return "I think it is fine."
            return '{"faithfulness": %s, "relevancy": 0.9}' % (1.0 if "quantity" in answer else 0.2)
        question = user.split("Question:")[-1].lower()
        if "revenue defined" in question:
            return "The sum of quantity * unit_price over order items of delivered or shipped orders."
        return "unreadable" if "active" in question else "I do not know."

    cases = [c for c in load_qa_set(packaged_qa_set()) if c.id in ("revenue-definition", "active-customer", "plans")]
    with FakeLLM(reply) as llm:
        router = LLMRouter(
            [ModelSpec(name="judge", backend="openai", model="m", base_url=llm.base_url, api_key_env="HOME")]
        )
        result = evaluate_rag(index, cases, k=3, judge=router)
    frame = result.frame.set_index("id")
    assert frame.loc["revenue-definition", "faithfulness"] == 1.0 and frame.loc["plans", "faithfulness"] == 0.2
    assert frame.loc["revenue-definition", "answer_f1"] == 1.0 and frame.loc["plans", "answer_f1"] == 0.0
    assert frame.loc["active-customer", "generated"] == "unreadable"
    assert pd.isna(frame.loc["active-customer", "faithfulness"])
    assert result.summary["judge_unreadable"] == 1.0 and result.summary["relevancy"] == pytest.approx(0.9)
    assert result.summary["faithfulness"] == pytest.approx(0.6)  # the unreadable verdict is left out
    assert len(llm.requests) == 6  # an answer and a verdict per question

    rows = evaluate_retrieval(index, cases[:1], k=3)
    judge_answers(rows, lambda messages: "quantity", judge=lambda messages: '{"faithfulness": 0.5}')
    assert rows[0]["faithfulness"] == 0.5 and rows[0]["relevancy"] is None
    with pytest.raises(TypeError, match="a judge is a callable"):
        judge_answers(rows, 42)


def test_offline_answer_metrics() -> None:
    assert normalize("The Revenue, per-month!") == "revenue per month"
    assert token_f1("Free, pro or enterprise.", "free, pro or enterprise") == 1.0
    assert token_f1("pro", "free, pro or enterprise") == pytest.approx(0.4)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    assert context_recall("delivered or shipped", "only shipped orders") == pytest.approx(1 / 3)
    assert summarize([]) == {"questions": 0.0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"qa.jsonl:1: invalid JSON"),
        ("[1, 2]", r"qa.jsonl:1: expected a JSON object, got list"),
        ('{"question": "q", "doc_ids": ["a"], "source": "x"}', r"qa.jsonl:1: source: unknown field"),
        ('{"question": " ", "doc_ids": ["a"]}', r"qa.jsonl:1: question: must be a non-empty string"),
        ('{"doc_ids": ["a"]}', r"qa.jsonl:1: question: must be a non-empty string"),
        ('{"question": "q", "doc_ids": []}', r"qa.jsonl:1: doc_ids: must be a non-empty list"),
        ('{"question": "q", "doc_ids": "a.md"}', r"qa.jsonl:1: doc_ids: must be a non-empty list"),
        ('{"question": "q", "doc_ids": ["a", 3]}', r"qa.jsonl:1: doc_ids\[1\]: must be a non-empty string"),
        ('{"question": "q", "doc_ids": ["a"], "answer": 3}', r"qa.jsonl:1: answer: must be a non-empty string"),
        ('{"id": 7, "question": "q", "doc_ids": ["a"]}', r"qa.jsonl:1: id: must be a non-empty string"),
        (
            '{"id": "a", "question": "q", "doc_ids": ["a"]}\n\n{"id": "a", "question": "r", "doc_ids": ["b"]}',
            r"qa.jsonl:3: id: duplicate id 'a' \(first used on line 1\)",
        ),
        ("\n\n", r"qa.jsonl: the question set holds no questions"),
    ],
)
def test_malformed_question_sets_name_line_and_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(text + "\n")
    with pytest.raises(SuiteFormatError, match=message):
        load_qa_set(path)


def test_a_missing_question_set(tmp_path: Path) -> None:
    with pytest.raises(SuiteFormatError, match="absent.jsonl: cannot be read"):
        load_qa_set(tmp_path / "absent.jsonl")
