"""Shared fixtures: small real-data slices written by the tests (shared data is read, never copied into the repo)."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
ML100K = SHARED / "ml-100k"
AMAZON_SCI = SHARED / "amazon-scientific"


def write_ml100k_slice(target: Path, users: int) -> Path:
    """The first `users` users of ML-100K (by id) in RecBole atomic layout."""
    if not (ML100K / "ml-100k.inter").exists():
        pytest.skip(f"{ML100K} not present")
    target.mkdir(parents=True, exist_ok=True)
    inter = pl.read_csv(ML100K / "ml-100k.inter", separator="\t", infer_schema=False)
    keep = inter.filter(pl.col("user_id:token").cast(pl.Int64) <= users)
    keep.write_csv(target / "ml-small.inter", separator="\t")
    (target / "ml-small.item").write_bytes((ML100K / "ml-100k.item").read_bytes())
    return target


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
