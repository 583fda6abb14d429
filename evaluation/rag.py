"""RAG evaluation: retrieval scored by document id, answers scored offline, and LLM-judged answers when a
judge model is given.

A question set is JSON Lines, one question per line:
`{"id": "...", "question": "...", "doc_ids": ["docs/metrics.md", ...], "answer": "optional reference"}`
(`doc_ids` are the documents, as the index names them, that answer the question).

- **retrieval** (always): hit@1, hit@3 and hit@k, reciprocal rank and nDCG@k of the ranked *documents*
  (chunks folded to their document at its best rank) against `doc_ids`;
- **offline answer metrics** (always, when a reference answer is given): `context_recall`, the share of
  the reference answer's words found in the top-k retrieved text, and `answer_in_context`, 1 when the
  whole reference (normalised) appears in it;
- **judged** (when a judge is given): a model answers from the retrieved context; `answer_f1` is the
  token F1 of that answer against the reference, and the judge scores `faithfulness` (are the answer's
  claims supported by the context?) and `relevancy` (does it answer the question?) from 0 to 1.

`evaluate_rag` returns a per-question DataFrame and a summary dict; `plot_hit_curve` and
`plot_score_histogram` draw them. Questions can be mapped over a `concurrent.futures.Executor` (local
processes, Dask): the work function is module-level and the index pickles as its folder.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from contextlab.evaluation.metrics import hit_at_k, ndcg_at_k, reciprocal_rank
from contextlab.evaluation.suite import SuiteFormatError

QA_FIELDS = ("id", "question", "doc_ids", "answer")
CURVE_DEPTH = 10  # documents kept per question, for hit@k curves up to k = 10
ChatFn = Callable[[list[dict[str, str]]], str]
ANSWER_PROMPT = "Answer the question from the context only, in one or two sentences. Say so if the context does not."
JUDGE_PROMPT = """You grade an answer that was written from retrieved context. Reply with JSON only:
{"faithfulness": <0..1, the share of the answer's claims that the context supports>,
 "relevancy": <0..1, how well the answer addresses the question>}"""


@dataclass(frozen=True)
class QACase:
    id: str
    question: str
    doc_ids: tuple[str, ...]
    answer: str | None = None


def load_qa_set(path: str | Path) -> list[QACase]:
    """Read a question set; a malformed line raises `SuiteFormatError` naming the file, line and field."""
    where = str(path)
    stem = Path(where).stem
    cases: list[QACase] = []
    first_line: dict[str, int] = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteFormatError(f"cannot be read ({exc.strerror or exc})", path=where) from exc
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            problem = f"invalid JSON ({error.msg} at column {error.colno})"
            raise SuiteFormatError(problem, path=where, line=number) from None
        try:
            case = _case(data, default_id=f"{stem}-{number}")
        except SuiteFormatError as error:
            raise SuiteFormatError(error.detail, field=error.field, path=where, line=number) from None
        if case.id in first_line:
            problem = f"duplicate id {case.id!r} (first used on line {first_line[case.id]})"
            raise SuiteFormatError(problem, field="id", path=where, line=number)
        first_line[case.id] = number
        cases.append(case)
    if not cases:
        raise SuiteFormatError("the question set holds no questions", path=where)
    return cases


def _case(data: Any, *, default_id: str) -> QACase:
    if not isinstance(data, dict):
        raise SuiteFormatError(f"expected a JSON object, got {type(data).__name__}")
    unknown = [key for key in data if key not in QA_FIELDS]
    if unknown:
        raise SuiteFormatError(f"unknown field; a question has only {', '.join(QA_FIELDS)}", field=unknown[0])
    question = data.get("question")
    if not isinstance(question, str) or not question.strip():
        raise SuiteFormatError("must be a non-empty string", field="question")
    doc_ids = data.get("doc_ids")
    if not isinstance(doc_ids, list) or not doc_ids:
        raise SuiteFormatError("must be a non-empty list of document ids (paths in the workspace)", field="doc_ids")
    for index, doc_id in enumerate(doc_ids):
        if not isinstance(doc_id, str) or not doc_id.strip():
            raise SuiteFormatError("must be a non-empty string", field=f"doc_ids[{index}]")
    answer = data.get("answer")
    if answer is not None and (not isinstance(answer, str) or not answer.strip()):
        raise SuiteFormatError("must be a non-empty string when given", field="answer")
    case_id = data.get("id", default_id)
    if not isinstance(case_id, str) or not case_id.strip():
        raise SuiteFormatError("must be a non-empty string", field="id")
    return QACase(case_id, question.strip(), tuple(doc_ids), answer)


def packaged_qa_set() -> Path:
    """The questions on the demo workspace's documents (`contextlab demo`)."""
    return Path(str(resources.files("contextlab.evaluation") / "suites" / "demo_docs_qa.jsonl"))


