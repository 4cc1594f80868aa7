"""DVC stage `embed`: items.parquet -> artifacts/embeddings/ (shards + manifest.json), incremental and resumable.

Only items whose content hash has no vector under the same encoder settings are encoded; a killed run resumes
from its last flushed shard. Run statistics (counts, timings) go to metrics/embed.json, not into the cache, so an
unchanged cache stays byte-identical.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TypeVar

import polars as pl

from molar_core.encoders import build_encoder
from molar_core.io import runtime_info, write_json_atomic
from molar_core.store import update_embeddings
from pipeline import paths
from pipeline.configs import encoder_config
from pipeline.params import EmbedParams, Params, RuntimeParams
from pipeline.readers import scan_items
from stages.common import console, params_from_argv, run_main, summary

METRICS = paths.METRICS_DIR / "embed.json"
PAUSE_ENV = "MOLAR_EMBED_PAUSE_AFTER_SHARD"  # test-only hook: seconds to sleep after each flushed shard
FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)


def resolve_images(items: FrameT, root: Path) -> FrameT:
    """Relative image paths are relative to the project root (prepare writes absolute ones); a DataFrame or a
    LazyFrame, so the embed stage can keep reading its items a slice at a time."""
    path = pl.col("image_path")
    return items.with_columns(pl.when(path.str.starts_with("/")).then(path)
                              .otherwise(pl.lit(f"{root}/") + path).alias("image_path"))


def open_encoder(p: EmbedParams, root: Path, runtime: RuntimeParams | None):
    """This process's encoder, or with `engine: ray` an actor pool of them on the `runtime` cluster."""
    if p.engine == "local":
        return build_encoder(encoder_config(p, root))
    from molar_core.distributed.ray_cluster import RayConnection, connect
    from molar_core.distributed.ray_embed import ActorPoolConfig, RayPoolEncoder

    runtime = runtime or RuntimeParams()
    connect(RayConnection(**runtime.model_dump()))
    return RayPoolEncoder(encoder_config(p, root), ActorPoolConfig(**p.ray.model_dump()))


def run(p: EmbedParams, root: Path = Path("."), runtime: RuntimeParams | None = None) -> dict:
    items = resolve_images(scan_items(root), root)
    t0 = time.perf_counter()
    encoder = open_encoder(p, root, runtime)
    load_s = time.perf_counter() - t0
    if encoder.backend_note:
        console.print(f"embed: {encoder.backend_note}", markup=False, highlight=False)
    pause = float(os.environ.get(PAUSE_ENV, "0") or 0)
    committed = 0

    def log(msg: str) -> None:
        console.print(f"embed: {msg}", markup=False, highlight=False)

    def after_flush(entry) -> None:
        """One line per committed shard: progress in a log, and the marker after which a kill loses nothing."""
        nonlocal committed
        committed += entry.items
        log(f"committed {entry.file} ({entry.items:,} contents, {committed:,} this run)")
        if pause > 0:
            time.sleep(pause)

    try:
        report = update_embeddings(root / paths.EMBEDDINGS, items, encoder, p.shard_size, runtime=runtime_info(),
                                   log=log, after_flush=after_flush)
    finally:
        if hasattr(encoder, "close"):  # the actor pool: its processes (and GPUs) are freed at once
            encoder.close()
    c = report.counts
    rejected = sum(c["image_rejected"].values())
    metrics = {"items": report.items, "embedded": report.embedded, "reused": report.reused,
               "unique_contents": report.unique, "items_per_s": report.items_per_s, "encode_s": report.seconds,
               "model_load_s": load_s, "shards_written": report.shards_written, "shards_kept": report.shards_kept,
               "shards_dropped_corrupt": report.shards_dropped, "shards_pruned": report.shards_pruned,
               "fresh_cache_reason": report.fresh_reason, "settings_hash": report.settings_hash,
               "encode_counts": c, "encoder_runtime": encoder.runtime(), "backend_note": encoder.backend_note,
               "params": p.model_dump()}
    write_json_atomic(root / METRICS, metrics)
    images = ("encoder reads no images" if encoder.name == "sentence"
              else f"{c['image_used']:,} with image, {rejected:,} unusable images" + (
                  f" ({', '.join(f'{k} {v}' for k, v in c['image_rejected'].items())})" if rejected else ""))
    summary("embed", f"{report.items:,} items ({report.unique:,} distinct contents): {report.embedded:,} embedded, "
            f"{report.reused:,} reused; {c['items']:,} contents encoded, text-only {c['text_only'] + rejected:,} "
            f"({images}), truncated {c['truncated']:,}; {report.items_per_s:,.0f} items/s; shards: "
            f"{len(report.shards_written)} written, {report.shards_kept} kept; settings {report.settings_hash[:12]}")
    return metrics


def main(params: Params | None = None) -> None:
    """`python -m stages.embed [params.yaml]`, or `molar` with params it has already validated."""
    params = params or params_from_argv()
    run(params.embed, runtime=params.runtime)


if __name__ == "__main__":
    run_main(main)
