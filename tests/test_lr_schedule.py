"""train_id / train `lr_schedule` and `warmup_steps`: the learning rate each optimiser step of fit() uses."""

from __future__ import annotations

import math

import pytest
import torch

from molar_core.training import fit
from pipeline.configs import fit_config
from pipeline.params import ParamsError, parse_params

LR, BATCH, WINDOWS = 0.01, 2, 10  # 5 steps an epoch


def _lrs_of_a_fit(monkeypatch, section: str, max_epochs: int | None = None, **schedule) -> list[float]:
    """The lr of every optimiser step of a fit configured from params (section train_id or train)."""
    p = parse_params({section: {"lr": LR, "batch_size": BATCH, "max_epochs": 3, **schedule}})
    p = p.train_id if section == "train_id" else p.train_variant("molar")
    seen: list[float] = []

    class Recording(torch.optim.AdamW):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            assert all(g["lr"] == seen[-1] for g in self.param_groups)
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    loss_fn = lambda batch: (model(torch.ones(len(batch), 3)).pow(2).sum(), {"loss": 0.0})  # noqa: E731
    fit(model, [[1, 2]] * WINDOWS, loss_fn, None, fit_config(p, "ndcg@10", "test", max_epochs=max_epochs),
        torch.Generator().manual_seed(0))
    return seen


def _expected(steps: int, warmup: int, cosine: bool) -> list[float]:
    out = []
    for k in range(steps):
        if k < warmup:
            out.append(LR * (k + 1) / warmup)
        elif cosine:
            out.append(LR * 0.5 * (1 + math.cos(math.pi * (k - warmup) / (steps - warmup))))
        else:
            out.append(LR)
    return out


@pytest.mark.parametrize("section", ["train_id", "train"])
def test_default_schedule_is_constant(monkeypatch, section):
    assert _lrs_of_a_fit(monkeypatch, section) == pytest.approx([LR] * 15)


@pytest.mark.parametrize("section", ["train_id", "train"])
def test_warmup_then_cosine_follows_the_formula(monkeypatch, section):
    got = _lrs_of_a_fit(monkeypatch, section, lr_schedule="cosine", warmup_steps=4)
    assert got == pytest.approx(_expected(15, 4, cosine=True), rel=1e-9)
    assert got[3] == pytest.approx(LR) and got[-1] < 0.03 * LR  # full lr after the warm-up, ~0 at the end


def test_warmup_alone_then_constant(monkeypatch):
    assert _lrs_of_a_fit(monkeypatch, "train_id", warmup_steps=4) == pytest.approx(_expected(15, 4, cosine=False))


def test_cosine_without_warmup_and_over_a_refits_epochs(monkeypatch):
    assert _lrs_of_a_fit(monkeypatch, "train", lr_schedule="cosine") == pytest.approx(_expected(15, 0, True))
    # a refit trains for its own epoch count (here 2): the cosine reaches ~0 at its end, not at max_epochs'
    assert _lrs_of_a_fit(monkeypatch, "train_id", max_epochs=2, lr_schedule="cosine") == pytest.approx(
        _expected(10, 0, True))


@pytest.mark.parametrize("section", ["train_id", "train"])
def test_schedule_params_are_checked(section):
    with pytest.raises(ParamsError, match=rf"{section}\.warmup_steps: .*greater than or equal to 0"):
        parse_params({section: {"warmup_steps": -1}})
    with pytest.raises(ParamsError, match=rf"{section}\.lr_schedule"):
        parse_params({section: {"lr_schedule": "linear"}})
