"""Resume state from other params is never resumed; a run killed in its refit resumes the refit. (A training stage killed at random moments resumes after its
last saved epoch and ends with the artifacts of an uninterrupted run: tests/test_faults.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from molar_core.io import parse_safetensors_metadata
from pipeline import paths
from stages import prepare
from tests.conftest import small_params

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
ARTIFACTS = ("model.safetensors", "item_vectors.safetensors", "user_vectors.safetensors")


def _workspace(tmp_path: Path, ml_small: Path, epochs: int, **train_id) -> Path:
    root = tmp_path / "ws"
    p = small_params(ml_small)
    prepare.run(p.prepare, root)
    params = {"prepare": p.prepare.model_dump(),
              "train_id": {"max_epochs": epochs, "patience": 100, "dim": 16, "max_len": 20, "batch_size": 32,
                           "threads": 1, **train_id}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _run(root: Path, kill_after_epoch: int | None = None, state_name: str = "sasrec") -> int | None:
    """Run train_id in a subprocess; with kill_after_epoch, SIGKILL it once the saved state has that epoch."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "stages.train_id", "params.yaml"], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = root / paths.RESUME_DIR / state_name / "state.safetensors"
    if kill_after_epoch is None:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        return None
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        try:
            with safe_open(str(state), "pt") as f:
                if parse_safetensors_metadata(f.metadata())["epoch"] >= kill_after_epoch:
                    break
        except Exception:  # noqa: BLE001  not written yet, or replaced while reading
            pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with safe_open(str(state), "pt") as f:
        return parse_safetensors_metadata(f.metadata())["epoch"]


def test_state_from_other_params_is_not_resumed(tmp_path, ml_small):
    root = _workspace(tmp_path, ml_small, 4)
    killed_at = _run(root, kill_after_epoch=1)
    assert killed_at >= 1
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train_id"]["lr"] = 0.005
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    _run(root)
    conf = json.loads((root / "artifacts/sasrec/config.json").read_text())
    assert conf["resumed_after_epoch"] is None and conf["epochs_run"] == 4


def test_a_run_killed_in_its_refit_resumes_the_refit_and_saves_what_an_uninterrupted_run_saves(tmp_path, ml_small):
    ref = _workspace(tmp_path / "ref", ml_small, 4, refit=True)
    _run(ref)
    root = _workspace(tmp_path / "killed", ml_small, 4, refit=True)
    killed_at = _run(root, kill_after_epoch=1, state_name="sasrec-refit")
    assert killed_at >= 1
    _run(root)
    conf = json.loads((root / "artifacts/sasrec/config.json").read_text())
    assert conf["resumed_after_epoch"] == 4  # the early-stopped run was finished: not trained again
    assert conf["refit"]["resumed_after_epoch"] == killed_at
    for name in ARTIFACTS:
        assert (root / "artifacts/sasrec" / name).read_bytes() == (ref / "artifacts/sasrec" / name).read_bytes(), name
    assert not (root / paths.RESUME_DIR / "sasrec-refit").exists()
