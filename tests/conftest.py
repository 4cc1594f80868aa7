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


def small_params(data_dir, models=("sasrec",), **train):
    """The real params shrunk to CPU size for a 120-user slice (posters from the shared copy)."""
    from pipeline.params import parse_params

    return parse_params({
        "prepare": {"source": "recbole_atomic", "path": str(data_dir), "images": {"dir": str(ML100K / "posters")}},
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
