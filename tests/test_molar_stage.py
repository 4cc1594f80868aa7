"""The train stage's Molar paths against references: joint training (what it saves, what its refit starts
from) and each rec_loss's checkpoint (its saved vectors score the validation metrics it records)."""

from __future__ import annotations

import shutil

import pytest
import torch

from molar_core.checkpoint import open_checkpoint
from molar_core.training import ranking_metrics
from molar_core.vectors import load_tensors
from pipeline.readers import read_prepared
from stages import train
from tests.conftest import small_params


@pytest.fixture()
def workspace(small_workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(small_workspace, root)
    return root


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_joint_saves_the_trained_sasrec_and_its_refit_starts_from_the_checkpoint(workspace, ml_small, monkeypatch,
                                                                                  one_torch_thread):
    root = workspace
    p = small_params(ml_small, models=("sasrec",))
    checkpoint = load_tensors(root / "artifacts/sasrec/model.safetensors")
    starts: dict[str, dict] = {}
    real_fit, real_refit = train.fit, train.refit

    def spy_fit(model, *args, **kwargs):
        starts["early_stopped"] = _state(model.id_model)
        return real_fit(model, *args, **kwargs)

    def spy_refit(build, *args):
        def spied(g):
            model, loss_fn = build(g)
            starts["refit"] = _state(model.id_model)
            return model, loss_fn
        return real_refit(spied, *args)

    monkeypatch.setattr(train, "fit", spy_fit)
    monkeypatch.setattr(train, "refit", spy_refit)
    variant = p.train_variant("molar").model_copy(update={"joint": True, "refit": True})
    config = train.run("molar", variant, p.protocol, root)
    assert _same(starts["early_stopped"], checkpoint)
    assert _same(starts["refit"], checkpoint)  # not the SASRec the early-stopped joint run trained
    saved = load_tensors(root / "artifacts/molar/model.safetensors")
    id_saved = {k[len("id_model."):]: v for k, v in saved.items() if k.startswith("id_model.")}
    assert id_saved.keys() == checkpoint.keys()
    assert not _same(id_saved, checkpoint)  # trained jointly
    assert config["id_model_weights"] == {"early_stopped_run": "model.safetensors", "refit": "model.safetensors"}


def test_frozen_sasrec_is_left_out_of_the_saved_state(small_workspace):
    saved = load_tensors(small_workspace / "artifacts/molar/model.safetensors")
    assert saved and not any(k.startswith("id_model.") for k in saved)
    assert any(k.startswith("head.") for k in saved)


@pytest.mark.parametrize("rec_loss", ["infonce", "bce", "ce"])
def test_saved_vectors_reproduce_the_recorded_validation_metrics(workspace, ml_small, rec_loss, one_torch_thread):
    """Each rec_loss's checkpoint holds its vectors in scoring form: ranking the validation users' saved vectors
    against the saved item vectors gives the validation metrics config.json records."""
    root = workspace
    p = small_params(ml_small, models=("sasrec",))
    variant = p.train_variant("molar").model_copy(update={"rec_loss": rec_loss})
    config = train.run(f"molar_{rec_loss}", variant, p.protocol, root)
    ckpt = open_checkpoint(root / f"artifacts/molar_{rec_loss}")
    valid = read_prepared(root, "valid")
    users = torch.from_numpy(ckpt.user_vectors("valid", valid["user_id"].to_list()))
    items = torch.from_numpy(ckpt.item_vectors())
    got = ranking_metrics(users, items, valid["history"].to_list(), valid["target"].to_list(), p.protocol.ks,
                          p.protocol.masking == "history")
    assert config["valid"] and got.keys() == config["valid"].keys()
    for k, v in config["valid"].items():
        assert abs(got[k] - v) <= 1e-6, k
    norms = torch.cat([users, items]).norm(dim=-1)
    if rec_loss == "infonce":
        assert config["scoring"].startswith("cosine") and torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    else:
        assert config["scoring"] == "dot" and not torch.allclose(norms, torch.ones_like(norms), atol=1e-2)
