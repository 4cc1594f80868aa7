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


def _artifacts(root: Path, model: str = "sasrec") -> dict:
    cfg = json.loads((root / f"artifacts/{model}/config.json").read_text())
    timing = {"train_seconds", "runtime", "resumed_after_epoch"}
    return {"config": {k: v for k, v in cfg.items() if k not in timing},
            **{f: (root / "artifacts" / model / f).read_bytes()
               for f in ("model.safetensors", "item_vectors.safetensors", "user_vectors.safetensors")}}


def test_a_rank_killed_mid_training_is_restarted_and_ends_as_an_uninterrupted_run(ml_small, tmp_path):
    """Rank 1 is SIGKILLed after rank 0 reported its second epoch (the stage's progress line, so the moment does
    not depend on the machine's speed); torchrun restarts the group, which resumes from the saved epoch. A peer
    that hangs while the group re-forms fails after distributed.timeout_s and is restarted again."""
    import signal

    base = tmp_path / "base"
    p = small_params(ml_small, max_epochs=8, dropout=0.2, patience=50)
    prepare.run(p.prepare, base)
    params = p.model_dump()
    params["train_id"].update(threads=1, distributed={"world_size": 2, "max_restarts": 3, "timeout_s": 60})
    roots = {}
    for name in ("clean", "killed"):
        roots[name] = tmp_path / name
        shutil.copytree(base, roots[name])
        (roots[name] / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stage(roots["clean"], "stages.train_id")

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stages.train_id", "params.yaml"], cwd=roots["killed"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("epoch 2/8 "):  # epoch 1 is saved (rank 0 saves after reporting an epoch)
                break
        else:
            pytest.fail("the group ended before its second epoch:\n" + "".join(seen)[-3000:])
        launchers = _children(proc.pid)
        workers = [w for launcher in launchers for w in _children(launcher)]
        assert len(workers) == 2, (launchers, workers)
        os.kill(max(workers), signal.SIGKILL)  # one rank dies mid-run: torchrun restarts the group, which resumes
        out, _ = proc.communicate(timeout=900)
    finally:
        proc.kill()
    (tmp_path / "killed.log").write_text("".join(seen) + out)  # the whole output, for a failed run
    assert proc.returncode == 0, ("".join(seen) + out)[-3000:]
    cfg = json.loads((roots["killed"] / "artifacts/sasrec/config.json").read_text())
    assert cfg["resumed_after_epoch"] is not None  # the restarted group did resume
    assert _artifacts(roots["killed"]) == _artifacts(roots["clean"])


WATCHED = """
import os, sys, time
import torch.distributed as dist
from pipeline.params import DistributedParams, Params
from stages.common import train_processes

os.environ.update(TORCHELASTIC_RUN_ID="t", RANK="1", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT="1")
dist.TCPStore = lambda *a, **k: time.sleep(600)  # joining never returns
train_processes("stages.train_id", [], Params(), DistributedParams(world_size=2, timeout_s=2), lambda: None)
"""


def test_a_process_that_cannot_join_the_group_exits_for_torchrun_to_restart_it():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", WATCHED], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "rank 1 did not join the process group within 2 s" in out.stderr