# --------------------------------------------------------------------------------------------
# Text normalisation (SQuAD style)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans({ch: " " for ch in string.punctuation})


def normalize(text: str) -> str:
    """Lower case, punctuation and articles removed, whitespace collapsed."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 of a prediction against a reference (both normalised)."""
    predicted, expected = normalize(prediction).split(), normalize(reference).split()
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not predicted or not expected or common == 0:
        return float(predicted == expected)
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def context_recall(reference: str, context: str) -> float:
    """The share of the reference answer's distinct words that occur in the context."""
    words = set(normalize(reference).split())
    return len(words & set(normalize(context).split())) / len(words) if words else 0.0


# --------------------------------------------------------------------------------------------
# Retrieval


def _retrieve(job: tuple[Any, QACase, int]) -> dict[str, Any]:
    """One question's row (module-level, so process and Dask executors can pickle it)."""
    index, case, k = job
    chunks = index.search(case.question, k=max(k, 20))
    ranked = list(dict.fromkeys(c.doc_id for c in chunks))
    context = "\n\n".join(c.text for c in chunks[:k])
    gold = set(case.doc_ids)
    row: dict[str, Any] = {
        "id": case.id,
        "question": case.question,
        "gold": list(case.doc_ids),
        "ranked": ranked[: max(k, CURVE_DEPTH)],
        "top_chunks": [f"{c.doc_id}:{c.start_line}" for c in chunks[:k]],
        "mrr": reciprocal_rank(ranked, gold),
        f"ndcg@{k}": ndcg_at_k(ranked, gold, k),
        "context": context,
        "reference": case.answer,
    }
    for cut in sorted({1, 3, k}):
        row[f"hit@{cut}"] = hit_at_k(ranked, gold, cut)
    if case.answer:
        row["context_recall"] = context_recall(case.answer, context)
        row["answer_in_context"] = float(normalize(case.answer) in normalize(context))
    return row


def evaluate_retrieval(
    index: Any, cases: Sequence[QACase], *, k: int = 5, executor: Executor | None = None
) -> list[dict[str, Any]]:
    """One row per question (see the module docstring). `index` is a `DocIndex` or anything with
    `search(query, k=...)` returning chunks with `doc_id` and `text`; `executor` maps the questions."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 50:
        raise ValueError(f"k must be an integer between 1 and 50, got {k!r}")
    if not cases:
        raise ValueError("no questions to evaluate")
    jobs = [(index, case, k) for case in cases]
    return list(executor.map(_retrieve, jobs)) if executor is not None else [_retrieve(job) for job in jobs]


def hit_curve_of(rows: Sequence[dict[str, Any]], max_k: int = CURVE_DEPTH) -> list[float]:
    """hit@k for k = 1..max_k, from rows of `evaluate_retrieval` (which keep the top 10 documents, or k)."""
    if not rows:
        raise ValueError("no rows")
    return [sum(hit_at_k(r["ranked"], r["gold"], cut) for r in rows) / len(rows) for cut in range(1, max_k + 1)]


def hit_curve(index: Any, cases: Sequence[QACase], max_k: int = CURVE_DEPTH) -> list[float]:
    """hit@k for k = 1..max_k, retrieving for each question."""
    return hit_curve_of(evaluate_retrieval(index, cases, k=max_k), max_k)


# --------------------------------------------------------------------------------------------
# Judged answers


def as_chat(model: ChatFn | Any, max_tokens: int = 300) -> ChatFn:
    """A chat function (messages → text) from a callable, or from an `LLMRouter` (anything with
    `complete(messages, max_tokens=...)` returning an object with `.text`)."""
    complete = getattr(model, "complete", None)
    if callable(complete):
        return lambda messages: complete(messages, max_tokens=max_tokens).text
    if callable(model):
        return model
    raise TypeError(f"a judge is a callable (messages -> text) or an LLMRouter, not {type(model).__name__}")


def judge_answers(
    rows: list[dict[str, Any]], complete: ChatFn | Any, *, judge: ChatFn | Any | None = None
) -> list[dict[str, Any]]:
    """Answer each question from its retrieved context with `complete`, then grade the answer with `judge`
    (default: the same model). Each is a chat function or an `LLMRouter`. Adds `generated`, `answer_f1`
    (when a reference answer exists), `faithfulness` and `relevancy` (None when the judge's reply holds
    no usable JSON); changes `rows` in place and returns them."""
    answer_with = as_chat(complete)
    grade_with = as_chat(judge) if judge is not None else answer_with
    for row in rows:
        answer = answer_with(
            [
                {"role": "system", "content": ANSWER_PROMPT},
                {"role": "user", "content": f"Context:\n{row['context']}\n\nQuestion: {row['question']}"},
            ]
        )
        verdict = grade_with(
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
        if row.get("reference"):
            row["answer_f1"] = token_f1(answer, row["reference"])
    return rows


def _scores(text: str) -> dict[str, float]:
    match = re.search(r"\{.*\}", text or "", re.S)
    if not match:
        return {}
    try:
        data = json.loads(match.group(0))
    except ValueError:
        return {}
    out = {}
    for key in ("faithfulness", "relevancy"):
        value = data.get(key) if isinstance(data, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
            out[key] = float(value)
    return out


# --------------------------------------------------------------------------------------------
# Results

SCORE_COLUMNS = ("mrr", "context_recall", "answer_in_context", "answer_f1", "faithfulness", "relevancy")


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Means of the score columns over the questions that have them, the number of questions, and how
    many judge replies could not be read (`judge_unreadable`, when answers were judged)."""
    out: dict[str, float] = {"questions": float(len(rows))}
    keys = [key for key in (rows[0] if rows else {}) if key.startswith(("hit@", "ndcg@"))]
    keys += [key for key in SCORE_COLUMNS if any(key in row for row in rows)]
    for key in keys:
        values = [row[key] for row in rows if isinstance(row.get(key), int | float)]
        if values:
            out[key] = sum(values) / len(values)
    if any("generated" in row for row in rows):
        out["judge_unreadable"] = float(sum(1 for row in rows if "generated" in row and row["faithfulness"] is None))
    return out


