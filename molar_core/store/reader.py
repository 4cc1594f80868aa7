"""Read item vectors out of the embedding cache, verified, in item_id order.

Readers never trust the cache blindly: every shard they touch is checked against the manifest's size and
sha256, and a missing item is an error naming it, never a silent zero vector.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import torch
from safetensors.torch import load as load_bytes

from molar_core.errors import ArtifactError
from molar_core.store.manifest import CATALOGUE, Manifest, manifest_path, read_manifest
from molar_core.store.shards import RERUN, read_shard, tensor_to_hashes

REBUILD = "dvc repro embed"


def open_manifest(store: str | Path) -> Manifest:
    m = read_manifest(Path(store))
    if m is None:
        raise ArtifactError(str(manifest_path(Path(store))), "no embedding cache here (manifest.json not found)",
                            REBUILD)
    return m


def read_catalogue(store: str | Path, manifest: Manifest | None = None) -> tuple[list[int], list[str]]:
    """(item_ids, content hashes) of the last completed embed run, verified against the manifest."""
    store = Path(store)
    m = manifest or open_manifest(store)
    path = store / CATALOGUE
    if m.catalogue is None or not path.exists():
        raise ArtifactError(str(path), "no item catalogue: the last embed run did not complete", REBUILD)
    blob = path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != m.catalogue.get("sha256"):
        raise ArtifactError(str(path), f"checksum mismatch with the manifest; {RERUN}")
    t = load_bytes(blob)
    return t["item_ids"].tolist(), tensor_to_hashes(t["content_hashes"])


def lookup_vectors(store: str | Path, hashes: list[str], manifest: Manifest | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(vectors (n, D) float32, found (n,) bool) for content hashes; rows not found are zero.

    Reads one shard at a time (memory: the output plus one shard); shards holding none of the hashes are still
    verified, so corruption anywhere is reported.
    """
    store = Path(store)
    m = manifest or open_manifest(store)
    where: dict[str, list[int]] = {}
    for i, h in enumerate(hashes):
        where.setdefault(h, []).append(i)
    out = torch.zeros(len(hashes), m.dim, dtype=torch.float32)
    found = torch.zeros(len(hashes), dtype=torch.bool)
    for entry in m.shards:
        shard = read_shard(store / entry.file, entry, m.dim, m.settings_hash)
        rows, targets = [], []
        for r, h in enumerate(shard.hashes):
            for i in where.get(h, ()):
                rows.append(r)
                targets.append(i)
        if rows:
            out[targets] = shard.vectors[rows]
            found[targets] = True
    return out, found


def load_item_embeddings(store: str | Path, items_df: pl.DataFrame | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(item_ids (N,) int64, vectors (N, D) float32) in item_id order.

    items_df: the current items.parquet (needs item_id and content_hash); None = the catalogue of the last
    completed embed run. Raises ArtifactError naming the items the cache lacks (stale cache: rerun embed).
    """
    store = Path(store)
    m = open_manifest(store)
    if items_df is None:
        ids, hashes = read_catalogue(store, m)
        titles = None
    else:
        for col in ("item_id", "content_hash"):
            if col not in items_df.columns:
                raise ArtifactError("items", f"items table has no column {col!r}")
        df = items_df.sort("item_id")
        ids, hashes = df["item_id"].to_list(), df["content_hash"].to_list()
        titles = df["title"].to_list() if "title" in df.columns else None
    vectors, found = lookup_vectors(store, hashes, m)
    if not bool(found.all()):
        miss = (~found).nonzero().flatten().tolist()
        named = ", ".join(f"{ids[i]}" + (f" {titles[i]!r}" if titles else "") for i in miss[:5])
        raise ArtifactError(str(store), f"no vector for {len(miss)} of {len(ids)} items (item_id {named}"
                                        f"{', ...' if len(miss) > 5 else ''}): the cache is older than "
                                        "items.parquet", REBUILD)
    item_ids = torch.tensor(np.asarray(ids, dtype=np.int64))
    return item_ids, vectors
