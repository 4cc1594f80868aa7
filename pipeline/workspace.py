"""A finished (or half-finished) pipeline workspace as the result commands see it: recommend, report, inspect.

Every lookup fails with the artifact's path and the command that produces it, so a user who runs `molar report`
before `dvc repro` is told what to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import faiss
import numpy as np
import polars as pl

from molar_core.checkpoint import Checkpoint, open_checkpoint
from molar_core.errors import DataError, MolarError
from molar_core.index import build_index, load_index
from molar_core.io import read_json
from pipeline import paths
from pipeline.readers import index_is_current, index_paths, read_table

if TYPE_CHECKING:
    from molar_core.recommender import Recommender

CANDIDATE_COLUMN = "item_id"
CANDIDATE_SUFFIXES = (".txt", ".csv", ".parquet")


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


def open_recommender(root: Path, model: str | None, checkpoint: Path | None, prepared: Path | None,
                     embeddings: Path | None, with_users: bool) -> tuple[Recommender, pl.DataFrame,
                                                                         pl.DataFrame | None]:
    """(the model reloaded by molar_core.load with the items `molar add-items` added to it, items.parquet,
    test.parquet when `with_users`) of the prepared data the model is used with, refused unless it is the data
    the model was trained on (the checkpoint's format and data are checked before the model is rebuilt).

    A content model reads the embedding store its config.json records: `embeddings` when given; for a model
    in the workspace, the workspace's; for a copied model directory (`checkpoint`), the one of the workspace
    whose prepared data it is used with (PREPARED/../.., the layout `dvc repro` writes), refused naming
    --embeddings when there is none."""
    from molar_core.recommender import load

    ckpt = open_model(root, model, checkpoint)
    prep = prepared_dir(root, prepared, checkpoint)
    items = read_table(prep, "items")
    test = read_table(prep, "test") if with_users else None
    ckpt.check_data(prep / "items.parquet", None if test is None else test.height)
    store = embeddings
    features = ckpt.config.get("item_features")
    if store is None and checkpoint is not None and isinstance(features, dict) and "store" in features:
        store = prep.resolve().parent.parent / str(features["store"])
        if not store.exists():
            raise MolarError(f"--checkpoint {checkpoint} is a content model: it reads the item features of the "
                             f"embedding store it was trained with, which is not at {store} (beside --prepared "
                             f"{prep}); give it as --embeddings STORE")
    return load(ckpt.path, store, rebuild=ckpt.rebuild), items, test


def model_index(root: Path, ckpt: Checkpoint, item_vectors: np.ndarray | None = None) -> tuple[faiss.Index, str]:
    """The workspace's FAISS index of this model when it was built from these very item vectors; otherwise an
    exact index built in memory (a copied checkpoint has no index beside it). `item_vectors`: the vectors to
    rank (a reloaded model's, molar_core.Recommender.item_vectors(); default the saved ones): the index stage's
    index holds the trained items only, so with items added to the model the exact index is built over them."""
    vectors = ckpt.item_vectors() if item_vectors is None else np.ascontiguousarray(item_vectors, dtype=np.float32)
    if len(vectors) == ckpt.num_items and index_is_current(root, ckpt):
        faiss_path, info_path = index_paths(root, ckpt.name)
        return load_index(faiss_path), f"{faiss_path} ({read_json(info_path).get('factory')})"
    index, _ = build_index(vectors, "Flat")
    added = len(vectors) - ckpt.num_items
    what = (f"over {ckpt.num_items:,} trained and {added:,} added items" if added > 0 else
            "from item_vectors.safetensors" if item_vectors is None else
            f"over the reloaded model's {len(vectors):,} item vectors")
    return index, f"exact inner-product index built {what}"


def candidate_items(path: Path, rec: Recommender) -> list[int]:
    """The item ids of an --items-file, in file order (a repeated id counts once): a .txt file holds one prepared
    item id per line (blank lines are skipped), a .csv or .parquet file a column `item_id`. An id outside the
    model's catalogue (prepared ids 1..N, then the ids of added items), a value that is not an id, or a file
    without ids is refused (DataError naming the file and its row: the line of a .txt or .csv file, header
    included; the 1-based row of a parquet file)."""
    path = Path(path)
    if path.suffix not in CANDIDATE_SUFFIXES:
        raise MolarError(f"--items-file {path}: use a .txt file (one item id per line) or a .csv or .parquet file "
                         f"with a column {CANDIDATE_COLUMN!r}")
    if not path.is_file():
        raise DataError(str(path), "file not found")
    column: str | None = CANDIDATE_COLUMN
    if path.suffix == ".txt":
        from molar_core.data.raw import read_text

        lines = pl.Series(read_text(path).split("\n"), dtype=pl.String).str.strip_chars()
        values = pl.DataFrame({"value": lines, "row": pl.int_range(1, len(lines) + 1, eager=True)})
        values, column = values.filter(pl.col("value") != ""), None
    else:
        if path.suffix == ".csv":
            from molar_core.data.raw import read_delimited

            table, first = read_delimited(path, ","), 2
        else:
            try:
                table, first = pl.read_parquet(path), 1
            except Exception as err:  # noqa: BLE001 - any reader failure is a bad file to the user
                raise DataError(str(path), f"cannot read as parquet ({err})") from None
        if CANDIDATE_COLUMN not in table.columns:
            raise DataError(str(path), f"no column {CANDIDATE_COLUMN!r} (columns present: "
                            f"{', '.join(table.columns) or 'none'})", column=CANDIDATE_COLUMN)
        values = pl.DataFrame({"value": table[CANDIDATE_COLUMN], "row": pl.int_range(first, first + table.height,
                                                                                      eager=True)})
    if values.height == 0:
        raise DataError(str(path), "holds no item ids")
    raw = values["value"]
    if raw.dtype == pl.String:
        ids = raw.str.strip_chars().cast(pl.Int64, strict=False)
    elif raw.dtype.is_integer():
        ids = raw.cast(pl.Int64)
    else:
        raise DataError(str(path), f"column {CANDIDATE_COLUMN!r} is {raw.dtype}: item ids are integers",
                        column=column)
    bad = ids.is_null()
    if bad.any():
        i = int(bad.arg_true()[0])
        shown = "a missing value" if raw[i] is None or str(raw[i]).strip() == "" else repr(raw[i])
        raise DataError(str(path), f"{shown} is not an item id (prepared item ids are integers)",
                        row=int(values["row"][i]), column=column)
    outside = (ids < 1) | (ids > rec.num_items)
    if outside.any():
        i = int(outside.arg_true()[0])
        raise DataError(str(path), f"item id {ids[i]} is not in the catalogue of {rec.name} ({rec.catalogue()})",
                        row=int(values["row"][i]), column=column)
    return ids.unique(maintain_order=True).to_list()


def user_rows(test: pl.DataFrame, raw_user_id: str, prepared: Path) -> pl.DataFrame:
    """The test-table row of one user by raw id, or an error that shows what ids look like."""
    row = test.filter(pl.col("raw_user_id") == raw_user_id)
    if row.height == 0:
        sample = ", ".join(test["raw_user_id"].head(3).to_list())
        raise MolarError(f"unknown user id {raw_user_id!r}: not among the {test.height:,} users of "
                         f"{prepared / 'test.parquet'} (raw ids as in the source data, e.g. {sample})")
    return row
