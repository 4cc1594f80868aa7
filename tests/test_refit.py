"""`refit: true`: after early stopping, a fresh model from the same seed trains for the best epoch count on every
user's training items plus the validation item, and that model is what the stage saves."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from molar_core.data.sequences import training_windows
from molar_core.models.sasrec import SASRec, SASRecConfig, load_sasrec, sasrec_loss
from molar_core.training import FitConfig, fit, seed_everything
from stages import evaluate, index, train, train_id
from stages.common import read_prepared, read_stats
from tests.conftest import small_params
from tests.test_sasrec import _cyclic_data


def test_fit_without_validation_trains_every_epoch_and_keeps_the_last_state():
    seqs = training_windows(_cyclic_data(users=20), 12)

    def run(validate, patience):
        gen = seed_everything(3)
        m = SASRec(SASRecConfig(num_items=30, max_len=12, dim=16, layers=1, heads=2, dropout=0.1))
        res = fit(m, seqs, lambda b: sasrec_loss(m, b), validate, FitConfig(lr=1e-2, batch_size=8, max_epochs=4,
                                                                              patience=patience), gen)
        return m, res

    rising = iter(range(100))
    ref, ref_res = run(lambda: {"ndcg@10": float(next(rising))}, 100)  # every epoch the best: ends in the last state
    m, res = run(None, 1)  # patience 1 would stop a validated run at once on a flat metric; unvalidated runs all
    assert res.best_epoch == 4 and len(res.curve) == 4 and res.best_metrics == {}
    assert [r["loss"] for r in res.curve] == [r["loss"] for r in ref_res.curve]
    assert not any(k.startswith("valid_") for k in res.curve[0])
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v, rtol=0, atol=0)


@pytest.fixture()
def refit_workspace(small_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(small_workspace, root)
    return root


def test_refit_saves_a_model_trained_on_validation_items_for_the_best_epoch_count(refit_workspace, ml_small):
    root = refit_workspace
    p = small_params(ml_small, models=("sasrec",), max_epochs=4, patience=100, refit=True)
    torch.set_num_threads(1)
    config = train_id.run(p.train_id, p.protocol, root)
    best = config["best_epoch"]
    test = read_prepared(root, "test")
    windows = training_windows(test["history"].to_list(), p.train_id.max_len)
    assert config["refit"]["epochs"] == best and config["refit"]["training_windows"] == len(windows)
    assert len(config["refit"]["loss"]) == best and config["valid"]  # the early-stopped run's validation stays

    # the reference: the same seed, trained directly on training + validation items for `best` epochs
    gen = seed_everything(p.train_id.seed)
    t = p.train_id
    ref = SASRec(SASRecConfig(num_items=read_stats(root)["items"], max_len=t.max_len, dim=t.dim, layers=t.layers,
                              heads=t.heads, dropout=t.dropout, norm=t.norm))
    fit(ref, windows, lambda b: sasrec_loss(ref, b), None,
        FitConfig(lr=t.lr, batch_size=t.batch_size, max_epochs=best), gen)
    saved = load_sasrec(root / "artifacts/sasrec")
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(saved.state_dict()[k], v, rtol=0, atol=0)
    assert json.loads((root / "metrics/train_id.json").read_text())["refit_seconds"] >= 0

    index.run(p.index, root)
    metrics = evaluate.run(p.evaluate, p.protocol, root)
    assert metrics["sasrec"]["refit"]["epochs"] == best
    assert metrics["sasrec"]["refit"]["early_stopped_valid"] == config["valid"]


def test_content_model_refit_differs_from_its_early_stopped_model(refit_workspace, ml_small):
    root = refit_workspace
    p = small_params(ml_small, models=("content",))
    torch.set_num_threads(1)
    plain = train.run("content", p.train_variant("content"), p.protocol, root)
    before = (root / "artifacts/content/item_vectors.safetensors").read_bytes()
    refit_params = p.train_variant("content").model_copy(update={"refit": True})
    config = train.run("content", refit_params, p.protocol, root)
    assert config["refit"]["epochs"] == plain["best_epoch"] and config["valid"] == plain["valid"]
    assert (root / "artifacts/content/item_vectors.safetensors").read_bytes() != before