@dataclass
class RagEvaluation:
    """Per-question results (`frame`, one row per question) and their means (`summary`)."""

    frame: Any
    summary: dict[str, float]
    k: int


def evaluate_rag(
    index: Any,
    cases: Sequence[QACase],
    *,
    k: int = 5,
    judge: ChatFn | Any | None = None,
    answerer: ChatFn | Any | None = None,
    executor: Executor | None = None,
) -> RagEvaluation:
    """Retrieval and offline answer metrics for every question; with `judge` (a chat function or an
    `LLMRouter`), answers written by `answerer` (default: the judge) are judged too."""
    import pandas as pd

    rows = evaluate_retrieval(index, cases, k=k, executor=executor)
    if judge is not None:
        judge_answers(rows, answerer if answerer is not None else judge, judge=judge)
    return RagEvaluation(pd.DataFrame(rows), summarize(rows), k)


def plot_hit_curve(results: RagEvaluation | Sequence[dict[str, Any]], max_k: int = CURVE_DEPTH) -> Any:
    """hit@k against k (a matplotlib Figure), from `evaluate_rag`'s result or `evaluate_retrieval`'s rows."""
    from matplotlib.figure import Figure

    rows = results.frame.to_dict("records") if isinstance(results, RagEvaluation) else list(results)
    curve = hit_curve_of(rows, max_k)
    figure = Figure(figsize=(5, 3.5))
    axes = figure.subplots()
    axes.plot(range(1, len(curve) + 1), curve, marker="o")
    axes.set(xlabel="k (documents retrieved)", ylabel="hit@k", ylim=(0, 1.05), title="Retrieval hit rate")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def plot_score_histogram(results: RagEvaluation, columns: Sequence[str] | None = None) -> Any:
    """One histogram per score column (default: reciprocal rank and, when present, the answer scores),
    over the questions; a matplotlib Figure."""
    from matplotlib.figure import Figure

    frame = results.frame
    names = list(columns) if columns else [c for c in SCORE_COLUMNS if c in frame and frame[c].notna().any()]
    missing = [c for c in names if c not in frame]
    if missing:
        raise ValueError(f"no column {missing[0]!r} in the results; they have {', '.join(map(str, frame.columns))}")
    figure = Figure(figsize=(3.2 * max(len(names), 1), 3))
    for axes, name in zip(figure.subplots(1, len(names), squeeze=False)[0], names, strict=True):
        axes.hist(frame[name].dropna().astype(float), bins=10, range=(0, 1))
        axes.set(xlabel=name, ylabel="questions")
    figure.tight_layout()
    return figure
