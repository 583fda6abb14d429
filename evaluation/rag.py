"""RAG evaluation: retrieval by document id, answers offline, and LLM-judged answers when a judge is set.

A question set is JSON Lines: `{"id", "question", "doc_ids": [...], "answer": optional reference}`.

- **retrieval** (always): hit@k, reciprocal rank and nDCG@k of the ranked *documents* (chunks
  folded to their document, first occurrence wins) against `doc_ids`;
- **offline answer metric** (always, when a reference answer is given): `answer_recall`, the
  share of the reference answer's words found in the top-k retrieved text;
- **judged** (when a judge model is given): a generator answers from the retrieved context and the
  judge scores `faithfulness` (is every claim supported by the context?) and `relevancy` (does it
  answer the question?) from 0 to 1.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contextlab.evaluation.metrics import hit_at_k, ndcg_at_k, reciprocal_rank

_WORD = re.compile(r"[a-z0-9_]+")
JUDGE_PROMPT = """You grade an answer produced from retrieved context. Reply with JSON only:
{"faithfulness": <0..1, share of the answer's claims supported by the context>,
 "relevancy": <0..1, how well the answer addresses the question>}"""


@dataclass(frozen=True)
class QACase:
    id: str
    question: str
    doc_ids: tuple[str, ...]
    answer: str | None = None


def load_qa_set(path: str | Path) -> list[QACase]:
    """Read a question set; errors name the line and the field."""
    cases: list[QACase] = []
    seen: set[str] = set()
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}:{number}: each line is an object")
        question = data.get("question")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{path}:{number}: 'question' must be a non-empty string")
        doc_ids = data.get("doc_ids")
        if not isinstance(doc_ids, list) or not doc_ids or not all(isinstance(d, str) for d in doc_ids):
            raise ValueError(f"{path}:{number}: 'doc_ids' must be a non-empty list of document ids")
        answer = data.get("answer")
        if answer is not None and not isinstance(answer, str):
            raise ValueError(f"{path}:{number}: 'answer' must be a string")
        case_id = str(data.get("id") or f"q{number}")
        if case_id in seen:
            raise ValueError(f"{path}:{number}: duplicate id {case_id!r}")
        seen.add(case_id)
        cases.append(QACase(case_id, question, tuple(doc_ids), answer))
    if not cases:
        raise ValueError(f"{path}: no questions")
    return cases


def packaged_qa_set() -> Path:
    return Path(__file__).parent / "suites" / "demo_docs_qa.jsonl"


def _retrieve(job: tuple[Any, QACase, int]) -> dict[str, Any]:
    index, case, k = job
    chunks = index.search(case.question, k=max(k, 10))
    ranked_docs = list(dict.fromkeys(c.doc_id for c in chunks))
    context = "\n\n".join(c.text for c in chunks[:k])
    gold = set(case.doc_ids)
    row: dict[str, Any] = {
        "id": case.id,
        "question": case.question,
        "gold": list(case.doc_ids),
        "ranked": ranked_docs[:k],
        "mrr": reciprocal_rank(ranked_docs, gold),
        f"ndcg@{k}": ndcg_at_k(ranked_docs, gold, k),
        "context": context,
    }
    for cut in sorted({1, 3, k}):
        row[f"hit@{cut}"] = hit_at_k(ranked_docs, gold, cut)
    if case.answer:
        words = set(_WORD.findall(case.answer.lower()))
        found = set(_WORD.findall(context.lower()))
        row["answer_recall"] = len(words & found) / len(words) if words else None
    return row


def evaluate_retrieval(
    index: Any, cases: Sequence[QACase], *, k: int = 5, executor: Executor | None = None
) -> list[dict[str, Any]]:
    """One row per question (see the module docstring); `index` is a `DocIndex` (or anything with `search`)."""
    if k < 1:
        raise ValueError("k must be at least 1")
    jobs = [(index, case, k) for case in cases]
    return list(executor.map(_retrieve, jobs)) if executor is not None else [_retrieve(j) for j in jobs]


def judge_answers(
    rows: list[dict[str, Any]],
    complete: Callable[[list[dict[str, str]]], str],
    *,
    judge: Callable[[list[dict[str, str]]], str] | None = None,
) -> list[dict[str, Any]]:
    """Answer each question from its retrieved context with `complete`, then score the answer with
    `judge` (default: the same model). Both take chat messages and return text. Adds `generated`,
    `faithfulness`, `relevancy` (None when the judge's reply holds no usable JSON)."""
    judge = judge or complete
    for row in rows:
        answer = complete(
            [
                {"role": "system", "content": "Answer from the context only, in one or two sentences."},
                {"role": "user", "content": f"Context:\n{row['context']}\n\nQuestion: {row['question']}"},
            ]
        )
        verdict = judge(
            [
                {"role": "system", "content": JUDGE_PROMPT},
                {
                    "role": "user",
                    "content": f"Question: {row['question']}\n\nContext:\n{row['context']}\n\nAnswer: {answer}",
                },
            ]
        )
        scores = _scores(verdict)
        row.update(generated=answer, faithfulness=scores.get("faithfulness"), relevancy=scores.get("relevancy"))
    return rows


def _scores(text: str) -> dict[str, float]:
    match = re.search(r"\{.*\}", text, re.S)
    if not match:
        return {}
    try:
        data = json.loads(match.group(0))
    except ValueError:
        return {}
    out = {}
    for key in ("faithfulness", "relevancy"):
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
            out[key] = float(value)
    return out


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Means of every numeric column (hit@k, mrr, ndcg@k, answer_recall, faithfulness, relevancy)."""
    out: dict[str, float] = {"questions": float(len(rows))}
    keys = [k for k in rows[0] if k.startswith(("hit@", "ndcg@")) or k in ("mrr", "answer_recall")] if rows else []
    keys += [k for k in ("faithfulness", "relevancy") if rows and k in rows[0]]
    for key in keys:
        values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
        if values:
            out[key] = sum(values) / len(values)
    return out


def hit_curve(index: Any, cases: Sequence[QACase], max_k: int = 10) -> list[float]:
    """hit@k for k = 1..max_k (for a plot)."""
    ranked = []
    for case in cases:
        chunks = index.search(case.question, k=max(max_k, 10))
        ranked.append((list(dict.fromkeys(c.doc_id for c in chunks)), set(case.doc_ids)))
    return [sum(hit_at_k(r, g, k) for r, g in ranked) / len(ranked) for k in range(1, max_k + 1)]
