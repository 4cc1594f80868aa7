"""Ranking metrics for one held-out target per user (leave-one-out), and bootstrap confidence intervals.

With one relevant item, Recall@K = HR@K, NDCG@K = 1/log2(rank+2) and MRR@K = 1/(rank+1) when rank < K.
"""

from __future__ import annotations

import numpy as np

METRIC_NAMES = ("ndcg", "recall", "mrr")  # per_user_metrics gives each at every K, keyed "name@K"


def per_user_metrics(ranks: np.ndarray, ks: list[int]) -> dict[str, np.ndarray]:
    """ranks: 0-based rank of each user's target (any rank >= K, or inf, scores 0 at K)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        hit = ranks < k
        scores = {"ndcg": np.where(hit, 1.0 / np.log2(np.where(hit, ranks, 0) + 2.0), 0.0),
                  "recall": hit.astype(np.float64),
                  "mrr": np.where(hit, 1.0 / (np.where(hit, ranks, 0) + 1.0), 0.0)}
        out.update({f"{name}@{k}": scores[name] for name in METRIC_NAMES})
    return out


def ranks_from_lists(lists: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based position of each target in its ranked list, inf where absent."""
    lists = np.asarray(lists)
    found = lists == np.asarray(targets)[:, None]
    pos = found.argmax(1).astype(np.float64)
    pos[~found.any(1)] = np.inf
    return pos


def mean_metrics(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: float(v.mean()) for name, v in per_user.items()}


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over users."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> dict[str, float]:
    """Mean of a - b over the same users, with its bootstrap CI (users resampled in pairs)."""
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    lo, hi = bootstrap_ci(diff, n_boot, seed, level)
    return {"diff": float(diff.mean()), "ci_low": lo, "ci_high": hi}


T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}  # Student t, 95%, by df


def t_interval(values: list[float]) -> str:
    """'mean ± half-width' of a 95% t-interval over runs (seeds); a single value as it is."""
    import statistics

    if len(values) < 2:
        return f"{values[0]:.4f}"
    half = T95.get(len(values) - 1, 2.0) * statistics.stdev(values) / len(values) ** 0.5
    return f"{statistics.mean(values):.4f} ± {half:.4f}"
