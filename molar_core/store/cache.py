"""The writable embedding cache: verify what is on disk, say what is missing, append shards as they fill.

Crash safety: a shard is written (temp + fsync + rename) before the manifest that lists it, so a SIGKILL at any
moment loses at most the shard being filled; files the manifest does not list are leftovers and are removed
on the next open. Existing shards are never rewritten. Settings that differ from the manifest's start a fresh
cache. One writer at a time: the directory is flock-ed while open.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save as save_bytes

from molar_core.encoders.base import settings_hash as hash_settings
from molar_core.errors import ArtifactError
from molar_core.io import write_bytes_atomic
from molar_core.store.manifest import CATALOGUE, Manifest, read_manifest, write_manifest
from molar_core.store.shards import (
    HASH_BYTES,
    ShardEntry,
    hashes_to_tensor,
    read_shard,
    shard_index,
    shard_name,
    write_shard,
)


class EmbeddingCache:
    """Use as a context manager: `with EmbeddingCache(dir, settings, shard_size) as cache: ...`."""

    def __init__(self, root: str | Path, settings: dict, shard_size: int, runtime: dict | None = None,
                 log: Callable[[str], None] | None = None, after_flush: Callable[[ShardEntry], None] | None = None):
        if shard_size < 1:
            raise ValueError("shard_size must be >= 1")
        self.root = Path(root)
        self.settings = settings
        self.hash = hash_settings(settings)
        self.dim = int(settings["dim"])
        self.shard_size = shard_size
        self.runtime = runtime
        self.log = log or (lambda msg: None)
        self.after_flush = after_flush
        self.known: dict[str, str] = {}  # content hash -> shard file
        self.dropped: list[str] = []  # shards dropped as corrupt this run
        self.fresh_reason: str | None = None  # why a new cache was started (None: reused)
        self.written: list[str] = []
        self._buf_vec: list[torch.Tensor] = []
        self._buf_hash: list[str] = []
        self._buf_used: list[torch.Tensor] = []
        self._lock_fd: int | None = None

    # -- open / close -------------------------------------------------------------------------------------------
    def __enter__(self) -> EmbeddingCache:
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise ArtifactError(str(self.root), "another embed run is writing this cache (directory is locked)")
        self._open()
        return self

    def __exit__(self, *exc) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _open(self) -> None:
        try:
            old = read_manifest(self.root)
        except ArtifactError as err:
            self.log(f"{err}: starting a fresh cache")
            old = None
            self.fresh_reason = "unreadable manifest"
        if old is not None and old.settings_hash != self.hash:
            changed = sorted(k for k in set(old.settings) | set(self.settings)
                             if old.settings.get(k) != self.settings.get(k))
            self.fresh_reason = f"encoder settings changed ({', '.join(changed) or 'format'})"
            self.log(f"{self.fresh_reason}: settings_hash {old.settings_hash[:12]} -> {self.hash[:12]}; "
                     f"starting a fresh cache (the {len(old.shards)} old shards are removed)")
            old = None
        elif old is None and self.fresh_reason is None:
            self.fresh_reason = "no cache yet"
        self.manifest = old or Manifest(self.settings, self.hash, runtime=self.runtime)
        if old is None:  # write the new (empty) manifest first: old shards become unlisted leftovers
            write_manifest(self.root, self.manifest)
        self._remove_unlisted()
        good = []
        for entry in self.manifest.shards:
            try:
                shard = read_shard(self.root / entry.file, entry, self.dim, self.hash)
            except ArtifactError as err:
                self.log(f"dropping a bad shard, its items will be recomputed: {err}")
                self.dropped.append(entry.file)
                continue
            good.append(entry)
            for h in shard.hashes:
                self.known.setdefault(h, entry.file)
        if self.dropped:
            self.manifest.shards = good
            write_manifest(self.root, self.manifest)
            for name in self.dropped:
                (self.root / name).unlink(missing_ok=True)

    def _remove_unlisted(self) -> None:
        """Shards the manifest does not list and temp files are what a killed run left: remove them."""
        listed = {e.file for e in self.manifest.shards}
        keep_catalogue = self.manifest.catalogue is not None
        for p in self.root.iterdir():
            name = p.name
            stray_shard = shard_index(name) is not None and name not in listed
            stray_tmp = name.startswith(".") and name.endswith(".tmp") and p.is_file()
            stray_catalogue = name == CATALOGUE and not keep_catalogue
            if p.is_file() and (stray_shard or stray_tmp or stray_catalogue):
                p.unlink(missing_ok=True)

    # -- writing ------------------------------------------------------------------------------------------------
    def missing(self, hashes: list[str]) -> list[str]:
        """Unique hashes (first-seen order) that have no vector yet."""
        seen, out = set(), []
        for h in hashes:
            if h not in self.known and h not in seen:
                seen.add(h)
                out.append(h)
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf_hash)

    def add(self, vectors: torch.Tensor, hashes: list[str], image_used: torch.Tensor) -> None:
        """Append rows; full shards are flushed as soon as they fill."""
        if vectors.shape != (len(hashes), self.dim):
            raise ValueError(f"expected ({len(hashes)}, {self.dim}) vectors, got {tuple(vectors.shape)}")
        if not torch.isfinite(vectors).all():
            bad = [hashes[i] for i in (~torch.isfinite(vectors).all(dim=1)).nonzero().flatten().tolist()]
            raise ArtifactError(str(self.root), f"the encoder produced NaN/inf vectors for content hashes {bad[:3]}")
        self._buf_vec.append(vectors.to(torch.float32).cpu())
        self._buf_hash.extend(hashes)
        self._buf_used.append(image_used.to(torch.uint8).cpu())
        while self.buffered >= self.shard_size:
            self._flush(self.shard_size)

    def flush(self) -> None:
        """Write whatever is buffered as a (possibly smaller) last shard."""
        if self.buffered:
            self._flush(self.buffered)

    def _flush(self, n: int) -> None:
        vec, used = torch.cat(self._buf_vec), torch.cat(self._buf_used)
        hashes = self._buf_hash[:n]
        index = max((shard_index(e.file) for e in self.manifest.shards), default=-1) + 1
        entry = write_shard(self.root / shard_name(index), vec[:n], hashes, used[:n], self.hash)
        self.manifest.shards.append(entry)
        write_manifest(self.root, self.manifest)  # only now is the shard part of the cache
        for h in hashes:
            self.known.setdefault(h, entry.file)
        self.written.append(entry.file)
        self._buf_vec, self._buf_used, self._buf_hash = [vec[n:]], [used[n:]], self._buf_hash[n:]
        if self.after_flush is not None:
            self.after_flush(entry)

    def finish(self, item_ids: list[int], hashes: list[str]) -> list[str]:
        """Flush, record the catalogue (item_id -> content hash) and remove shards no current item uses.

        Returns the pruned shard files. Every hash must be cached by now.
        """
        self.flush()
        absent = [i for i, h in zip(item_ids, hashes) if h not in self.known]
        if absent:
            raise ArtifactError(str(self.root), f"{len(absent)} items still have no vector (item_id {absent[:5]})")
        live = {self.known[h] for h in hashes}
        pruned = [e.file for e in self.manifest.shards if e.file not in live]
        self.manifest.shards = [e for e in self.manifest.shards if e.file in live]
        blob = save_bytes({"item_ids": torch.tensor(item_ids, dtype=torch.int64).reshape(-1),
                           "content_hashes": hashes_to_tensor(hashes).reshape(-1, HASH_BYTES)},
                          metadata={"settings_hash": self.hash})
        path = self.root / CATALOGUE
        if not (path.exists() and path.read_bytes() == blob):
            if self.manifest.catalogue is not None:  # unlist the old one before replacing it
                self.manifest.catalogue = None
                write_manifest(self.root, self.manifest)
            write_bytes_atomic(path, blob)
        self.manifest.catalogue = {"file": CATALOGUE, "items": len(item_ids),
                                   "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
        self.manifest.runtime = self.runtime
        write_manifest(self.root, self.manifest)
        for name in pruned:
            (self.root / name).unlink(missing_ok=True)
        return pruned
