"""A finished (or half-finished) pipeline workspace as the result commands see it: recommend, report, inspect.

Every lookup fails with the artifact's path and the command that produces it, so a user who runs `molar report`
before `dvc repro` is told what to run.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import polars as pl

from molar_core.checkpoint import Checkpoint, open_checkpoint
from molar_core.errors import MolarError
from molar_core.index import build_index, load_index
from molar_core.io import read_json
from pipeline import paths
from stages.common import index_is_current, index_paths


def open_model(root: Path, model: str | None = None, checkpoint: Path | None = None) -> Checkpoint:
    """A model by name inside the workspace, or any model directory (a copy made elsewhere)."""
    if checkpoint is not None:
        return open_checkpoint(checkpoint)
    name = model or "sasrec"
    return open_checkpoint(root / paths.model_dir(name), paths.producer(name))


def prepared_dir(root: Path, prepared: Path | None, checkpoint: Path | None) -> Path:
    """The prepared data a model is used with: given, or the workspace's (a copied checkpoint needs it given)."""
    if prepared is not None:
        return prepared
    if checkpoint is not None and not (root / paths.PREPARED).exists():
        raise MolarError(f"--checkpoint {checkpoint} needs --prepared DIR: the data/prepared directory the model "
                         "was trained on (its items.parquet and test.parquet)")
    return root / paths.PREPARED


def model_index(root: Path, ckpt: Checkpoint) -> tuple[faiss.Index, str]:
    """The workspace's FAISS index of this model when it was built from these very item vectors; otherwise an
    exact index built in memory (a copied checkpoint has no index beside it)."""
    if index_is_current(root, ckpt):
        faiss_path, info_path = index_paths(root, ckpt.name)
        return load_index(faiss_path), f"{faiss_path} ({read_json(info_path).get('factory')})"
    index, _ = build_index(ckpt.item_vectors(), "Flat")
    return index, "exact inner-product index built from item_vectors.safetensors"


def user_rows(test: pl.DataFrame, raw_user_id: str, prepared: Path) -> pl.DataFrame:
    """The test-table row of one user by raw id, or an error that shows what ids look like."""
    row = test.filter(pl.col("raw_user_id") == raw_user_id)
    if row.height == 0:
        sample = ", ".join(test["raw_user_id"].head(3).to_list())
        raise MolarError(f"unknown user id {raw_user_id!r}: not among the {test.height:,} users of "
                         f"{prepared / 'test.parquet'} (raw ids as in the source data, e.g. {sample})")
    return row
