"""manifest.json of the embedding cache: which encoder settings made it, and which shards (with checksums) hold it.

It is rewritten atomically after every shard flush, so it never lists a shard that is not fully on disk.
Per-item entries are not stored here: each shard carries its rows' content hashes, and the catalogue file
(item_id -> content hash of the last completed run) is enough to rebuild item -> (shard, row).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from molar_core.errors import ArtifactError
from molar_core.io import write_bytes_atomic
from molar_core.store.shards import ShardEntry

FORMAT = "molar-embeddings/1"
MANIFEST = "manifest.json"
CATALOGUE = "items.safetensors"


@dataclass
class Manifest:
    settings: dict
    settings_hash: str
    shards: list[ShardEntry] = field(default_factory=list)
    catalogue: dict | None = None  # {"file", "items", "sha256", "bytes"} of items.safetensors
    runtime: dict | None = None  # library versions that wrote the cache

    @property
    def dim(self) -> int:
        return int(self.settings["dim"])

    @property
    def stored(self) -> int:
        return sum(s.items for s in self.shards)

    def to_json(self) -> dict:
        s = self.settings
        return {
            "format": FORMAT,
            "encoder": s.get("encoder"),
            "model_fingerprint": s.get("model_fingerprint"),
            "backend": s.get("backend"),
            "prompt": s.get("prompt"),
            "pooling": s.get("pooling"),
            "dim": self.dim,
            "dtype": "float32",  # stored dtype; the compute dtype is settings.dtype
            "normalize": s.get("normalize"),
            "settings_hash": self.settings_hash,
            "settings": s,
            "items_stored": self.stored,
            "shards": [e.as_dict() for e in self.shards],
            "catalogue": self.catalogue,
            "runtime": self.runtime,
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n").encode()

    @classmethod
    def from_json(cls, d: dict, path: str) -> Manifest:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ArtifactError(path, f"not a {FORMAT} manifest (format {d.get('format') if isinstance(d, dict) else None!r})")
        try:
            shards = [ShardEntry(str(e["file"]), int(e["items"]), str(e["sha256"]), int(e["bytes"]))
                      for e in d["shards"]]
            return cls(dict(d["settings"]), str(d["settings_hash"]), shards, d.get("catalogue"), d.get("runtime"))
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(path, f"malformed manifest ({type(err).__name__}: {err})") from None


def manifest_path(store: Path) -> Path:
    return Path(store) / MANIFEST


def read_manifest(store: Path) -> Manifest | None:
    """The manifest, None when there is none; an unreadable one raises ArtifactError naming the file."""
    path = manifest_path(store)
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ArtifactError(str(path), f"unreadable manifest ({err})") from None
    return Manifest.from_json(d, str(path))


def write_manifest(store: Path, manifest: Manifest) -> bool:
    """Write atomically; skip when the bytes are unchanged (a no-op run leaves the cache byte-identical)."""
    path = manifest_path(store)
    blob = manifest.to_bytes()
    if path.exists() and path.read_bytes() == blob:
        return False
    write_bytes_atomic(path, blob)
    return True
