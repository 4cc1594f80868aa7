"""train_id and train with distributed.world_size 2: the stage relaunches itself under torchrun (gloo), rank 0
writes the usual artifacts, and the model is the one-process model up to float summation order."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from molar_core.vectors import load_item_vectors
from stages import embed, prepare
from tests.conftest import small_params

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def stage(root: Path, *argv: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", *argv, "params.yaml"], cwd=root, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def test_two_processes_train_the_one_process_models(ml_small, tmp_path):
    base = tmp_path / "base"
    p = small_params(ml_small, models=("sasrec", "molar"), max_epochs=3, dropout=0.0)
    prepare.run(p.prepare, base)
    embed.run(p.embed, base)
    runs = {}
    for world in (1, 2):
        root = tmp_path / f"w{world}"
        shutil.copytree(base, root)
        params = p.model_dump()
        params["train_id"]["distributed"] = {"world_size": world}
        params["train"].update(dropout=0.0, max_epochs=2, distributed={"world_size": world})
        params["train_id"]["threads"] = params["train"]["threads"] = 1
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        stage(root, "stages.train_id")
        stage(root, "stages.train", "molar")
        runs[world] = root
    for model in ("sasrec", "molar"):
        configs = [json.loads((runs[w] / f"artifacts/{model}/config.json").read_text()) for w in (1, 2)]
        assert configs[1]["params"]["distributed"]["world_size"] == 2
        assert configs[0]["best_epoch"] == configs[1]["best_epoch"]
        for k, v in configs[0]["valid"].items():
            assert configs[1]["valid"][k] == pytest.approx(v, abs=0.01), (model, k)
        a, b = (load_item_vectors(runs[w] / f"artifacts/{model}/item_vectors.safetensors") for w in (1, 2))
        np.testing.assert_allclose(a, b, atol=2e-3)
    assert not list((runs[2] / "artifacts").rglob("*.tmp"))  # one writer: no leftovers of a second one

