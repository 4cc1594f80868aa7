"""Item and user vector files (safetensors): the contract between user models, the index and evaluation.

item_vectors.safetensors: `item_ids` (N,) int64 = 1..N and `vectors` (N, D) float32.
user_vectors.safetensors: `user_ids` (U,) int64 and one (U, D) float32 tensor per split: train, valid, test (the
user vector after that split's history, what evaluation ranks from) and next (after the whole known sequence,
what `molar recommend` ranks from). Loading checks shapes, dtypes and ids and names the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from molar_core.errors import ArtifactError
from molar_core.io import atomic_path, safetensors_metadata

USER_VECTORS_DOC = ("user vectors after the train/valid/test histories (evaluation) and after the whole sequence "
                    "(next: recommendations)")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp),
                  metadata=safetensors_metadata(metadata) if metadata else None)


def load_tensors(path: str | Path, rebuild: str | None = None) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.exists():
        raise ArtifactError(str(path), "not found", rebuild)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(str(path), f"unreadable safetensors file ({err})", rebuild) from None


def save_item_vectors(path: str | Path, vectors: torch.Tensor, metadata: dict[str, str] | None = None) -> None:
    ids = torch.arange(1, vectors.shape[0] + 1, dtype=torch.int64)
    save_tensors(path, {"item_ids": ids, "vectors": vectors.float()}, metadata)


def load_item_vectors(path: str | Path, num_items: int | None = None, rebuild: str | None = None) -> np.ndarray:
    t = load_tensors(path, rebuild)
    if set(t) != {"item_ids", "vectors"}:
        raise ArtifactError(str(path), f"expected tensors item_ids and vectors, found {sorted(t)}", rebuild)
    vec, ids = t["vectors"], t["item_ids"]
    if vec.dtype != torch.float32 or vec.ndim != 2:
        raise ArtifactError(str(path), f"vectors must be 2-d float32, got {tuple(vec.shape)} {vec.dtype}", rebuild)
    if not torch.equal(ids, torch.arange(1, vec.shape[0] + 1)):
        raise ArtifactError(str(path), "item_ids must be 1..N in order", rebuild)
    if num_items is not None and vec.shape[0] != num_items:
        raise ArtifactError(str(path), f"has {vec.shape[0]} items but the prepared data has {num_items} "
                                       "(stale artifact from other data)", rebuild)
    if not torch.isfinite(vec).all():
        raise ArtifactError(str(path), "vectors contain NaN or inf", rebuild)
    return vec.numpy()


def save_user_vectors(path: str | Path, user_ids: torch.Tensor, splits: dict[str, torch.Tensor],
                      metadata: dict[str, str] | None = None) -> None:
    save_tensors(path, {"user_ids": user_ids.to(torch.int64), **{k: v.float() for k, v in splits.items()}}, metadata)


def read_user_vectors(path: str | Path, split: str, rebuild: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(user ids, vectors) of one split as stored."""
    t = load_tensors(path, rebuild)
    if split not in t or "user_ids" not in t:
        raise ArtifactError(str(path), f"has no '{split}' user vectors (found {sorted(t)})", rebuild)
    return t["user_ids"].numpy(), t[split].numpy()


def load_user_vectors(path: str | Path, split: str, user_ids: np.ndarray | None = None,
                      rebuild: str | None = None) -> np.ndarray:
    ids, vectors = read_user_vectors(path, split, rebuild)
    if user_ids is not None and not np.array_equal(ids, user_ids):
        raise ArtifactError(str(path), "user ids differ from the prepared data (stale artifact)", rebuild)
    return vectors
