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


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _artifacts(root: Path) -> dict:
    cfg = json.loads((root / "artifacts/sasrec/config.json").read_text())
    timing = {"train_seconds", "runtime", "resumed_after_epoch"}
    return {"config": {k: v for k, v in cfg.items() if k not in timing},
            **{f: (root / "artifacts/sasrec" / f).read_bytes()
               for f in ("model.safetensors", "item_vectors.safetensors", "user_vectors.safetensors")}}


def test_a_rank_killed_mid_training_is_restarted_and_ends_as_an_uninterrupted_run(ml_small, tmp_path):
    import signal
    import time

    base = tmp_path / "base"
    p = small_params(ml_small, max_epochs=8, dropout=0.2, patience=50)
    prepare.run(p.prepare, base)
    params = p.model_dump()
    params["train_id"].update(threads=1, distributed={"world_size": 2, "max_restarts": 2})
    roots = {}
    for name in ("clean", "killed"):
        roots[name] = tmp_path / name
        shutil.copytree(base, roots[name])
        (roots[name] / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stage(roots["clean"], "stages.train_id")

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stages.train_id", "params.yaml"], cwd=roots["killed"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        state = roots["killed"] / ".molar/resume/sasrec"
        deadline = time.monotonic() + 300
        while not (state.exists() and any(state.iterdir())):  # an epoch has been saved
            assert proc.poll() is None and time.monotonic() < deadline, "no epoch saved"
            time.sleep(0.1)
        launchers = _children(proc.pid)
        workers = [w for launcher in launchers for w in _children(launcher)]
        assert len(workers) == 2, (launchers, workers)
        os.kill(workers[1], signal.SIGKILL)  # rank 1 dies mid-run: torchrun restarts the group, which resumes
        out, _ = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, out.decode()[-3000:]
    cfg = json.loads((roots["killed"] / "artifacts/sasrec/config.json").read_text())
    assert cfg["resumed_after_epoch"] is not None  # the restarted group did resume
    assert _artifacts(roots["killed"]) == _artifacts(roots["clean"])
