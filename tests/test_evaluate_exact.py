"""The evaluate stage ranks exactly, whatever index serves recommendations: an approximate FAISS index (one IVF list
probed of 16) changes neither metrics.json nor the per-user ranks, and evaluate runs without any index."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
import torch

from molar_core.index import load_index, recall_vs_exact
from molar_core.ranking import target_ranks
from molar_core.vectors import load_item_vectors, load_user_vectors
from pipeline.params import IndexParams
from stages import evaluate, index, prepare, train_id
from tests.conftest import small_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _evaluate(p, root) -> tuple[dict, pl.DataFrame]:
    evaluate.run(p.evaluate, p.protocol, root)
    metrics = json.loads((root / "metrics/metrics.json").read_text())
    metrics.pop("runtime")
    return metrics, pl.read_parquet(root / "metrics/per_user.parquet")


def test_metrics_do_not_depend_on_the_serving_index(ml_small, tmp_path):
    p = small_params(ml_small, max_epochs=1)
    stats = prepare.run(p.prepare, tmp_path)
    train_id.run(p.train_id, p.protocol, tmp_path)
    runs = {}
    for factory, settings in (("Flat", {}), ("IVF16,Flat", {"nprobe": 1})):
        index.run(IndexParams.model_validate({**p.index.model_dump(), "factory": factory, **settings}), tmp_path)
        runs[factory] = _evaluate(p, tmp_path)

    items = load_item_vectors(tmp_path / "artifacts/sasrec/item_vectors.safetensors", stats["items"])
    users = load_user_vectors(tmp_path / "artifacts/sasrec/user_vectors.safetensors", "test")
    ivf = load_index(tmp_path / "artifacts/index/sasrec.faiss", use_gpu="never")
    assert recall_vs_exact(ivf, items, users, 50) < 0.9  # the serving index really misses exact neighbours

    (flat_m, flat_rows), (ivf_m, ivf_rows) = runs["Flat"], runs["IVF16,Flat"]
    assert ivf_m == flat_m
    assert ivf_rows["rank"].to_list() == flat_rows["rank"].to_list() and ivf_rows["rank"].null_count() == 0
    assert "exact" in flat_m["protocol"]["ranking"] and "pessimistic" in flat_m["protocol"]["ranking"]

    # the ranks are target_ranks' (what validation uses in training), history masked
    test = pl.read_parquet(tmp_path / "data/prepared/test.parquet")
    ref = target_ranks(torch.from_numpy(users), torch.from_numpy(items), test["history"].to_list(),
                       torch.tensor(test["target"].to_list())).numpy()
    got = ivf_rows.filter((pl.col("model") == "sasrec") & (pl.col("split") == "test"))["rank"].to_numpy()
    np.testing.assert_array_equal(got, ref)

    shutil.rmtree(tmp_path / "artifacts/index")  # the index serves `molar recommend`; evaluate does not read it
    assert _evaluate(p, tmp_path)[0] == flat_m
