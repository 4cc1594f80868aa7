"""evaluate.workers: the users are ranked in slices by several processes, with the ranks of one process."""

from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from molar_core.ranking import sharded_target_ranks, target_ranks


def test_sharded_ranks_equal_one_process_with_ties_and_a_ragged_last_slice():
    g = torch.Generator().manual_seed(0)
    users, items = torch.randn(1037, 16, generator=g), torch.randn(300, 16, generator=g)
    items[7] = items[3]  # identical vectors: ties, ranked pessimistically in both
    histories = [torch.randint(1, 301, (int(n),), generator=g).tolist() for n in torch.randint(0, 30, (1037,), generator=g)]
    targets = torch.randint(1, 301, (1037,), generator=g)
    one = target_ranks(users, items, histories, targets, chunk=100)
    for workers in (2, 3):
        torch.testing.assert_close(sharded_target_ranks(users, items, histories, targets, 100, workers), one,
                                   rtol=0, atol=0)


def test_a_bad_slice_in_a_worker_raises_its_error_in_the_caller():
    g = torch.Generator().manual_seed(1)
    users, items = torch.randn(400, 8, generator=g), torch.randn(50, 8, generator=g)
    users[-1, 0] = float("nan")  # in the last slice, which may be ranked by this process or by the worker
    targets = torch.randint(1, 51, (400,), generator=g)
    with pytest.raises(ValueError, match="NaN"):
        sharded_target_ranks(users, items, None, targets, 20, 2)


def test_evaluate_with_two_workers_writes_the_same_files(small_workspace, tmp_path):
    import shutil

    from stages import evaluate
    from tests.conftest import small_params

    root = tmp_path / "ws"
    shutil.copytree(small_workspace, root)
    p = small_params(root, models=("sasrec", "content", "molar"))
    out = {}
    for workers in (1, 2):
        params = p.evaluate.model_copy(update={"workers": workers, "batch_size": 40})
        evaluate.run(params, p.protocol, root)
        metrics = json.loads((root / "metrics/metrics.json").read_text())
        metrics.pop("runtime")
        out[workers] = metrics, pl.read_parquet(root / "metrics/per_user.parquet")
    assert out[1][0] == out[2][0]
    assert out[1][1].equals(out[2][1])
    assert out[1][1].height > 2 * 40  # more than one slice of users per split
