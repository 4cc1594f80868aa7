"""One shard of the embedding cache: a safetensors file of vectors keyed by the items' content hashes.

Tensors: `vectors` (n, D) float32, `content_hashes` (n, 32) uint8 (the sha256 digests), `image_used` (n,) uint8.
The manifest holds each shard's byte size and sha256, so a truncated or altered shard is caught before use.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from molar_core.errors import ArtifactError
from molar_core.io import parse_safetensors_metadata, safetensors_metadata, write_bytes_atomic

HASH_BYTES = 32
PREFIX, SUFFIX = "shard-", ".safetensors"
RERUN = "rerun `dvc repro embed` (it drops the bad shard and recomputes its items)"


def shard_name(index: int) -> str:
    return f"{PREFIX}{index:05d}{SUFFIX}"


def shard_index(name: str) -> int | None:
    """The number in shard-NNNNN.safetensors, or None for any other name."""
    if not (name.startswith(PREFIX) and name.endswith(SUFFIX)):
        return None
    digits = name[len(PREFIX):-len(SUFFIX)]
    return int(digits) if digits.isdigit() else None


def hashes_to_tensor(hashes: list[str]) -> torch.Tensor:
    """Hex sha256 strings -> (n, 32) uint8."""
    try:
        raw = b"".join(bytes.fromhex(h) for h in hashes)
    except ValueError as err:
        raise ValueError(f"content hashes must be hex sha256 digests ({err})") from None
    if len(raw) != HASH_BYTES * len(hashes):
        raise ValueError("content hashes must be 64 hex characters (sha256)")
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).reshape(len(hashes), HASH_BYTES).copy())


def tensor_to_hashes(t: torch.Tensor) -> list[str]:
    raw = t.numpy().tobytes()
    return [raw[i:i + HASH_BYTES].hex() for i in range(0, len(raw), HASH_BYTES)]


@dataclass
class ShardEntry:
    """What the manifest records about a shard."""

    file: str
    items: int
    sha256: str
    bytes: int

    def as_dict(self) -> dict:
        return {"file": self.file, "items": self.items, "sha256": self.sha256, "bytes": self.bytes}


@dataclass
class Shard:
    vectors: torch.Tensor  # (n, D) float32
    hashes: list[str]  # hex, one per row
    image_used: torch.Tensor  # (n,) uint8


def write_shard(path: Path, vectors: torch.Tensor, hashes: list[str], image_used: torch.Tensor,
                settings_hash: str) -> ShardEntry:
    """Write atomically (temp + fsync + rename) and return the entry with the file's checksum."""
    n = vectors.shape[0]
    if len(hashes) != n or image_used.shape != (n,):
        raise ValueError(f"shard {path.name}: {n} vectors, {len(hashes)} hashes, {tuple(image_used.shape)} flags")
    blob = save_bytes({"vectors": vectors.detach().to(torch.float32).contiguous().cpu(),
                       "content_hashes": hashes_to_tensor(hashes),
                       "image_used": image_used.to(torch.uint8).contiguous().cpu()},
                      metadata=safetensors_metadata({"format": "molar-embeddings-shard/1",
                                                     "settings_hash": settings_hash}))
    write_bytes_atomic(path, blob)
    return ShardEntry(path.name, n, hashlib.sha256(blob).hexdigest(), len(blob))


def _metadata(blob: bytes) -> dict:
    """The `__metadata__` of a safetensors blob (8-byte little-endian header length, then a JSON header)."""
    n = int.from_bytes(blob[:8], "little")
    return parse_safetensors_metadata(json.loads(blob[8:8 + n]).get("__metadata__"))


def read_shard(path: Path, entry: ShardEntry, dim: int, settings_hash: str) -> Shard:
    """Read and verify a shard against its manifest entry; any mismatch raises ArtifactError naming the file."""
    if not path.exists():
        raise ArtifactError(str(path), f"shard listed in the manifest is missing; {RERUN}")
    blob = path.read_bytes()
    if len(blob) != entry.bytes:
        raise ArtifactError(str(path), f"truncated or resized shard ({len(blob):,} bytes, the manifest says "
                                       f"{entry.bytes:,}); {RERUN}")
    digest = hashlib.sha256(blob).hexdigest()
    if digest != entry.sha256:
        raise ArtifactError(str(path), f"checksum mismatch (sha256 {digest[:12]}..., the manifest says "
                                       f"{entry.sha256[:12]}...): the shard is corrupt; {RERUN}")
    try:
        t = load_bytes(blob)
    except Exception as err:  # noqa: BLE001  a checksum-valid file that safetensors rejects: same remedy
        raise ArtifactError(str(path), f"not a readable safetensors shard ({err}); {RERUN}") from None
    vec, hashes, used = t.get("vectors"), t.get("content_hashes"), t.get("image_used")
    ok = (vec is not None and hashes is not None and used is not None and vec.dtype == torch.float32
          and vec.shape == (entry.items, dim) and hashes.dtype == torch.uint8
          and hashes.shape == (entry.items, HASH_BYTES) and used.shape == (entry.items,))
    if not ok:
        got = {k: (tuple(v.shape), str(v.dtype)) for k, v in t.items()}
        raise ArtifactError(str(path), f"unexpected tensors {got} (want {entry.items} rows of dim {dim}); {RERUN}")
    meta = _metadata(blob)
    if meta.get("settings_hash") != settings_hash:
        raise ArtifactError(str(path), f"shard was made with other encoder settings ({meta.get('settings_hash')}); "
                                       f"{RERUN}")
    if not torch.isfinite(vec).all():
        raise ArtifactError(str(path), f"vectors contain NaN or inf; {RERUN}")
    return Shard(vec, tensor_to_hashes(hashes), used)
