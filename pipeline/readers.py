"""A workspace's files as stages and commands read them: prepared tables, stats.json, trained model directories and
the record of each FAISS index, every read checked and every failure naming the file and the command that rebuilds it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import polars as pl

from molar_core.checkpoint import Checkpoint, open_checkpoint
from molar_core.data.processing import check_prepared
from molar_core.errors import ArtifactError
from molar_core.io import read_json, sha256_file
from pipeline import paths

T = TypeVar("T")

REBUILD_PREPARED = "dvc repro prepare (or `molar prepare`)"


def _open_parquet(path: Path, read: Callable[[Path], T]) -> T:
    """`read(path)`, or an ArtifactError naming the file and the stage that makes it (missing or unreadable)."""
    if not path.exists():
        raise ArtifactError(str(path), "not found", REBUILD_PREPARED)
    try:
        return read(path)
    except (pl.exceptions.PolarsError, OSError) as err:
        raise ArtifactError(str(path), f"not a readable parquet file ({err})", REBUILD_PREPARED) from None


def read_table(prepared: Path, name: str) -> pl.DataFrame:
    """items, train, valid or test from a prepared-data directory, or an error naming the stage that makes it."""
    path = prepared / f"{name}.parquet"
    df = _open_parquet(path, pl.read_parquet)
    stats = prepared / "stats.json"
    num_items = read_json(stats).get("items") if name != "items" and stats.exists() else None
    check_prepared(name, df, num_items, str(path), REBUILD_PREPARED)
    return df


def scan_items(root: Path) -> pl.LazyFrame:
    """items.parquet as a LazyFrame, checked as read_prepared checks it (columns, types, ids 1..N) while reading
    only its id column: the embed stage then reads the texts a slice at a time."""
    path = root / paths.ITEMS

    def scan(p: Path) -> tuple[pl.LazyFrame, pl.Schema, pl.DataFrame]:
        lazy = pl.scan_parquet(p)
        schema = lazy.collect_schema()
        return lazy, schema, lazy.select("item_id").collect() if "item_id" in schema else pl.DataFrame()

    lazy, schema, ids = _open_parquet(path, scan)
    check_prepared("items", ids, None, str(path), REBUILD_PREPARED, schema=schema)
    return lazy


def read_prepared(root: Path, name: str) -> pl.DataFrame:
    """A prepared table of the workspace at `root`."""
    return read_table(root / paths.PREPARED, name)


def read_stats(root: Path) -> dict:
    """data/prepared/stats.json: catalogue and user counts (and the warm/cold split when prepare held items out)."""
    path = root / paths.STATS
    if not path.exists():
        raise ArtifactError(str(path), "not found", REBUILD_PREPARED)
    return read_json(path)


def full_sequences(test: pl.DataFrame) -> list[list[int]]:
    """Each user's whole known sequence (test history + test item): what `next` user vectors are computed from."""
    return [h + [t] for h, t in zip(test["history"].to_list(), test["target"].to_list())]


def open_trained(root: Path, model: str, stats: dict) -> Checkpoint:
    """A model directory of this workspace, refused (naming the stage that rebuilds it) when it was trained on
    other prepared data than the workspace's: a stale checkpoint would otherwise index and score the wrong items."""
    ckpt = open_checkpoint(root / paths.model_dir(model), paths.producer(model))
    ckpt.check_data(root / paths.ITEMS, stats["users"])
    return ckpt


def index_paths(root: Path, model: str) -> tuple[Path, Path]:
    """A model's FAISS index and the JSON beside it that records what it was built from."""
    faiss_path = root / paths.INDEX_DIR / f"{model}.faiss"
    return faiss_path, faiss_path.with_suffix(".json")


def index_is_current(root: Path, ckpt: Checkpoint) -> bool:
    """Whether the workspace's index of this model was built from the checkpoint's item vectors as they are now."""
    faiss_path, info_path = index_paths(root, ckpt.name)
    if not (faiss_path.exists() and info_path.exists()):
        return False
    return read_json(info_path).get("item_vectors_sha256") == sha256_file(ckpt.path / "item_vectors.safetensors")
