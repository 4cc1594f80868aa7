"""A trained model's directory (config.json + safetensors) as a self-describing unit that can be copied elsewhere.

config.json carries `format_version` (the file contract below; bumped when it changes) and `data` (hash of the
items table and the catalogue and user counts it was trained on), so a checkpoint used with other data, or written
by an incompatible molar, is refused with a message instead of producing wrong recommendations.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from molar_core.errors import ArtifactError
from molar_core.io import atomic_dir, sha256_file, write_json_atomic
from molar_core.vectors import (
    load_item_vectors,
    read_user_vectors,
    save_item_vectors,
    save_tensors,
    save_user_vectors,
)

CHECKPOINT_FORMAT = 2  # 1: no `next` user vectors, no data fingerprint; 2: both
REQUIRED_FILES = ("config.json", "item_vectors.safetensors", "user_vectors.safetensors")


@dataclass
class Checkpoint:
    path: Path
    config: dict
    rebuild: str | None = None

    @property
    def name(self) -> str:
        return str(self.config.get("model", self.path.name))

    @property
    def num_items(self) -> int:
        return int(self.config["data"]["num_items"])

    def item_vectors(self) -> np.ndarray:
        return load_item_vectors(self.path / "item_vectors.safetensors", self.num_items, self.rebuild)

    def user_vectors(self, split: str, user_ids: list[int] | None = None) -> np.ndarray:
        """One split's user vectors (train, valid, test or next), in the order of `user_ids` (all when None)."""
        path = self.path / "user_vectors.safetensors"
        ids, vectors = read_user_vectors(path, split, self.rebuild)
        if user_ids is None:
            return vectors
        row = {u: i for i, u in enumerate(ids.tolist())}
        missing = [u for u in user_ids if u not in row]
        if missing:
            raise ArtifactError(str(path), f"has no vectors for user_id {missing[:5]} (stale artifact)", self.rebuild)
        return vectors[[row[u] for u in user_ids]]

    def check_data(self, items_path: Path, num_users: int | None = None) -> None:
        """Refuse data other than what the model was trained on (same items table, same user count)."""
        data = self.config["data"]
        if sha256_file(items_path) != data["items_sha256"]:
            raise ArtifactError(str(self.path), f"was trained on another items table than {items_path} "
                                "(sha256 differs: stale, or the wrong prepared data)", self.rebuild)
        if num_users is not None and num_users != data["num_users"]:
            raise ArtifactError(str(self.path), f"was trained on {data['num_users']} users, the data has {num_users}",
                                self.rebuild)


def open_checkpoint(path: str | Path, rebuild: str | None = None) -> Checkpoint:
    """Open a model directory, checking that its files exist and that its format is the one this code reads."""
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(str(path), "no such model directory", rebuild)
    missing = [f for f in REQUIRED_FILES if not (path / f).exists()]
    if missing:
        raise ArtifactError(str(path), f"incomplete model directory, missing {', '.join(missing)}", rebuild)
    try:
        config = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(str(path / "config.json"), f"not valid JSON ({err})", rebuild) from None
    version = config.get("format_version", 1) if isinstance(config, dict) else None
    if version != CHECKPOINT_FORMAT:
        raise ArtifactError(str(path / "config.json"), f"checkpoint format {version}, this molar reads format "
                            f"{CHECKPOINT_FORMAT}: retrain the model with this version", rebuild)
    return Checkpoint(path, config, rebuild)


def write_checkpoint(path: str | Path, config: dict, state: dict[str, torch.Tensor], item_vectors: torch.Tensor,
                     user_ids: torch.Tensor, user_vectors: dict[str, torch.Tensor], metadata: dict[str, str],
                     extra_weights: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
    """Write a trained model's directory as one unit (molar_core.io.atomic_dir: a reader sees the old directory or
    the complete new one, never a mix): model.safetensors (`state`), any `extra_weights` (file name -> state dict,
    e.g. a refit's early_stopped.safetensors), item_vectors.safetensors (row i = item i+1, in scoring form),
    user_vectors.safetensors (`user_ids` and one tensor per split: train, valid, test, next) and config.json.

    `config` needs `model` (the name) and `data` (items_sha256, num_items, num_users: what open_checkpoint and
    Checkpoint.check_data read); it is written with this code's `format_version` first. `metadata` goes into
    every safetensors header."""
    missing = [key for key in ("model", "data") if key not in config]
    if missing:
        raise ValueError(f"config lacks {', '.join(missing)}: a checkpoint records its model name and data")
    if config.get("format_version", CHECKPOINT_FORMAT) != CHECKPOINT_FORMAT:
        raise ValueError(f"config has format_version {config['format_version']}, this code writes {CHECKPOINT_FORMAT}")
    with atomic_dir(Path(path)) as out:
        save_tensors(out / "model.safetensors", state, metadata)
        for name, weights in (extra_weights or {}).items():
            save_tensors(out / name, weights, metadata)
        save_item_vectors(out / "item_vectors.safetensors", item_vectors, metadata)
        save_user_vectors(out / "user_vectors.safetensors", user_ids, user_vectors, metadata)
        write_json_atomic(out / "config.json", {"format_version": CHECKPOINT_FORMAT, **config})
