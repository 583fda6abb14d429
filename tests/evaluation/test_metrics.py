"""Retrieval metrics on rankings small enough to work out by hand."""

import math

import pytest

from contextlab.evaluation import hit_at_k, mean_metrics, ndcg_at_k, recall_at_k, reciprocal_rank

RANKED = ["a", "b", "g1", "c", "g2", "d"]
GOLD = {"g1", "g2"}


def test_recall_and_hit_at_k():
    assert recall_at_k(RANKED, GOLD, 2) == 0.0
    assert recall_at_k(RANKED, GOLD, 3) == 0.5
    assert recall_at_k(RANKED, GOLD, 5) == 1.0
    assert hit_at_k(RANKED, GOLD, 2) == 0.0
    assert hit_at_k(RANKED, GOLD, 3) == 1.0


def test_reciprocal_rank_of_first_gold():
    assert reciprocal_rank(RANKED, GOLD) == pytest.approx(1 / 3)
    assert reciprocal_rank(["g2"], GOLD) == 1.0
    assert reciprocal_rank(["a", "b"], GOLD) == 0.0


def test_ndcg_binary_relevance():
    # Gold at ranks 3 and 5: DCG = 1/log2(4) + 1/log2(6); ideal (ranks 1, 2) = 1 + 1/log2(3).
    expected = (1 / 2 + 1 / math.log2(6)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(RANKED, GOLD, 10) == pytest.approx(expected)
    assert ndcg_at_k(RANKED, GOLD, 10) == pytest.approx(0.5438, abs=1e-4)
    # Only rank 3 counts at k=3; the ideal at k=3 still has both gold first.
    assert ndcg_at_k(RANKED, GOLD, 3) == pytest.approx(0.5 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["g1", "g2"], GOLD, 10) == 1.0
    assert ndcg_at_k(["g1", "g1", "x"], {"g1"}, 10) == 1.0  # a repeated name counts once


def test_mean_metrics_over_cases():
    results = [(RANKED, GOLD), (["g"], ["g"]), (["x"], ["g"])]
    metrics = mean_metrics(results)
    assert set(metrics) == {"recall_at_1", "recall_at_5", "recall_at_10", "mrr", "ndcg_at_10"}
    assert metrics["recall_at_1"] == pytest.approx(1 / 3)
    assert metrics["recall_at_5"] == pytest.approx(2 / 3)
    assert metrics["mrr"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert metrics["ndcg_at_10"] == pytest.approx((0.5438 + 1 + 0) / 3, abs=1e-4)
    assert set(mean_metrics(results, ks=(3,))) == {"recall_at_3", "mrr", "ndcg_at_3"}


def test_metrics_refuse_undefined_inputs():
    with pytest.raises(ValueError, match="gold"):
        recall_at_k(["a"], [], 1)
    with pytest.raises(ValueError, match="k must be at least 1"):
        ndcg_at_k(["a"], ["a"], 0)
    with pytest.raises(ValueError, match="no results"):
        mean_metrics([])
