"""Items added to a content model's catalogue without retraining: the directory `molar add-items` writes and
`molar_core.load` reads.

It lies beside the model directory, at artifacts/added-items/<model>/, never inside it: the model directory is
the training stage's output, so a file written into it would count as a changed output (DVC would retrain) and
would vanish with the next training. Files:

- items.parquet: the added items with the columns of data/prepared/items.parquet, item_id N+1..N+M after the N
  trained items, in the order they were added;
- features.safetensors: `item_ids` and `features` (M, input_dim), their cached encoder vectors, made with the
  encoder settings of the embedding store the model was trained on (`settings_hash` in meta.json);
- item_vectors.safetensors: `item_ids` and `vectors` (M, D), scoring vectors computed from the features by the
  model's adapter (as the model's own item_vectors.safetensors: L2-normalised for InfoNCE models);
- meta.json: the model, the trained catalogue size N, the encoder settings and what each file holds.

The features are kept so that a reader recomputes the vectors with the model it has loaded: when they differ
from the saved ones, the model was retrained since, and `molar add-items --model NAME` recomputes them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import torch

from molar_core.errors import ArtifactError
from molar_core.io import atomic_dir, write_json_atomic, write_parquet_atomic
from molar_core.vectors import load_tensors, save_tensors

FORMAT = "molar-added-items/1"
DIRNAME = "added-items"  # not an identifier, so no model (a train_variants name) can have this directory
ITEMS, FEATURES, VECTORS, META = "items.parquet", "features.safetensors", "item_vectors.safetensors", "meta.json"
ITEM_COLUMNS = {"item_id": pl.Int32, "raw_item_id": pl.String, "title": pl.String, "text": pl.String,
                "image_path": pl.String, "has_image": pl.Boolean, "content_hash": pl.String,
                "cold": pl.Boolean}  # always true: no added item was in training
FILES_DOC = {ITEMS: "the added items (columns of data/prepared/items.parquet), item_id N+1..N+M",
             FEATURES: "item_ids and features (M, input_dim): their cached encoder vectors",
             VECTORS: "item_ids and vectors (M, D): scoring vectors from the model's adapter"}


def added_items_dir(model_dir: str | Path) -> Path:
    """Where the items added to the model in `model_dir` live: artifacts/added-items/<model> for
    artifacts/<model> (pipeline/paths.py says the same for the workspace)."""
    model_dir = Path(model_dir)
    return model_dir.parent / DIRNAME / model_dir.name


@dataclass
class AddedItems:
    """The contents of an added-items directory, checked against each other (not yet against a model)."""

    path: Path
    items: pl.DataFrame
    features: torch.Tensor  # (M, input_dim) float32
    vectors: torch.Tensor  # (M, D) float32, scoring form
    meta: dict

    @property
    def trained_items(self) -> int:
        return int(self.meta["trained_items"])

    @property
    def raw_item_ids(self) -> list[str]:
        return self.items["raw_item_id"].to_list()


def write_added_items(path: str | Path, items: pl.DataFrame, features: torch.Tensor, vectors: torch.Tensor,
                      meta: dict) -> None:
    """Write the whole directory at once (built beside it, then swapped in): a reader sees the old set or the new
    one. `meta` needs model, trained_items and settings_hash; the format, counts and file notes are added."""
    n, m = int(meta["trained_items"]), items.height
    ids = torch.arange(n + 1, n + m + 1, dtype=torch.int64)
    if features.shape[0] != m or vectors.shape[0] != m or items["item_id"].to_list() != ids.tolist():
        raise ValueError(f"{m} items (ids {items['item_id'].to_list()[:3]}...), {features.shape[0]} features and "
                         f"{vectors.shape[0]} vectors: they must be the same items, ids {n + 1}..{n + m}")
    full = {"format": FORMAT, **meta, "added_items": m, "item_ids": [n + 1, n + m],
            "input_dim": int(features.shape[1]), "dim": int(vectors.shape[1]), "files": FILES_DOC}
    with atomic_dir(path) as out:
        write_parquet_atomic(out / ITEMS, items.select(list(ITEM_COLUMNS)).cast(ITEM_COLUMNS))
        save_tensors(out / FEATURES, {"item_ids": ids, "features": features.float()})
        save_tensors(out / VECTORS, {"item_ids": ids, "vectors": vectors.float()})
        write_json_atomic(out / META, full)


def read_added_items(path: str | Path, rebuild: str | None = None) -> AddedItems:
    """Read and cross-check an added-items directory; anything missing or inconsistent raises ArtifactError naming
    the file (and `rebuild`, the command that rewrites it)."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(str(path), "no added-items directory here", rebuild)
    try:
        meta = json.loads((path / META).read_text())
    except FileNotFoundError:
        raise ArtifactError(str(path / META), "not found", rebuild) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(str(path / META), f"not valid JSON ({err})", rebuild) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(str(path / META), f"not a {FORMAT} directory", rebuild)
    missing = [k for k in ("model", "trained_items", "added_items", "settings_hash") if k not in meta]
    if missing:
        raise ArtifactError(str(path / META), f"incomplete: no {', '.join(missing)}", rebuild)
    try:
        n, m = int(meta["trained_items"]), int(meta["added_items"])
    except (TypeError, ValueError) as err:
        raise ArtifactError(str(path / META), f"trained_items and added_items must be counts ({err})",
                            rebuild) from None
    if not (path / ITEMS).exists():
        raise ArtifactError(str(path / ITEMS), "not found", rebuild)
    try:
        items = pl.read_parquet(path / ITEMS)
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad file to the user
        raise ArtifactError(str(path / ITEMS), f"cannot read as parquet ({err})", rebuild) from None
    wrong = {c: str(items.schema.get(c)) for c, t in ITEM_COLUMNS.items() if items.schema.get(c) != t}
    if wrong:
        raise ArtifactError(str(path / ITEMS), f"columns {wrong} are missing or of another type (want {ITEM_COLUMNS})",
                            rebuild)
    ids = torch.arange(n + 1, n + m + 1, dtype=torch.int64)
    if items["item_id"].to_list() != ids.tolist():
        raise ArtifactError(str(path / ITEMS), f"item_id is not {n + 1}..{n + m} in order ({META}: {n} trained "
                            f"items, {m} added)", rebuild)
    tensors = {}
    for name, key in ((FEATURES, "features"), (VECTORS, "vectors")):
        t = load_tensors(path / name, rebuild)
        value = t.get(key)
        if set(t) != {"item_ids", key} or not torch.equal(t["item_ids"], ids) or value is None or value.ndim != 2:
            raise ArtifactError(str(path / name), f"expected item_ids {n + 1}..{n + m} and {key} (M, width), found "
                                f"{ {k: tuple(v.shape) for k, v in t.items()} }", rebuild)
        if value.dtype != torch.float32 or not bool(torch.isfinite(value).all()):
            raise ArtifactError(str(path / name), f"{key} must be finite float32", rebuild)
        tensors[key] = value
    return AddedItems(path, items, tensors["features"], tensors["vectors"], meta)
