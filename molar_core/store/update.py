"""Bring the cache up to date with a catalogue: embed only items whose content hash has no vector yet.

Streams: items are encoded a window at a time and shards are flushed as they fill, so memory stays flat as
the catalogue grows. Items with identical content (same hash) are encoded once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import torch

from molar_core.encoders.base import ItemEncoder
from molar_core.errors import DataError
from molar_core.store.cache import EmbeddingCache
from molar_core.store.shards import ShardEntry

COLUMNS = ("item_id", "text", "image_path", "content_hash")


@dataclass
class UpdateReport:
    items: int
    unique: int  # distinct content hashes
    embedded: int  # computed in this run
    reused: int  # items whose vector was already cached
    shards_written: list[str]
    shards_kept: int
    shards_dropped: list[str]  # corrupt shards removed (their items recomputed)
    shards_pruned: list[str]  # shards no current item uses
    fresh_reason: str | None
    settings_hash: str
    seconds: float  # encoding time
    counts: dict = field(default_factory=dict)  # EncodeCounts of the embedded items

    @property
    def items_per_s(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["items_per_s"] = self.items_per_s
        return d


def update_embeddings(store: str | Path, items: pl.DataFrame, encoder: ItemEncoder, shard_size: int,
                      window: int | None = None, runtime: dict | None = None,
                      log: Callable[[str], None] | None = None,
                      after_flush: Callable[[ShardEntry], None] | None = None) -> UpdateReport:
    """Embed what is missing for `items` (item_id, text, image_path, content_hash) into the cache at `store`."""
    missing_cols = [c for c in COLUMNS if c not in items.columns]
    if missing_cols:
        raise DataError("items", f"items table lacks columns {missing_cols}")
    items = items.sort("item_id")
    hashes = items["content_hash"].to_list()
    first = {}
    for text, img, h in zip(items["text"].to_list(), items["image_path"].to_list(), hashes):
        first.setdefault(h, (text, img))
    window = window or max(1, min(shard_size, 8 * getattr(getattr(encoder, "cfg", None), "batch_size", 32)))
    with EmbeddingCache(store, encoder.settings(), shard_size, runtime, log, after_flush) as cache:
        todo = cache.missing(hashes)
        kept_before = len(cache.manifest.shards)
        start = time.perf_counter()
        for lo in range(0, len(todo), window):
            chunk = todo[lo:lo + window]
            texts = [first[h][0] for h in chunk]
            paths = [first[h][1] for h in chunk]
            vec = encoder.encode(texts, paths)
            cache.add(vec, chunk, torch.tensor(encoder.last_image_used, dtype=torch.uint8).reshape(-1))
        cache.flush()
        seconds = time.perf_counter() - start
        pruned = cache.finish(items["item_id"].to_list(), hashes)
        embedded_unique = set(todo)
        return UpdateReport(
            items=len(hashes), unique=len(first),
            embedded=sum(h in embedded_unique for h in hashes), reused=sum(h not in embedded_unique for h in hashes),
            shards_written=list(cache.written), shards_kept=kept_before - len(pruned),
            shards_dropped=list(cache.dropped), shards_pruned=pruned, fresh_reason=cache.fresh_reason,
            settings_hash=cache.hash, seconds=seconds, counts=encoder.counts.as_dict())

