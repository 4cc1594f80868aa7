"""Getting ML-100K for a user who configured no local copy: a verified cache, else GroupLens, else the recbole
wheel from the package index (which ships ML-100K as example data, and is reachable where GroupLens is not).

Whatever is fetched is counted with the adapters before it enters the cache, and moved there with a rename,
so the cache never holds a partial or wrong copy.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from molar_core.data.movielens import load_movielens
from molar_core.data.raw import RawDataset
from molar_core.data.recbole_atomic import load_recbole_atomic
from molar_core.errors import MolarError

log = logging.getLogger(__name__)

ML100K_URLS = ["https://files.grouplens.org/datasets/movielens/ml-100k.zip"]
ML100K_ROWS = 100_000
ML100K_ITEMS = 1_682
GROUPLENS_MEMBERS = {"ml-100k/u.data": "u.data", "ml-100k/u.item": "u.item"}
WHEEL_MEMBERS = {
    "recbole/dataset_example/ml-100k/ml-100k.inter": "ml-100k.inter",
    "recbole/dataset_example/ml-100k/ml-100k.item": "ml-100k.item",
}
SOURCE_NOTE = "SOURCE"  # file in each cached copy saying where it came from

Layout = Literal["movielens", "recbole_atomic"]


@dataclass(frozen=True)
class AcquiredDataset:
    """A verified local copy: `path` is the directory the adapter for `layout` reads."""

    path: Path
    layout: Layout
    source: str

    def load(self) -> RawDataset:
        """Parse the copy with the adapter of its layout."""
        return _load(self.path, self.layout)


def acquire_ml100k(
    cache_dir: str | Path,
    urls: list[str],
    pypi_spec: str | None = "recbole==1.2.1",
    index_url: str | None = None,
    timeout: float = 30,
    expected_rows: int = ML100K_ROWS,
    expected_items: int = ML100K_ITEMS,
) -> AcquiredDataset:
    """Return a verified ML-100K: cached copy, else the first URL that works, else the recbole wheel via pip.

    Raises MolarError listing every source tried and why it failed when none gives a verified copy.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    targets: dict[Layout, Path] = {
        "movielens": cache_dir / "grouplens",
        "recbole_atomic": cache_dir / "recbole" / "ml-100k",
    }
    failures: list[str] = []

    for layout, target in targets.items():
        if target.exists():
            try:
                _verify(target, layout, expected_rows, expected_items)
            except MolarError as err:
                log.warning("ignoring the cached ML-100K in %s: %s", target, err)
                failures.append(f"cache {target}: {err} (ignored)")
                continue
            note = target / SOURCE_NOTE
            origin = note.read_text(encoding="utf-8").strip() if note.exists() else "unknown origin"
            return AcquiredDataset(target, layout, f"cache {target} (from {origin})")

    for url in urls:
        try:
            return _install(
                lambda tmp, url=url: _download_zip(url, tmp, timeout),
                GROUPLENS_MEMBERS, "movielens", targets["movielens"], url, expected_rows, expected_items,
            )  # fmt: skip
        except MolarError as err:
            log.warning("ML-100K from %s failed: %s", url, err)
            failures.append(f"{url}: {err}")

    if pypi_spec:  # None or "": the package-index fallback is switched off (prepare.download.pypi_fallback)
        source = f"pypi wheel {pypi_spec}" + (f" from {index_url}" if index_url else "")
        try:
            return _install(
                lambda tmp: _pip_download(pypi_spec, index_url, tmp, timeout),
                WHEEL_MEMBERS, "recbole_atomic", targets["recbole_atomic"], source, expected_rows, expected_items,
            )  # fmt: skip
        except MolarError as err:
            failures.append(f"{source}: {err}")

    listing = "\n".join(f"  - {f}" for f in failures)
    raise MolarError(
        f"could not acquire ML-100K; every source failed:\n{listing}\n"
        "Download it by hand (or point the dataset path to a local copy) and run again."
    )


def _install(
    fetch: Callable[[Path], Path],
    members: dict[str, str],
    layout: Layout,
    target: Path,
    source: str,
    expected_rows: int,
    expected_items: int,
) -> AcquiredDataset:
    """Fetch an archive, extract `members` into a temp dir beside `target`, verify, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}-") as tmp:
        work = Path(tmp)
        archive = fetch(work)
        staged = work / "staged"
        staged.mkdir()
        _extract(archive, members, staged)
        _verify(staged, layout, expected_rows, expected_items)
        (staged / SOURCE_NOTE).write_text(source + "\n", encoding="utf-8")
        _replace_dir(staged, target)
    log.info("ML-100K from %s verified into %s", source, target)
    return AcquiredDataset(target, layout, source)


def _download_zip(url: str, dest: Path, timeout: float) -> Path:
    """Download `url` to a file in `dest`; unreachable hosts and HTTP errors become MolarError."""
    path = dest / "download.zip"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as out:
            shutil.copyfileobj(response, out)
    except urllib.error.HTTPError as err:
        raise MolarError(f"HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise MolarError(f"unreachable ({err.reason})") from None
    except (OSError, ValueError) as err:  # timeouts, resets, malformed URLs
        raise MolarError(f"download failed ({type(err).__name__}: {err})") from None
    return path


def _pip_download(spec: str, index_url: str | None, dest: Path, timeout: float) -> Path:
    """`pip download` the wheel of `spec` (no deps, binary only) into `dest`; return the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), spec]
    cmd += ["--timeout", str(timeout), "--disable-pip-version-check", "--no-input"]
    if index_url:
        cmd += ["--index-url", index_url]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=max(120, 10 * timeout), check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise MolarError(f"pip download failed ({type(err).__name__}: {err})") from None
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr or done.stdout).strip().splitlines() if ln.strip()]
        raise MolarError(f"pip download exited {done.returncode}: {' | '.join(lines[-3:]) or 'no output'}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise MolarError("pip download produced no wheel")
    return wheels[0]


def _extract(archive: Path, members: dict[str, str], dest: Path) -> None:
    """Copy the named archive members to `dest` under their short names (only these: no path from the zip is used)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            for member, short in members.items():
                if member not in names:
                    raise MolarError(f"archive {archive.name} lacks {member}")
                with zf.open(member) as src, open(dest / short, "wb") as out:
                    shutil.copyfileobj(src, out)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as err:
        raise MolarError(f"not a valid zip archive ({err})") from None


def _load(path: Path, layout: Layout) -> RawDataset:
    return load_movielens(path) if layout == "movielens" else load_recbole_atomic(path, name="ml-100k")


def _verify(path: Path, layout: Layout, expected_rows: int, expected_items: int) -> None:
    """Parse the copy with its adapter and check its size is ML-100K's; MolarError (incl. DataError) otherwise."""
    raw = _load(path, layout)
    rows = raw.interactions.height
    items = raw.items.height if raw.items is not None else 0
    if rows != expected_rows or items != expected_items:
        raise MolarError(
            f"wrong size: {rows:,} interaction rows and {items:,} items, "
            f"expected {expected_rows:,} and {expected_items:,}"
        )


def _replace_dir(staged: Path, target: Path) -> None:
    """Move `staged` to `target` by rename; an older (unverifiable) copy is moved aside first, then deleted."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        os.rename(target, old)
    try:
        os.rename(staged, target)
    except OSError:
        if not target.exists():
            raise
        log.info("another process installed %s meanwhile; keeping that copy", target)  # it verified its copy too
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
