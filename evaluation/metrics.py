"""Retrieval metrics for ranked tool lists against the gold tools a question needs (binary relevance).

A name repeated in a ranking counts once, at its first position.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence


def recall_at_k(ranked: Sequence[str], gold: Collection[str], k: int) -> float:
    """The fraction of the gold names found among the first `k` ranked names."""
    _check(gold, k)
    return len(set(ranked[:k]) & set(gold)) / len(set(gold))


def hit_at_k(ranked: Sequence[str], gold: Collection[str], k: int) -> float:
    """1.0 if any gold name is among the first `k` ranked names, else 0.0."""
    _check(gold, k)
    return 1.0 if set(ranked[:k]) & set(gold) else 0.0


def reciprocal_rank(ranked: Sequence[str], gold: Collection[str]) -> float:
    """1 / the (1-based) rank of the first gold name, or 0.0 if no gold name is ranked."""
    _check(gold, 1)
    gold_set = set(gold)
    for rank, name in enumerate(ranked, start=1):
        if name in gold_set:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], gold: Collection[str], k: int) -> float:
    """Normalised discounted cumulative gain over the first `k` names, each gold name worth 1.

    DCG sums `1 / log2(rank + 1)` over the ranks of gold names; it is divided by the DCG of
    the ideal ranking, which puts `min(len(gold), k)` gold names first.
    """
    _check(gold, k)
    gold_set = set(gold)
    seen: set[str] = set()
    dcg = 0.0
    for rank, name in enumerate(ranked[:k], start=1):
        if name in gold_set and name not in seen:
            dcg += 1.0 / math.log2(rank + 1)
        seen.add(name)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(len(gold_set), k) + 1))
    return dcg / ideal


def mean_metrics(
    results: Iterable[tuple[Sequence[str], Collection[str]]], ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Means over (ranked, gold) pairs: `recall_at_<k>` for each k, `mrr`, and `ndcg_at_<largest k>`."""
    if not ks:
        raise ValueError("ks must name at least one cutoff")
    top = max(ks)
    totals = {f"recall_at_{k}": 0.0 for k in ks} | {"mrr": 0.0, f"ndcg_at_{top}": 0.0}
    count = 0
    for ranked, gold in results:
        count += 1
        for k in ks:
            totals[f"recall_at_{k}"] += recall_at_k(ranked, gold, k)
        totals["mrr"] += reciprocal_rank(ranked, gold)
        totals[f"ndcg_at_{top}"] += ndcg_at_k(ranked, gold, top)
    if count == 0:
        raise ValueError("no results to average")
    return {name: total / count for name, total in totals.items()}


def _check(gold: Collection[str], k: int) -> None:
    if not gold:
        raise ValueError("gold must name at least one tool: these metrics are undefined without one")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
