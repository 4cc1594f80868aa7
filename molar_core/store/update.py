"""Bring the cache up to date with a catalogue: embed only items whose content hash has no vector yet.

Streams: items are encoded a window at a time and shards are flushed as they fill, so memory stays flat as
the catalogue grows. Items with identical content (same hash) are encoded once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import torch

from molar_core.encoders.base import ItemEncoder
from molar_core.errors import DataError
from molar_core.store.cache import EmbeddingCache
from molar_core.store.shards import ShardEntry

COLUMNS = ("item_id", "text", "image_path", "content_hash")
SLICE_ROWS = 8192  # rows of texts held at a time


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


def update_embeddings(store: str | Path, items: pl.DataFrame | pl.LazyFrame, encoder: ItemEncoder,
                      shard_size: int, window: int | None = None, runtime: dict | None = None,
                      log: Callable[[str], None] | None = None,
                      after_flush: Callable[[ShardEntry], None] | None = None,
                      slice_rows: int = SLICE_ROWS, catalogue: bool = True) -> UpdateReport:
    """Embed what is missing for `items` (item_id, text, image_path, content_hash) into the cache at `store`.

    `items` may be a LazyFrame (`pl.scan_parquet(items.parquet)`): only the id and hash columns are read whole;
    texts and image paths are read `slice_rows` rows at a time, so memory does not grow with the texts of the
    catalogue. The first row of each content hash, in table order, is the one encoded.

    catalogue=True: `items` is the whole catalogue, recorded as the cache's catalogue, and shards no item of it
    uses are removed. False: only adds the missing contents and keeps everything else (a cache of contents
    outside any one catalogue, as the items added to trained models: artifacts/added-items/embeddings).
    """
    lazy = items.lazy()
    missing_cols = [c for c in COLUMNS if c not in lazy.collect_schema().names()]
    if missing_cols:
        raise DataError("items", f"items table lacks columns {missing_cols}")
    keys = lazy.select("item_id", "content_hash").collect()
    hashes = keys["content_hash"].to_list()
    window = window or max(1, min(shard_size, 8 * getattr(getattr(encoder, "cfg", None), "batch_size", 32)))
    with EmbeddingCache(store, encoder.settings(), shard_size, runtime, log, after_flush) as cache:
        todo = cache.missing(hashes)
        rows = (keys.with_row_index("row").filter(pl.col("content_hash").is_in(todo))
                .unique("content_hash", keep="first", maintain_order=True)["row"].to_numpy())
        kept_before = len(cache.manifest.shards)
        start = time.perf_counter()

        def windows() -> Iterator[pl.DataFrame]:
            """The rows to encode, `window` at a time in table order (texts read a slice at a time)."""
            pending = pl.DataFrame(schema={"text": pl.String, "image_path": pl.String, "content_hash": pl.String})
            for lo in range(0, len(keys), slice_rows):
                want = rows[np.searchsorted(rows, lo):np.searchsorted(rows, lo + slice_rows)] - lo  # rows ascend
                if len(want):
                    part = lazy.slice(lo, slice_rows).select(pending.columns).collect()
                    pending = pl.concat([pending, part[want]], how="vertical_relaxed")
                last = lo + slice_rows >= len(keys)
                while len(pending) >= window or (last and len(pending)):
                    yield pending[:window]
                    pending = pending[window:]

        for batch, vectors, image_used in encode_stream(encoder, windows()):  # in window order, whoever encodes
            cache.add(vectors, batch["content_hash"].to_list(), image_used)
        cache.flush()
        seconds = time.perf_counter() - start
        pruned: list[str] = []
        if catalogue:
            table = keys.sort("item_id")
            pruned = cache.finish(table["item_id"].to_list(), table["content_hash"].to_list())
        embedded_unique = set(todo)
        return UpdateReport(
            items=len(hashes), unique=len(set(hashes)),
            embedded=sum(h in embedded_unique for h in hashes), reused=sum(h not in embedded_unique for h in hashes),
            shards_written=list(cache.written), shards_kept=kept_before - len(pruned),
            shards_dropped=list(cache.dropped), shards_pruned=pruned, fresh_reason=cache.fresh_reason,
            settings_hash=cache.hash, seconds=seconds, counts=encoder.counts.as_dict())


def encode_stream(encoder: ItemEncoder, windows: Iterable[pl.DataFrame]
                  ) -> Iterator[tuple[pl.DataFrame, torch.Tensor, torch.Tensor]]:
    """(window, its vectors, its image-used flags) for each window, in order. An encoder with its own
    `encode_stream` (the Ray actor pool, molar_core.distributed.ray_embed) encodes several windows at once;
    any other encodes them one after the other in this process."""
    if hasattr(encoder, "encode_stream"):
        yield from encoder.encode_stream(windows)
        return
    for batch in windows:
        vec = encoder.encode(batch["text"].to_list(), batch["image_path"].to_list())
        yield batch, vec, torch.tensor(encoder.last_image_used, dtype=torch.uint8).reshape(-1)
