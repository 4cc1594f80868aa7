"""Atomic writes and provenance: a killed run never leaves a half-written artifact behind.

Every writer goes through a temp file in the target's directory and `os.replace`, so readers see the old
file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from molar_core.errors import OutputError

if TYPE_CHECKING:
    import polars as pl


def _version(package: str) -> str | None:
    """A package's installed version without importing it (None where it is absent)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None

# the storage refused the write (full, quota, read-only, permissions): reported as OutputError naming the file
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG}


def _remove_leftovers(path: Path) -> None:
    """Temp siblings of `path` left by a killed writer (one writer per path: a new write owns them)."""
    for stale in [*path.parent.glob(f".{glob.escape(path.name)}.*.tmp"),
                  *path.parent.glob(f".{glob.escape(path.name)}.old-*")]:
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        raise OutputError(str(path), err) from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n").encode())


def write_parquet_atomic(path: str | Path, df: "pl.DataFrame") -> None:
    with atomic_path(path) as tmp:
        df.write_parquet(tmp, statistics=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a whole output directory in a temp sibling, then swap it in; the old one survives any failure."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        yield tmp
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old is not None:  # put the previous version back
                os.replace(old, path)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:
            raise
        raise OutputError(str(path), err) from None
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one, else the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def runtime_info(seed: int | None = None) -> dict:
    """Versions of what produced an artifact, recorded in its metadata for reproducibility (FAISS is read from
    the package metadata, so stages that do not search run where it is not installed)."""
    import torch

    import molar_core

    info = {
        "molar": molar_core.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "polars": _version("polars"),
        "faiss": _version("faiss-cpu") or _version("faiss-gpu") or _version("faiss"),
    }
    if seed is not None:
        info["seed"] = seed
    return info


def safetensors_metadata(meta: dict) -> dict[str, str]:
    """safetensors stores metadata in a hash map whose key order changes from run to run; one key holding
    canonical JSON keeps a file byte-identical across identical runs."""
    return {"molar": json.dumps(meta, sort_keys=True)}


def parse_safetensors_metadata(raw: dict | None) -> dict:
    """The dict written by safetensors_metadata (plain key/value metadata of older files is returned as is)."""
    raw = raw or {}
    return json.loads(raw["molar"]) if "molar" in raw else dict(raw)
