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
