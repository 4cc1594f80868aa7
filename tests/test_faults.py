"""Fault injection: SIGKILL the prepare, index and evaluate stages at random moments (10 seeded trials each), rerun
them, and compare every artifact with an uninterrupted run: identical (timings aside), nothing half-written.

(embed and the training stages have their own kill-and-resume tests: test_embed_stage.py and
test_training_resume.py, which also count the work redone.)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import small_params

REPO = Path(__file__).resolve().parents[1]
TRIALS = 10
pytestmark = pytest.mark.slow

OUTPUTS = {
    "prepare": ["data/prepared/items.parquet", "data/prepared/train.parquet", "data/prepared/valid.parquet",
                "data/prepared/test.parquet", "data/prepared/stats.json"],
    "index": [f"artifacts/index/{m}.{ext}" for m in ("sasrec", "content", "molar") for ext in ("faiss", "json")],
    "evaluate": ["metrics/metrics.json", "metrics/per_user.parquet", "plots/evaluate/ndcg_by_history_length.csv",
                 "plots/evaluate/ndcg_by_popularity.csv"],
}
TIMING_KEYS = {"build_seconds", "seconds", "runtime"}


def _strip_timings(obj):
    if isinstance(obj, dict):
        return {k: _strip_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    return obj


def _snapshot(root: Path, stage: str) -> dict[str, object]:
    out = {}
    for rel in OUTPUTS[stage]:
        path = root / rel
        if not path.exists():
            out[rel] = None
        elif path.suffix == ".json":
            out[rel] = _strip_timings(json.loads(path.read_text()))
        else:
            out[rel] = path.read_bytes()
    return out


def _start(root: Path, stage: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", f"stages.{stage}", "params.yaml"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _finish(root: Path, stage: str) -> float:
    t = time.perf_counter()
    proc = _start(root, stage)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return time.perf_counter() - t


@pytest.fixture(scope="module")
def base(small_workspace, ml_small, tmp_path_factory) -> Path:
    """The finished small workspace with the params.yaml its stages were run with."""
    root = tmp_path_factory.mktemp("faults") / "base"
    shutil.copytree(small_workspace, root)
    p = small_params(ml_small, models=("sasrec", "content", "molar"))
    (root / "params.yaml").write_text(yaml.safe_dump(p.model_dump()))
    return root


@pytest.mark.parametrize("stage", ["prepare", "index", "evaluate"])
def test_sigkill_at_random_moments_then_rerun_gives_the_same_artifacts(base, tmp_path, stage):
    ref_root = tmp_path / "ref"
    shutil.copytree(base, ref_root)
    for rel in OUTPUTS[stage]:
        (ref_root / rel).unlink()
    duration = _finish(ref_root, stage)
    ref = _snapshot(ref_root, stage)
    assert all(v is not None for v in ref.values())

    rng = random.Random(f"{stage}-faults")
    killed_mid_run = 0
    for trial in range(TRIALS):
        root = tmp_path / f"t{trial}"
        shutil.copytree(ref_root, root)
        for rel in OUTPUTS[stage]:
            (root / rel).unlink()
        proc = _start(root, stage)
        time.sleep(rng.uniform(0.0, duration))
        killed_mid_run += proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for rel, value in _snapshot(root, stage).items():  # after the kill: each output whole or absent
            assert value is None or value == ref[rel], (trial, rel)
        _finish(root, stage)
        assert _snapshot(root, stage) == ref, trial
        leftovers = [p for p in root.rglob("*") if ".tmp" in p.name]
        assert not leftovers, leftovers
    assert killed_mid_run >= TRIALS // 2  # most kills landed while the stage was running
