"""Metrics against hand-computed values, and bootstrap intervals that cover the truth."""

import math

import numpy as np

from molar_core.metrics import bootstrap_ci, mean_metrics, paired_bootstrap, per_user_metrics, ranks_from_lists


def test_metrics_by_hand():
    ranks = np.array([0, 3, 9, 10, np.inf])
    m = per_user_metrics(ranks, [10])
    np.testing.assert_allclose(m["ndcg@10"], [1.0, 1 / math.log2(5), 1 / math.log2(11), 0, 0])
    np.testing.assert_allclose(m["recall@10"], [1, 1, 1, 0, 0])
    np.testing.assert_allclose(m["mrr@10"], [1, 1 / 4, 1 / 10, 0, 0])
    assert mean_metrics(m)["recall@10"] == 0.6


def test_ranks_from_lists():
    lists = np.array([[5, 3, 9], [1, 2, 4], [7, 8, 6]])
    np.testing.assert_array_equal(ranks_from_lists(lists, np.array([3, 1, 99])), [1, 0, np.inf])


def test_bootstrap_ci_covers_mean_and_paired_detects_shift():
    rng = np.random.default_rng(0)
    a = rng.random(2000)
    lo, hi = bootstrap_ci(a)
    assert lo < a.mean() < hi and hi - lo < 0.05
    b = a + 0.01 + rng.normal(0, 0.001, 2000)
    d = paired_bootstrap(b, a)
    assert d["ci_low"] > 0.009 and d["ci_high"] < 0.011
    same = paired_bootstrap(a, a + rng.normal(0, 0.1, 2000))
    assert same["ci_low"] < 0 < same["ci_high"]
