"""Top-k recommendations of many users through a FAISS index, seen items excluded.

This is the offline batch-scoring path of a deployment (`molar recommend --all`): each user's vector (after the
user's whole known sequence, encoded by the reloaded model, molar_core.recommender; equal to `next` in
user_vectors.safetensors) is searched in the item index, the items the user has already interacted with are
dropped, and each kept item gets its exact score (the inner product of the user and item vectors); the kept items
are ordered by that score, ties by item id, as molar_core.recommender orders them (an approximate index may miss
items of the exact top-k, but never lists its items in another order than their scores).
"""

from __future__ import annotations

import faiss
import numpy as np
import polars as pl

from molar_core.index import search_masked


def recommend(index: faiss.Index, users: np.ndarray, item_vectors: np.ndarray, seen: list[list[int]] | None,
              k: int, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(item ids, scores), each (U, k), best first; id 0 with score -inf where fewer than k items remain."""
    users = np.ascontiguousarray(users, dtype=np.float32)
    ids = search_masked(index, users, seen, k, batch_size)
    scores = np.full(ids.shape, -np.inf, dtype=np.float32)
    for s in range(0, len(users), batch_size):
        block = ids[s:s + batch_size]
        vecs = item_vectors[np.maximum(block, 1) - 1]  # (b, k, d)
        sc = np.einsum("bd,bkd->bk", users[s:s + batch_size], vecs)
        scores[s:s + batch_size] = np.where(block > 0, sc, -np.inf)
    # FAISS orders by its own (maybe approximate) distances; ties in id order as the exact ranking breaks them
    order = np.lexsort((np.where(ids > 0, ids, np.iinfo(np.int64).max), -scores), axis=-1)
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


def recommendations_table(users: pl.DataFrame, ids: np.ndarray, scores: np.ndarray, items: pl.DataFrame) -> pl.DataFrame:
    """Long table: one row per (user, rank) with the item's raw id and title.

    `users` has user_id and raw_user_id in the row order of `ids`; `items` is items.parquet."""
    u, k = ids.shape
    long = pl.DataFrame({
        "user_id": np.repeat(users["user_id"].to_numpy(), k),
        "raw_user_id": np.repeat(users["raw_user_id"].to_numpy(), k),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), u),
        "item_id": ids.reshape(-1).astype(np.int32),
        "score": scores.reshape(-1),
    }).filter(pl.col("item_id") > 0)
    return long.join(items.select("item_id", "raw_item_id", "title"), on="item_id", how="left",
                     maintain_order="left")
