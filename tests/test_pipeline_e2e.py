"""The real pipeline (prepare -> train_id -> index -> evaluate) on a slice of ML-100K, shrunk to CPU size.

The metrics the evaluate stage writes (exact torch ranking) are recomputed here by a numpy brute force from the
saved vectors, so the whole chain is checked against an independent reference.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import torch
from safetensors import safe_open

from molar_core.io import parse_safetensors_metadata
from molar_core.metrics import mean_metrics, per_user_metrics
from molar_core.ranking import target_ranks
from molar_core.vectors import load_item_vectors, load_user_vectors
from pipeline.params import parse_params
from stages import evaluate, index, prepare, train_id
from tests.conftest import small_params


def test_pipeline_end_to_end(ml_small, tmp_path):
    p = small_params(ml_small)
    stats = prepare.run(p.prepare, tmp_path)
    assert stats["users"] == 120 and stats["rows"]["input"] == stats["rows"]["kept"] + sum(stats["rows"]["dropped"].values())
    cfg = train_id.run(p.train_id, p.protocol, tmp_path)
    # the kept epoch is the first best one of the recorded validation curve
    valid_curve = pl.read_csv(tmp_path / "plots/train_id/curve.csv")[f"valid_{p.protocol.early_stop_metric}"]
    assert cfg["best_epoch"] == int(np.argmax(valid_curve.to_numpy())) + 1
    index.run(p.index, tmp_path)
    metrics = evaluate.run(p.evaluate, p.protocol, tmp_path)

    # independent reference: numpy brute force over the saved vectors (history masked, ties ranked pessimistically)
    items = load_item_vectors(tmp_path / "artifacts/sasrec/item_vectors.safetensors", stats["items"]).astype(np.float64)
    for split in ("valid", "test"):
        table = pl.read_parquet(tmp_path / f"data/prepared/{split}.parquet")
        users = load_user_vectors(tmp_path / "artifacts/sasrec/user_vectors.safetensors", split).astype(np.float64)
        ranks = []
        for u, history, target in zip(users, table["history"].to_list(), table["target"].to_list()):
            scores = items @ u
            scores[np.asarray(history, dtype=np.int64) - 1] = -np.inf
            ranks.append(int((scores >= scores[target - 1]).sum()) - 1)
        ref = mean_metrics(per_user_metrics(np.asarray(ranks), [10, 20, 50]))
        for k, v in ref.items():
            assert abs(metrics["sasrec"][split][k] - v) < 1e-6, (split, k)
    # the validation metric of the best epoch equals the evaluate stage's valid NDCG@10 (same protocol)
    assert abs(cfg["valid"]["ndcg@10"] - metrics["sasrec"]["valid"]["ndcg@10"]) < 1e-6

    # artifacts reload and are self-describing
    saved = json.loads((tmp_path / "metrics/metrics.json").read_text())
    assert saved["protocol"]["masking"] == "history" and saved["protocol"]["num_items"] == stats["items"]
    per_user = pl.read_parquet(tmp_path / "metrics/per_user.parquet")
    assert per_user.height == 2 * stats["users"]
    assert np.isclose(per_user.filter(pl.col("split") == "test")["ndcg@10"].mean(), saved["sasrec"]["test"]["ndcg@10"])
    curve = pl.read_csv(tmp_path / "plots/train_id/curve.csv")
    assert curve["epoch"].to_list() == [1, 2, 3] and "valid_ndcg@10" in curve.columns
    conf = json.loads((tmp_path / "artifacts/sasrec/config.json").read_text())
    assert conf["runtime"]["seed"] == 0 and conf["config"]["num_items"] == stats["items"]


def test_content_and_molar_variants_end_to_end(small_workspace):
    """Both variants train and evaluate; alignment acts in molar only (its loss is logged, finite and positive, every epoch)."""
    root = small_workspace
    cfgs = {name: json.loads((root / f"artifacts/{name}/config.json").read_text()) for name in ("content", "molar")}
    assert cfgs["content"]["id_model"] is None and cfgs["molar"]["id_model"] == "artifacts/sasrec"
    m = json.loads((root / "metrics/metrics.json").read_text())
    num_items = json.loads((root / "data/prepared/stats.json").read_text())["items"]
    for name in ("content", "molar"):
        # the evaluate stage's valid metric equals the training loop's best validation (cosine scoring saved)
        assert abs(cfgs[name]["valid"]["ndcg@10"] - m[name]["valid"]["ndcg@10"]) < 1e-6
        assert "test_vs_sasrec" in m[name]
        vecs = load_item_vectors(root / f"artifacts/{name}/item_vectors.safetensors", num_items)
        assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)

    curves = {name: pl.read_csv(root / f"plots/train/{name}.csv") for name in ("content", "molar")}
    assert "align" not in curves["content"].columns
    align = curves["molar"]["align"].to_numpy()
    assert len(align) == cfgs["molar"]["epochs_run"] and np.isfinite(align).all() and (align > 0).all()


def test_next_user_vectors_encode_the_whole_sequence(small_workspace):
    """`next` (what recommend ranks from) is the reloaded SASRec's vector after history + test item."""
    from molar_core.data.sequences import pad_left
    from molar_core.models.sasrec import load_sasrec

    root = small_workspace
    model = load_sasrec(root / "artifacts/sasrec").eval()
    test = pl.read_parquet(root / "data/prepared/test.parquet")
    full = [h + [t] for h, t in zip(test["history"].to_list(), test["target"].to_list())]
    with torch.no_grad():
        ref = model.user_vectors(pad_left(full, model.cfg.max_len))
    saved = torch.from_numpy(load_user_vectors(root / "artifacts/sasrec/user_vectors.safetensors", "next"))
    assert torch.allclose(saved, ref, atol=1e-5)
    before = torch.from_numpy(load_user_vectors(root / "artifacts/sasrec/user_vectors.safetensors", "test"))
    assert not torch.allclose(saved, before)


