"""`refit: true`: after early stopping, a fresh model from the same seed trains for the best epoch count on every
user's training items plus the validation item, and that model is what the stage saves."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from molar_core.data.sequences import training_windows
from molar_core.models.sasrec import SASRec, SASRecConfig, load_sasrec, sasrec_loss
from molar_core.training import FitConfig, fit, seed_everything
from molar_core.vectors import load_tensors
from pipeline.readers import read_prepared, read_stats
from stages import evaluate, index, train, train_id
from stages.common import training_sequences
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


def test_refit_saves_a_model_trained_on_validation_items_for_the_best_epoch_count(refit_workspace, ml_small,
                                                                                 monkeypatch):
    root = refit_workspace
    p = small_params(ml_small, models=("sasrec",), max_epochs=4, patience=100, refit=True)
    torch.set_num_threads(1)
    slow = 1.0  # each validation sleeps this long (longer than the refit's four epochs take): only the early-stopped
    # run validates, so a refit time that held the four validations would reach 4 * slow
    ranking_metrics = train_id.ranking_metrics
    monkeypatch.setattr(train_id, "ranking_metrics", lambda *a: (time.sleep(slow), ranking_metrics(*a))[1])
    t0 = time.perf_counter()
    config = train_id.run(p.train_id, p.protocol, root)
    wall = time.perf_counter() - t0
    best = config["best_epoch"]
    test = read_prepared(root, "test")
    windows = training_sequences(test["history"].to_list(), p.train_id)  # the cut train_id's params ask for
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
    # the metrics file reports the refit's own time (as config.json records it), apart from the early-stopped run's
    timing = json.loads((root / "metrics/train_id.json").read_text())
    assert timing["refit_seconds"] == config["refit"]["train_seconds"]
    assert timing["train_seconds"] == round(config["train_seconds"], 1)
    assert timing["refit_seconds"] + timing["train_seconds"] <= wall + 0.1  # both runs happened inside the call
    assert timing["train_seconds"] >= 4 * slow  # the early-stopped run's time holds its four validations
    assert timing["refit_seconds"] < 4 * slow  # and the refit's does not

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


def test_molar_validates_against_the_early_stopped_sasrec_and_refits_against_the_refit_one(
        refit_workspace, ml_small, monkeypatch, one_torch_thread):
    """After a SASRec refit (trained on the validation items too), the Molar run that early-stops on those items
    aligns to the early-stopped SASRec (early_stopped.safetensors); its own refit, which does not validate,
    aligns to the refit one (model.safetensors)."""
    root = refit_workspace
    p = small_params(ml_small, models=("sasrec",), refit=True)
    sasrec = train_id.run(p.train_id, p.protocol, root)
    assert "early_stopped.safetensors" in sasrec["files"]
    early = load_tensors(root / "artifacts/sasrec/early_stopped.safetensors")
    refit_sasrec = load_tensors(root / "artifacts/sasrec/model.safetensors")
    assert early.keys() == refit_sasrec.keys() and any(not torch.equal(early[k], refit_sasrec[k]) for k in early)
    for weights, ref in (("early_stopped", early), ("model", refit_sasrec)):
        loaded = load_sasrec(root / "artifacts/sasrec", weights=weights).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in ref.items())

    validated, refit_starts = [], []
    real_fit, real_refit = train.fit, train.refit

    def spy_fit(model, seqs, loss_fn, validate, *args, **kwargs):
        def spied():
            validated.append({k: v.clone() for k, v in model.id_model.state_dict().items()})
            return validate()
        return real_fit(model, seqs, loss_fn, spied, *args, **kwargs)

    def spy_refit(build, *args):
        def spied(g):
            model, loss_fn = build(g)
            refit_starts.append({k: v.clone() for k, v in model.id_model.state_dict().items()})
            return model, loss_fn
        return real_refit(spied, *args)

    monkeypatch.setattr(train, "fit", spy_fit)
    monkeypatch.setattr(train, "refit", spy_refit)
    variant = p.train_variant("molar").model_copy(update={"refit": True})
    assert variant.align_alpha > 0
    config = train.run("molar", variant, p.protocol, root)
    assert validated and refit_starts
    for state in validated:
        assert all(torch.equal(state[k], v) for k, v in early.items())
    assert all(torch.equal(refit_starts[0][k], v) for k, v in refit_sasrec.items())
    assert config["id_model_weights"] == {"early_stopped_run": "early_stopped.safetensors",
                                          "refit": "model.safetensors"}


def test_without_a_sasrec_refit_the_early_stopped_weights_are_the_saved_model(small_workspace):
    directory = small_workspace / "artifacts/sasrec"
    assert not (directory / "early_stopped.safetensors").exists()
    early, saved = load_sasrec(directory, weights="early_stopped"), load_sasrec(directory)
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in early.state_dict().items())
    with pytest.raises(ValueError, match="weights must be one of model, early_stopped"):
        load_sasrec(directory, weights="best")
