"""The popularity baseline: every user gets the items with the most interactions in the histories it may see.

Written as one-dimensional user and item vectors (user 1.0, item = its count), so it is ranked by the same exact
ranking as the trained models (molar_core.ranking): history masking and pessimistic ties included. An item with
no interaction (a cold item) ties with every other such item and ranks after all items with one.
"""

from __future__ import annotations

import numpy as np
import torch

NAME = "popularity"  # its name among the models evaluate ranks (no checkpoint: nothing is trained)


def item_counts(histories: list[list[int]], num_items: int) -> np.ndarray:
    """Interactions per item id in `histories` (index 0 = padding)."""
    flat = np.fromiter((x for h in histories for x in h), dtype=np.int64)
    return np.bincount(flat, minlength=num_items + 1)


def popularity_vectors(histories: list[list[int]], num_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(user vectors (U, 1), item vectors (N, 1)) whose inner product is the item's count in `histories`: the
    histories of the split being ranked, so validation counts training items and test counts those plus the
    validation items, never the targets being predicted."""
    counts = torch.from_numpy(item_counts(histories, num_items)[1:].astype(np.float32)).unsqueeze(1)
    return torch.ones(len(histories), 1), counts