def test_recbole_protocol_does_not_mask(ml_small, tmp_path):
    p = small_params(ml_small, max_epochs=1)
    p = parse_params({**p.model_dump(), "protocol": {"masking": "none"}})
    prepare.run(p.prepare, tmp_path)
    train_id.run(p.train_id, p.protocol, tmp_path)
    index.run(p.index, tmp_path)
    m = evaluate.run(p.evaluate, p.protocol, tmp_path)
    assert m["protocol"]["masking"] == "none"
    items = torch.from_numpy(load_item_vectors(tmp_path / "artifacts/sasrec/item_vectors.safetensors"))
    table = pl.read_parquet(tmp_path / "data/prepared/test.parquet")
    users = torch.from_numpy(load_user_vectors(tmp_path / "artifacts/sasrec/user_vectors.safetensors", "test"))
    ranks = target_ranks(users, items, None, torch.tensor(table["target"].to_list()))
    assert abs(mean_metrics(per_user_metrics(ranks.numpy(), [10]))["ndcg@10"] - m["sasrec"]["test"]["ndcg@10"]) < 1e-9


def test_every_artifact_records_library_versions_and_the_seed(small_workspace):
    root = small_workspace
    records = {
        "data/prepared/stats.json": json.loads((root / "data/prepared/stats.json").read_text())["runtime"],
        "artifacts/embeddings/manifest.json": json.loads((root / "artifacts/embeddings/manifest.json").read_text())["runtime"],
        "artifacts/index/sasrec.json": json.loads((root / "artifacts/index/sasrec.json").read_text())["runtime"],
        "metrics/metrics.json": json.loads((root / "metrics/metrics.json").read_text())["runtime"],
    }
    for model in ("sasrec", "content", "molar"):
        records[f"artifacts/{model}/config.json"] = json.loads((root / f"artifacts/{model}/config.json").read_text())["runtime"]
        for name in ("model", "item_vectors", "user_vectors"):
            with safe_open(str(root / f"artifacts/{model}/{name}.safetensors"), "pt") as f:
                runtime = parse_safetensors_metadata(f.metadata())["runtime"]
            assert runtime["seed"] == 0, (model, name)
            records[f"artifacts/{model}/{name}.safetensors"] = runtime
    for path, runtime in records.items():
        assert runtime["torch"] == torch.__version__ and runtime["molar"] and runtime["faiss"], path
