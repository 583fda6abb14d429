"""RAG evaluation on a real document index: retrieval metrics, offline answer recall, and an LLM judge
served by a scripted OpenAI-compatible endpoint through the real openai-SDK backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from contextlab.copilot.llm import LLMRouter, ModelSpec
from contextlab.evaluation.rag import (
    evaluate_retrieval,
    hit_curve,
    judge_answers,
    load_qa_set,
    packaged_qa_set,
    summarize,
)
from contextlab.providers.docs_index import DocIndex
from contextlab.workspace import create_demo_workspace
from tests.support.fake_llm import FakeLLM


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> DocIndex:
    root = create_demo_workspace(tmp_path_factory.mktemp("ws"))
    index = DocIndex(tmp_path_factory.mktemp("ix") / "ix")
    index.build(root, progress=False)
    return index


def test_retrieval_metrics_on_the_demo_questions(index: DocIndex) -> None:
    cases = load_qa_set(packaged_qa_set())
    assert len(cases) >= 15
    rows = evaluate_retrieval(index, cases, k=3)
    summary = summarize(rows)
    assert summary["questions"] == len(cases)
    assert 0.8 <= summary["hit@3"] <= 1.0 and 0 < summary["mrr"] <= 1 and 0 < summary["ndcg@3"] <= 1
    assert summary["answer_recall"] > 0.5
    plans = next(r for r in rows if r["id"] == "plans")
    assert plans["ranked"][0] == "docs/data_dictionary.md" and plans["hit@1"] == 1.0 and plans["mrr"] == 1.0
    revenue = next(r for r in rows if r["id"] == "revenue-definition")
    assert "docs/metrics.md" in revenue["ranked"] and revenue["hit@3"] == 1.0
    curve = hit_curve(index, cases, 5)
    assert curve == sorted(curve) and curve[-1] >= summary["hit@3"]


def test_a_question_whose_document_is_missing_scores_zero(index: DocIndex, tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "How is revenue defined?", "doc_ids": ["docs/absent.md"], "answer": "zebra"}\n')
    (row,) = evaluate_retrieval(index, load_qa_set(path), k=3)
    assert row["hit@3"] == 0.0 and row["mrr"] == 0.0 and row["answer_recall"] == 0.0


def test_judged_faithfulness_and_relevancy(index: DocIndex) -> None:
    def reply(body: dict) -> str:
        if "You grade an answer" in body["messages"][0]["content"]:
            faithful = "quantity" in body["messages"][-1]["content"].split("Answer:")[-1]
            return '{"faithfulness": %s, "relevancy": 0.9}' % (1.0 if faithful else 0.2)
        question = body["messages"][-1]["content"].split("Question:")[-1].lower()
        return "Revenue is the sum of quantity * unit_price." if "revenue" in question else "I do not know."

    cases = load_qa_set(packaged_qa_set())[:3]
    rows = evaluate_retrieval(index, cases, k=3)
    with FakeLLM(reply) as llm:
        router = LLMRouter(
            [ModelSpec(name="judge", backend="openai", model="m", base_url=llm.base_url, api_key_env="HOME")]
        )
        judge_answers(rows, lambda messages: router.complete(messages, max_tokens=100).text)
    assert rows[0]["faithfulness"] == 1.0 and rows[0]["relevancy"] == 0.9
    assert summarize(rows)["faithfulness"] < 1.0  # the questions it could not answer were judged too


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not JSON"),
        ('{"question": "", "doc_ids": ["a"]}', "'question' must be a non-empty string"),
        ('{"question": "q", "doc_ids": []}', "'doc_ids' must be a non-empty list"),
        ('{"question": "q", "doc_ids": ["a"], "answer": 3}', "'answer' must be a string"),
    ],
)
def test_malformed_question_sets(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        load_qa_set(path)
