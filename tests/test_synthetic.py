"""The synthetic generator: deterministic, the right shapes, and content that is (or is not) informative."""

from __future__ import annotations

import numpy as np
import pytest

from molar_core.data.synthetic import catalogue, generate, user_queries


def _cluster_purity(features, clusters):
    """Fraction of items whose nearest other item (by features) is in the same cluster."""
    d = ((features[:, None] - features[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float((clusters[d.argmin(1)] == clusters).mean())


def test_generator_is_deterministic_and_shaped():
    a, b = generate("content", users=50, items=80, length=12, seed=3), generate("content", users=50, items=80, length=12, seed=3)
    assert a.sequences == b.sequences and np.array_equal(a.features, b.features)
    assert len(a.sequences) == 50 and all(len(s) == 12 for s in a.sequences)
    assert min(min(s) for s in a.sequences) >= 1 and max(max(s) for s in a.sequences) <= 80
    train, (vh, vt), (th, tt) = a.leave_one_out()
    assert all(len(t) == 10 for t in train) and th[0] == a.sequences[0][:-1] and tt[0] == a.sequences[0][-1]
    assert vh[0] == train[0] and vt[0] == a.sequences[0][-2]


def test_content_is_informative_only_in_the_content_kind():
    content = generate("content", users=10, items=400, seed=0)
    noise = generate("collaborative", users=10, items=400, seed=0)
    assert _cluster_purity(content.features, content.clusters) > 0.9
    assert _cluster_purity(noise.features, noise.clusters) < 0.3


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind"):
        generate("both")


def test_catalogue_is_deterministic_unit_norm_and_clustered():
    a = catalogue(1000, dim=16, topics=10, seed=1)
    assert a.shape == (1000, 16) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(a, catalogue(1000, dim=16, topics=10, seed=1))
    assert not np.array_equal(a, catalogue(1000, dim=16, topics=10, seed=2))
    sims = a @ a.T
    np.fill_diagonal(sims, -1)
    same_topic_neighbour = (np.abs(sims.max(1) - 1) < 0.5).mean()
    assert same_topic_neighbour > 0.95 and sims.mean() < 0.2  # close to some items, far from most
    q = user_queries(a, 50, seed=2)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)
    assert (q @ a.T).max(1).min() > 0.5  # every user has items near it
