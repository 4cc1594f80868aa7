"""Attach an image to each item: a file in a directory keyed by item id, or a path/URL from the item table.

Paths are confined to a configured root and URLs to allowed schemes, files are size-bounded, and an item
without a usable image is kept (text only) and counted by reason.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import polars as pl

from molar_core.errors import DataError
from molar_core.io import write_bytes_atomic


@dataclass
class ImageConfig:
    dir: str | None = None
    pattern: str = "{item_id}.jpg"
    root: str | None = None
    url_cache_dir: str = "data/images"
    url_schemes: list[str] = field(default_factory=lambda: ["http", "https"])
    max_bytes: int = 20_000_000
    timeout: float = 30.0


def _download(url: str, cache_dir: Path, max_bytes: int, timeout: float) -> tuple[Path | None, str | None]:
    """Fetch a URL into the cache (name = hash of the URL); returns (path, None) or (None, reason)."""
    name = hashlib.sha256(url.encode()).hexdigest()[:32] + Path(urlparse(url).path).suffix[:8]
    target = cache_dir / name
    if target.exists():
        return target, None
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (scheme checked by caller)
            data = resp.read(max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as err:
        return None, f"download_failed ({type(err).__name__})"
    if len(data) > max_bytes:
        return None, "too_large"
    if not data:
        return None, "empty_file"
    write_bytes_atomic(target, data)
    return target, None


def attach_images(
    items: pl.DataFrame, cfg: ImageConfig, items_file: str | None, item_rows: list[int] | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Return items with `image_path` (resolved absolute path or null) and a count of missing images by reason.

    items needs columns `item` and `image` (nullable). `item_rows` gives the file row of each item for errors.
    A path from a column that escapes the root is an error (it names the file and row), not a silent skip.
    """
    reasons: Counter[str] = Counter()
    paths: list[str | None] = []
    if cfg.dir is not None:
        root = Path(cfg.dir).resolve()
        if not root.is_dir():
            raise DataError(cfg.dir, "image directory not found (prepare.images.dir)")
        for raw_id in items["item"].to_list():
            try:
                name = cfg.pattern.format(item_id=raw_id)
            except (KeyError, IndexError, ValueError) as err:
                raise DataError(cfg.dir, f"prepare.images.pattern {cfg.pattern!r} is invalid: use {{item_id}} "
                                f"({type(err).__name__}: {err})") from None
            p = (root / name).resolve()
            if not p.is_relative_to(root):
                raise DataError(str(root / name), f"image path of item {raw_id!r} escapes the image root {root}")
            paths.append(_checked(p, cfg.max_bytes, reasons))
    else:
        default_root = Path(items_file).resolve().parent if items_file else Path.cwd()
        root = Path(cfg.root).resolve() if cfg.root else default_root
        cache = Path(cfg.url_cache_dir)
        for i, ref in enumerate(items["image"].to_list()):
            row = item_rows[i] if item_rows else i + 1
            if ref is None or not str(ref).strip():
                reasons["no_image"] += 1
                paths.append(None)
                continue
            ref = str(ref).strip()
            scheme = urlparse(ref).scheme
            if scheme and len(scheme) > 1:  # a URL (a one-letter scheme is a Windows drive)
                if scheme not in cfg.url_schemes:
                    raise DataError(items_file or "items", f"image URL scheme {scheme!r} not allowed "
                                    f"(prepare.images.url_schemes = {cfg.url_schemes})", row=row, column="image")
                got, why = _download(ref, cache, cfg.max_bytes, cfg.timeout)
                if got is None:
                    reasons[why or "download_failed"] += 1
                    paths.append(None)
                else:
                    paths.append(str(got.resolve()))
                continue
            p = (root / ref).resolve()
            if not p.is_relative_to(root):
                raise DataError(items_file or "items", f"image path {ref!r} escapes the image root {root}",
                                row=row, column="image")
            paths.append(_checked(p, cfg.max_bytes, reasons))
    return items.with_columns(pl.Series("image_path", paths, dtype=pl.String)), dict(reasons)


def _checked(p: Path, max_bytes: int, reasons: Counter[str]) -> str | None:
    if not p.is_file():
        reasons["no_image"] += 1
        return None
    size = p.stat().st_size
    if size == 0:
        reasons["empty_file"] += 1
        return None
    if size > max_bytes:
        reasons["too_large"] += 1
        return None
    return str(p)
