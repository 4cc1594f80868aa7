"""Early stopping against a running mean of the validation curve (`stop_window`): a lucky epoch does not end a
run that is still improving, window 1 is the plain rule, and the weights kept are the best epoch's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from molar_core.training import FitConfig, epochs_since_best, fit
from pipeline.configs import fit_config
from pipeline.params import TrainIdParams


def _plain_rule(values: list[float]) -> int:
    """Epochs since the strictly best value (the rule without smoothing), written independently."""
    best, at = -float("inf"), 0
    for i, v in enumerate(values):
        if v > best:
            best, at = v, i
    return len(values) - 1 - at


@pytest.mark.parametrize("seed", range(5))
def test_window_one_is_the_plain_rule(seed):
    values = torch.rand(40, generator=torch.Generator().manual_seed(seed)).tolist()
    for n in range(1, len(values) + 1):
        assert epochs_since_best(values[:n], 1) == _plain_rule(values[:n])


def test_a_lucky_epoch_does_not_reset_the_smoothed_patience():
    # a rising curve with one spike at epoch 3: the plain rule counts from the spike, the mean from the rise
    values = [0.10, 0.11, 0.16, 0.12, 0.13, 0.14, 0.15, 0.16]
    assert epochs_since_best(values, 1) == 5
    assert epochs_since_best(values, 3) == 0  # the 3-epoch mean is highest now: still improving
    flat = [0.1, 0.3, 0.1, 0.1, 0.1, 0.1]
    assert epochs_since_best(flat, 3) == 3  # means from epoch 3: 0.167, 0.167, 0.1, 0.1
    assert epochs_since_best(flat[:2], 3) == 0  # fewer epochs than the window: never stale
    with pytest.raises(ValueError, match="stop_window"):
        epochs_since_best(flat, 0)


class _Scripted(nn.Module):
    """A model whose validation curve is scripted, so the stopping epoch can be predicted exactly."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, 2))


def _fit(curve: list[float], patience: int, window: int):
    model = _Scripted()
    epoch = {"n": 0}

    def validate():
        epoch["n"] += 1
        with torch.no_grad():
            model.w.fill_(epoch["n"])  # the weights say which epoch they are from
        return {"ndcg@10": curve[epoch["n"] - 1]}

    result = fit(model, [[1, 2]], lambda b: ((model.w ** 2).sum() * 0, {"loss": 0.0}), validate,
                 FitConfig(max_epochs=len(curve), patience=patience, stop_window=window), torch.Generator())
    return result, model


def test_fit_stops_on_the_smoothed_curve_and_keeps_the_best_epoch():
    curve = [0.10, 0.17, 0.11, 0.12, 0.13, 0.14, 0.15, 0.16, 0.15, 0.145, 0.14, 0.14, 0.13, 0.13, 0.13, 0.13]
    plain, _ = _fit(curve, patience=3, window=1)
    assert len(plain.curve) == 5 and plain.best_epoch == 2  # stopped 3 epochs after the lucky 0.17
    smooth, model = _fit(curve, patience=3, window=3)
    # 3-epoch means peak at epoch 9 (0.153): stopped 3 epochs later; the weights are epoch 2's (the best value)
    assert len(smooth.curve) == 12 and smooth.best_epoch == 2
    assert float(model.w[0, 0]) == 2.0


def test_params_pass_the_window_and_refuse_zero():
    assert fit_config(TrainIdParams(stop_window=5), "ndcg@10", "x").stop_window == 5
    with pytest.raises(ValueError, match="stop_window"):
        TrainIdParams(stop_window=0)
