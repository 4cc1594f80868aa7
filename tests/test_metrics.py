"""Metrics against hand-computed values, and bootstrap intervals that cover the truth."""

import math

import numpy as np
import torch

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


def _reference_ranks(users: np.ndarray, items: np.ndarray, hist: list[list[int]], targets: np.ndarray) -> np.ndarray:
    """Pessimistic tie rank by brute force: other unmasked items scoring at least the target's score."""
    out = []
    for u, h, t in zip(users, hist, targets):
        scores = items @ u
        others = [j for j in range(1, len(items) + 1) if j != t and j not in set(h)]
        out.append(sum(scores[j - 1] >= scores[t - 1] for j in others))
    return np.array(out)


def _ranks(users, items, hist, targets, **kw):
    from molar_core.ranking import target_ranks

    return target_ranks(torch.from_numpy(users), torch.from_numpy(items), hist, torch.from_numpy(targets), **kw).numpy()


def test_constant_scores_rank_every_target_last():
    """A collapsed model (zero user vectors: every item scores 0) earns nothing, whatever the catalogue."""
    rng = np.random.default_rng(0)
    n_items, n_users = 40, 12
    items = rng.standard_normal((n_items, 8)).astype(np.float32)
    users = np.zeros((n_users, 8), np.float32)
    hist = [sorted(rng.choice(np.arange(1, n_items + 1), size=int(rng.integers(0, 10)), replace=False).tolist())
            for _ in range(n_users)]
    targets = np.array([max(set(range(1, n_items + 1)) - set(h)) for h in hist])
    ranks = _ranks(users, items, hist, targets)
    np.testing.assert_array_equal(ranks, [n_items - len(h) - 1 for h in hist])
    np.testing.assert_array_equal(_ranks(users, items, None, targets), np.full(n_users, n_items - 1))
    assert mean_metrics(per_user_metrics(ranks, [10]))["ndcg@10"] == 0.0


def test_a_target_ranks_behind_its_identical_twin():
    """Items with identical vectors (e.g. identical item text) tie: the target is placed behind its twin."""
    rng = np.random.default_rng(1)
    items = rng.standard_normal((30, 8)).astype(np.float32) * 0.1
    user = rng.standard_normal(8).astype(np.float32)
    items[4] = items[8] = user  # items 5 and 9: the user's two best items, with equal scores
    users = np.stack([user, user])
    ranks = _ranks(users, items, None, np.array([5, 9]))
    np.testing.assert_array_equal(ranks, [1, 1])
    np.testing.assert_array_equal(_ranks(users, items, [[9], [5]], np.array([5, 9])), [0, 0])  # twin masked: first


def test_ranks_equal_a_brute_force_reference_with_many_ties(monkeypatch):
    """Small integer vectors: exact float scores, many ties (duplicated items and equal dot products)."""
    from molar_core import ranking

    rng = np.random.default_rng(2)
    n_items, n_users = 60, 50
    items = rng.integers(-2, 3, size=(n_items, 4)).astype(np.float32)
    items[10:20] = items[:10]  # exact duplicates as well
    users = rng.integers(-2, 3, size=(n_users, 4)).astype(np.float32)
    hist = [sorted(rng.choice(np.arange(1, n_items + 1), size=int(rng.integers(0, 15)), replace=False).tolist())
            for _ in range(n_users)]
    targets = np.array([rng.choice(sorted(set(range(1, n_items + 1)) - set(h))) for h in hist])
    ref = _reference_ranks(users, items, hist, targets)
    strict = np.array([sum((items @ u)[j - 1] > (items @ u)[t - 1] for j in range(1, n_items + 1) if j not in h)
                       for u, h, t in zip(users, hist, targets)])
    assert (ref > strict).sum() > n_users // 2  # the data really has ties at the targets
    np.testing.assert_array_equal(_ranks(users, items, hist, targets, chunk=7), ref)
    monkeypatch.setattr(ranking, "FLOAT_COUNT_LIMIT", 0)  # the integer count of catalogues past 2**24 items
    np.testing.assert_array_equal(_ranks(users, items, hist, targets, chunk=7), ref)
