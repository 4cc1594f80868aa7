"""`ema_decay`: the training loop validates, keeps and saves a moving average of the weights, without changing
the training trajectory itself, and a resumed run continues the same average."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from molar_core.data.sequences import training_windows
from molar_core.models.sasrec import SASRec, SASRecConfig, sasrec_loss
from molar_core.resume import TrainingResume
from molar_core.training import FitConfig, WeightAverage, fit, seed_everything
from pipeline.params import TrainIdParams
from tests.test_sasrec import _cyclic_data

SEQS = training_windows(_cyclic_data(users=20), 12)


def _model() -> SASRec:
    return SASRec(SASRecConfig(num_items=30, max_len=12, dim=16, layers=1, heads=2, dropout=0.1))


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_average_follows_the_exponential_recurrence():
    """After updates with weights w1..w3: avg = d^3 w0 + (1 - d)(d^2 w1 + d w2 + w3), computed in float64."""
    layer = nn.Linear(3, 2)
    w = [layer.weight.detach().double().clone()]
    avg = WeightAverage(layer, 0.9)
    for step in range(3):
        with torch.no_grad():
            layer.weight.mul_(-1.5).add_(0.25 * (step + 1))
        w.append(layer.weight.detach().double().clone())
        avg.update(layer)
    want = 0.9 ** 3 * w[0] + 0.1 * (0.81 * w[1] + 0.9 * w[2] + w[3])
    torch.testing.assert_close(avg.state["weight"].double(), want, rtol=1e-6, atol=1e-7)
    with avg.applied(layer):
        torch.testing.assert_close(layer.weight, avg.state["weight"], rtol=0, atol=0)
    torch.testing.assert_close(layer.weight.double(), w[3], rtol=0, atol=0)  # its own weights are back


def _run(ema: float, validate: bool, epochs: int = 3, resume: TrainingResume | None = None, stop_after: int = 0):
    """fit() from seed 5. Without ema, a reference WeightAverage(0.8) is folded in before every step from the
    loss function (the weights after the previous step) and once after the last one, as fit() folds them in."""
    gen = seed_everything(5)
    model = _model()
    reference = WeightAverage(model, 0.8)
    steps, seen = [0], []

    def loss_fn(batch):
        if not ema and steps[0]:
            reference.update(model)
        steps[0] += 1
        return sasrec_loss(model, batch)

    def check():  # rising metric: every epoch is the best so far; records the weights validation saw
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"ndcg@10": float(len(seen))}

    def progress(row):
        if stop_after and row["epoch"] == stop_after:
            raise KeyboardInterrupt  # killed before this epoch's state is saved

    cfg = FitConfig(lr=1e-2, batch_size=8, max_epochs=epochs, patience=100, ema_decay=ema)
    result = fit(model, SEQS, loss_fn, check if validate else None, cfg, gen, progress=progress, resume=resume)
    if not ema:
        reference.update(model)
    return model, result, reference, seen


@pytest.mark.parametrize("validate", [False, True])
def test_fit_trains_as_without_average_and_returns_the_average(validate):
    plain, plain_res, reference, _ = _run(0.0, validate)
    averaged, res, _, seen = _run(0.8, validate)
    assert [r["loss"] for r in res.curve] == [r["loss"] for r in plain_res.curve]  # training itself unchanged
    _assert_same(averaged.state_dict(), reference.state)  # the model left is the average after the last step
    assert not torch.equal(averaged.item_emb.weight, plain.item_emb.weight)
    if validate:
        _assert_same(seen[-1], reference.state)  # validation scored the average, not the last weights


def test_a_resumed_run_continues_the_average(tmp_path):
    """Killed in epoch 3 and resumed (no validation: the model left is the last average), as uninterrupted."""
    whole, _, _, _ = _run(0.8, False, epochs=4)
    with pytest.raises(KeyboardInterrupt):
        _run(0.8, False, epochs=4, resume=TrainingResume(tmp_path, "fp"), stop_after=3)
    resumed, result, _, _ = _run(0.8, False, epochs=4, resume=TrainingResume(tmp_path, "fp"))
    assert len(result.curve) == 4 and result.curve[2]["epoch"] == 3
    _assert_same(resumed.state_dict(), whole.state_dict())


@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_ema_decay_outside_0_1_names_the_key(value):
    with pytest.raises(ValueError, match="ema_decay"):
        TrainIdParams(ema_decay=value)
