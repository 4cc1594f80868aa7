"""Synthetic sequential datasets with a known answer to "what predicts the next item": ids or content.

Used by tests that must show when post-alignment matters and when content beats ids, and by benchmarks that need
catalogues of any size. Items belong to latent clusters; a user's next item is drawn from the cluster that a
Markov chain over clusters moves to. What differs is what the item content vectors know:

- `collaborative`: content is random noise, independent of the clusters (only the ids' co-occurrence predicts);
- `content`: content is the cluster centroid plus noise, and the catalogue is large so most items are rarely
  seen in training (cold ids): only content generalises.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SyntheticData:
    sequences: list[list[int]]  # per user, item ids 1..N, oldest first
    features: np.ndarray  # (N, d) float32 item content vectors; row i is item i + 1
    clusters: np.ndarray  # (N,) latent cluster of each item

    @property
    def num_items(self) -> int:
        return len(self.features)

    def leave_one_out(self) -> tuple[list[list[int]], tuple[list[list[int]], list[int]], tuple[list[list[int]], list[int]]]:
        """train sequences, (valid histories, targets), (test histories, targets)."""
        train = [s[:-2] for s in self.sequences]
        valid = ([s[:-2] for s in self.sequences], [s[-2] for s in self.sequences])
        test = ([s[:-1] for s in self.sequences], [s[-1] for s in self.sequences])
        return train, valid, test


def generate(kind: str, users: int = 600, items: int = 300, clusters: int = 12, length: int = 20,
             feature_dim: int = 16, stay: float = 0.1, noise: float = 0.3, seed: int = 0) -> SyntheticData:
    """Sequences of `length` items per user. The cluster chain moves to the next cluster (c + 1 mod K) with
    probability 1 - stay, else stays; the item is uniform within the cluster."""
    if kind not in ("collaborative", "content"):
        raise ValueError(f"kind must be 'collaborative' or 'content', got {kind!r}")
    rng = np.random.default_rng(seed)
    item_cluster = rng.integers(0, clusters, size=items)
    members = [np.flatnonzero(item_cluster == c) for c in range(clusters)]
    for c, m in enumerate(members):  # every cluster needs an item
        if len(m) == 0:
            item_cluster[c] = c
    members = [np.flatnonzero(item_cluster == c) for c in range(clusters)]
    seqs = []
    for _ in range(users):
        c = int(rng.integers(clusters))
        seq = []
        for _ in range(length):
            if rng.random() > stay:
                c = (c + 1) % clusters
            seq.append(int(rng.choice(members[c])) + 1)
        seqs.append(seq)
    if kind == "collaborative":
        features = rng.normal(size=(items, feature_dim))
    else:
        centroids = rng.normal(size=(clusters, feature_dim))
        features = centroids[item_cluster] + noise * rng.normal(size=(items, feature_dim))
    return SyntheticData(seqs, features.astype(np.float32), item_cluster)


def catalogue(items: int, dim: int = 64, topics: int | None = None, spread: float = 0.5, seed: int = 0) -> np.ndarray:
    """Unit-norm item vectors grouped around `topics` random directions (default one per 100 items), the shape
    trained item embeddings have: a catalogue of any size for index and evaluation benchmarks. Row i is item
    i + 1. `spread` is the within-topic noise relative to the topic direction (0: all items of a topic equal).
    The noise is drawn in blocks of 65,536 rows, so peak memory is the output plus one block."""
    rng = np.random.default_rng(seed)
    topics = topics or max(1, items // 100)
    centres = rng.standard_normal((topics, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    topic = rng.integers(0, topics, size=items)
    out = np.empty((items, dim), dtype=np.float32)
    block = 1 << 16
    for b, s in enumerate(range(0, items, block)):
        n = min(block, items - s)
        noise = np.random.default_rng([seed, b]).standard_normal((n, dim), dtype=np.float32)
        v = centres[topic[s:s + n]] + spread / dim ** 0.5 * noise
        out[s:s + n] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def user_queries(item_vectors: np.ndarray, users: int, history: int = 5, noise: float = 0.3,
                 seed: int = 0) -> np.ndarray:
    """User vectors the way a user model makes them: the normalised mean of a few random items' vectors plus
    noise (queries whose neighbours are items, not a uniform random direction)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(item_vectors), size=(users, history))
    q = item_vectors[picks].mean(axis=1)
    q += noise * rng.standard_normal(q.shape, dtype=np.float32) / q.shape[1] ** 0.5
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def interaction_tables(users: int, items: int, mean_length: int = 20, min_length: int = 5, max_length: int = 200,
                       home: float = 0.8, seed: int = 0):
    """A synthetic dataset in `prepare`'s generic table layout, of any size: (interactions, items) polars frames.

    Each user has a home topic (100 items a topic) and draws `home` of their items from it, the rest from a
    Zipf-like popularity over the whole catalogue; history lengths are `min_length` plus a geometric tail with
    mean `mean_length`. When there are at least as many interactions as items, every item is drawn at least
    once, so the prepared catalogue keeps all `items`. Timestamps are each user's positions. Vectorised: 1e5
    users x 1e6 items take a few seconds.
    """
    import polars as pl

    if min_length < 1 or mean_length < min_length or max_length < min_length:
        raise ValueError(f"need 1 <= min_length <= mean_length and min_length <= max_length, got "
                         f"{min_length}, {mean_length}, {max_length}")
    rng = np.random.default_rng(seed)
    lengths = min_length + rng.geometric(1.0 / (mean_length - min_length + 1), size=users) - 1
    lengths = np.minimum(lengths, max_length)
    total = int(lengths.sum())
    user = np.repeat(np.arange(users), lengths)
    topics = max(1, items // 100)
    home_topic = rng.integers(0, topics, size=users)[user]
    in_topic = home_topic * 100 + rng.integers(0, 100, size=total)
    ranks = np.floor(items ** rng.random(total)).astype(np.int64) - 1  # P(rank r) ~ 1/r: Zipf-like popularity
    popular = rng.permutation(items)[ranks]
    item = np.where(rng.random(total) < home, np.minimum(in_topic, items - 1), popular)
    if total >= items:  # cover the catalogue: each item once at a random position
        item[rng.permutation(total)[:items]] = rng.permutation(items)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    inter = pl.DataFrame({"user_id": user, "item_id": item, "timestamp": np.arange(total) - starts})
    ids = np.arange(items)
    cat = pl.DataFrame({"item_id": ids, "topic": ids // 100})
    cat = cat.with_columns(title=pl.format("Item {} of topic {}", "item_id", "topic"),
                           description=pl.format("A synthetic item in topic {}, number {} of its topic.",
                                                 "topic", pl.col("item_id") % 100)).drop("topic")
    return inter, cat
