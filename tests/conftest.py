"""Shared fixtures: small real-data slices written by the tests (shared data is read, never copied into the repo).

Real data comes from `../shared/datasets` beside the repo (MOLAR_SHARED_DATASETS overrides that path; point it at a
missing directory to test as a clean clone does). Where ML-100K is absent there, it is taken from the recbole wheel
on the package index (`molar_core.data.acquire`, GroupLens is never contacted), checked against known SHA-256
digests and cached across runs under MOLAR_TEST_CACHE (default: ~/.cache/molar-tests). The posters exist only in
the shared copy: tests that need them skip without it (`needs_posters`), the others run text-only. Without
network, the ML-100K tests skip naming what was tried; with MOLAR_CI set (.ci/run) they fail instead.

Tests marked `gpu` skip where torch sees no CUDA device; MOLAR_REQUIRE_GPU=1 (set it on a GPU machine) makes a
missing device an error instead of a skip.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import polars as pl
import pytest

SHARED = Path(os.environ.get("MOLAR_SHARED_DATASETS") or Path(__file__).resolve().parents[2] / "shared" / "datasets")
ML100K = SHARED / "ml-100k"
ML100K_POSTERS = ML100K / "posters"
AMAZON_SCI = SHARED / "amazon-scientific"
IN_CI = os.environ.get("MOLAR_CI", "") not in ("", "0")

ML100K_PYPI_SPEC = "recbole==1.2.1"  # ships recbole/dataset_example/ml-100k, byte-identical to the shared copy
ML100K_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}


def pytest_collection_modifyitems(config, items):
    """Skip the `gpu` tests without a CUDA device (an error under MOLAR_REQUIRE_GPU)."""
    marked = [item for item in items if item.get_closest_marker("gpu")]
    if not marked:
        return
    import torch

    if torch.cuda.is_available():
        return
    if os.environ.get("MOLAR_REQUIRE_GPU", "") not in ("", "0"):
        raise pytest.UsageError(f"MOLAR_REQUIRE_GPU is set but torch sees no CUDA device ({len(marked)} gpu tests)")
    for item in marked:
        item.add_marker(pytest.mark.skip(reason="needs a CUDA device (gpu marker)"))


def data_cache_dir() -> Path:
    """Where downloaded test data is kept between runs (MOLAR_TEST_CACHE, else $XDG_CACHE_HOME/molar-tests)."""
    if os.environ.get("MOLAR_TEST_CACHE"):
        return Path(os.environ["MOLAR_TEST_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "molar-tests"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@functools.cache
def _acquire_ml100k() -> tuple[Path | None, str]:
    """(directory with ml-100k.inter/.item in RecBole atomic layout, "") or (None, why not); once per session."""
    from molar_core.data.acquire import acquire_ml100k
    from molar_core.errors import MolarError

    cache = data_cache_dir() / "ml-100k"
    try:
        got = acquire_ml100k(cache, urls=[], pypi_spec=ML100K_PYPI_SPEC)  # the package index only, never GroupLens
    except (MolarError, OSError) as err:  # OSError: an unwritable cache directory
        return None, f"{ML100K} absent; fetching ML-100K from the {ML100K_PYPI_SPEC} wheel into {cache} failed: {err}"
    if got.layout != "recbole_atomic":  # a GroupLens copy cached by someone else: not the files the tests read
        return None, f"{ML100K} absent; {got.path} holds ML-100K in the {got.layout} layout, not RecBole atomic"
    wrong = [name for name, digest in ML100K_SHA256.items() if _sha256(got.path / name) != digest]
    if wrong:
        return None, f"{ML100K} absent; {got.source} has unexpected contents ({', '.join(wrong)}: SHA-256 differs)"
    return got.path, ""


def ml100k_dir() -> Path:
    """ML-100K's ml-100k.inter and ml-100k.item: the shared copy, else the verified cache of the recbole wheel's.

    Skips (fails under MOLAR_CI) naming what was tried when neither is available.
    """
    if (ML100K / "ml-100k.inter").exists():
        return ML100K
    path, why = _acquire_ml100k()
    if path is None:
        hint = " (or set MOLAR_SHARED_DATASETS to a directory holding ml-100k/)"
        if IN_CI:
            pytest.fail(f"{why}{hint}\nMOLAR_CI is set: CI must reach the package index", pytrace=False)
        pytest.skip(why + hint)
    return path


def needs_posters() -> Path:
    """The ML-100K posters directory, or skip: they exist only in ../shared/datasets (not on the package index)."""
    if not ML100K_POSTERS.is_dir():
        pytest.skip(f"needs the ML-100K posters in {ML100K_POSTERS} (only in ../shared/datasets; not on PyPI)")
    return ML100K_POSTERS


def poster_images() -> dict:
    """prepare.images for ML-100K: the shared posters where present, else none (items are then text-only)."""
    return {"dir": str(ML100K_POSTERS)} if ML100K_POSTERS.is_dir() else {}


def write_ml100k_slice(target: Path, users: int) -> Path:
    """The first `users` users of ML-100K (by id) in RecBole atomic layout."""
    source = ml100k_dir()
    target.mkdir(parents=True, exist_ok=True)
    inter = pl.read_csv(source / "ml-100k.inter", separator="\t", infer_schema=False)
    keep = inter.filter(pl.col("user_id:token").cast(pl.Int64) <= users)
    keep.write_csv(target / "ml-small.inter", separator="\t")
    (target / "ml-small.item").write_bytes((source / "ml-100k.item").read_bytes())
    return target


@pytest.fixture(scope="session")
def ml100k() -> Path:
    """The full ML-100K in RecBole atomic layout (ml-100k.inter, ml-100k.item), without posters."""
    return ml100k_dir()


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on 2 shared cores: one torch thread is ~10-40x faster than two (no OpenMP contention)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def ml_small(tmp_path_factory) -> Path:
    return write_ml100k_slice(tmp_path_factory.mktemp("data") / "ml-small", users=120)


def small_params(data_dir, models=("sasrec",), **train):
    """The real params shrunk to CPU size for a 120-user slice (posters from the shared copy, where present)."""
    from pipeline.params import parse_params

    return parse_params({
        "prepare": {"source": "recbole_atomic", "path": str(data_dir), "images": poster_images()},
        "train_id": {"max_epochs": 3, "dim": 16, "max_len": 20, "batch_size": 64, **train},
        "train": {"max_epochs": 2, "dim": 16, "max_len": 20, "batch_size": 64, "adapter_hidden": 32},
        "train_variants": {"content": {"align_alpha": 0.0}, "molar": {"align_alpha": 0.5}},
        "index": {"models": list(models)}, "evaluate": {"models": list(models)},
    })


@pytest.fixture(scope="session")
def small_workspace(ml_small, tmp_path_factory) -> Path:
    """A finished pipeline (prepare .. evaluate, models sasrec, content, molar) on the 120-user slice."""
    import torch

    from stages import embed, evaluate, index, prepare, train, train_id

    root = tmp_path_factory.mktemp("workspace")
    p = small_params(ml_small, models=("sasrec", "content", "molar"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        prepare.run(p.prepare, root)
        train_id.run(p.train_id, p.protocol, root)
        embed.run(p.embed, root)
        for name in ("content", "molar"):
            train.run(name, p.train_variant(name), p.protocol, root)
        index.run(p.index, root)
        evaluate.run(p.evaluate, p.protocol, root)
    finally:
        torch.set_num_threads(n)
    return root
