"""bench/epoch_curve.py: its test curve after epoch N is the test NDCG@10 of the model an N-epoch refit saves, as
the sweep scores it from the saved vectors, and its table reads the curve as recorded."""

from __future__ import annotations

import shutil

import pytest
import torch

from bench import epoch_curve
from bench.sweep import split_ndcg
from stages import train_id
from tests.conftest import small_params


@pytest.mark.parametrize("max_epochs", [2, 3])
def test_curve_at_the_refit_epoch_count_is_the_saved_refit_model_s_test_ndcg(small_workspace, ml_small, tmp_path,
                                                                            one_torch_thread, max_epochs):
    root = tmp_path / "ws"
    shutil.copytree(small_workspace, root)
    p = small_params(ml_small, models=("sasrec",), max_epochs=max_epochs, patience=100, refit=True)
    best = train_id.run(p.train_id, p.protocol, root)["refit"]["epochs"]
    saved = float(split_ndcg(root, "sasrec").mean())  # the saved refit model, ranked from its vectors
    curve = epoch_curve.epoch_curve(root, p, p.train_id.seed, max_epochs + 1)
    assert len(curve) == max_epochs + 1
    assert curve[best - 1] == pytest.approx(saved, abs=1e-6)
    assert torch.get_num_threads() == 1


def test_table_shows_each_seed_s_fair_number_the_last_epochs_and_the_test_picked_best():
    rising, falling = [0.1 + 0.001 * i for i in range(12)], [0.2 - 0.001 * i for i in range(12)]
    seeds = [{"seed": s, "curve": c, "fair": {"ndcg@10": c[e - 1], "epoch": e}, "mean_last_10": sum(c[-10:]) / 10,
              "max": max(c), "max_epoch": c.index(max(c)) + 1} for s, c, e in [(0, rising, 4), (1, falling, 2)]]
    text = epoch_curve.markdown({"epochs": 12, "seeds": seeds})
    assert "| seed | refit epochs from early stopping on validation (fair) | mean of epochs 3-12 | " \
           "best of 12 epochs, picked on the test set |" in text
    assert "| 0 | 0.1030 (4 epochs) | 0.1065 | 0.1110 (epoch 12) |" in text
    assert "| 1 | 0.1990 (2 epochs) | 0.1935 | 0.2000 (epoch 1) |" in text
    assert "| mean | 0.1510 | 0.1500 | 0.1555 |" in text
