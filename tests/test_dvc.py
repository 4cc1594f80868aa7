"""DVC drives the real stages: repro, a no-op second repro, and `dvc exp run -S` rerunning only dependents."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import write_ml100k_slice

ROOT = Path(__file__).resolve().parents[1]
EXP_SHOW_KEY_COLUMNS = ["--drop", ".*", "--keep", r"Experiment|rev|.*test\.ndcg@10$|.*test\.recall@10$|train_id\.lr$|.*align_alpha"]
PROJECT_FILES = ["dvc.yaml", "params.yaml", "pyproject.toml", "molar_core", "stages", "pipeline", ".dvc/config",
                 ".dvc/.gitignore"]


def _run(cmd, cwd, env):
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


@pytest.mark.slow
def test_dvc_repro_noop_and_exp_run(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    work = tmp_path / "ws"
    work.mkdir()
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, work / name)
    data = write_ml100k_slice(tmp_path / "ml-small", users=60)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["prepare"].update({"source": "recbole_atomic", "path": str(data)})
    params["train_id"].update({"max_epochs": 2, "dim": 16, "max_len": 20})
    params["train"].update({"max_epochs": 2, "dim": 16, "max_len": 20, "adapter_hidden": 32})
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (work / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(work), "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    dvc = [sys.executable, "-m", "dvc"]
    _run(["git", "init", "-q"], work, env)
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "init"], work, env)

    first = _run([*dvc, "repro"], work, env)
    for stage in ("prepare", "train_id", "finetune_encoder", "embed", "train@content", "train@molar", "index", "evaluate"):
        assert f"Running stage '{stage}'" in first
    assert (work / "metrics/metrics.json").exists()
    _run(["git", "add", "-A"], work, env)
    _run(["git", "commit", "-qm", "run"], work, env)

    second = _run([*dvc, "repro"], work, env)
    assert "Running stage" not in second and "up to date" in second

    shown = _run([*dvc, "metrics", "show"], work, env)
    assert "sasrec.test.ndcg@10" in shown and "molar.test.ndcg@10" in shown
    _run([*dvc, "plots", "show", "-o", str(tmp_path / "plots_html")], work, env)
    assert (tmp_path / "plots_html" / "index.html").exists()

    exp = _run([*dvc, "exp", "run", "-S", "train_id.lr=0.005"], work, env)
    assert "Running stage 'prepare'" not in exp and "Running stage 'embed'" not in exp
    assert "Running stage 'train_id'" in exp and "Running stage 'evaluate'" in exp
    exp2 = _run([*dvc, "exp", "run", "-S", "train_variants.molar.align_alpha=0.1"], work, env)
    assert "Running stage 'train@molar'" in exp2
    assert "Running stage 'train@content'" not in exp2 and "Running stage 'train_id'" not in exp2
    diff = _run([*dvc, "params", "diff"], work, env)
    assert "train_id.lr" in diff

    # the results of the two experiments side by side, key columns only (the README's command)
    table = _run([*dvc, "exp", "show", "--csv", *EXP_SHOW_KEY_COLUMNS], work, env)
    header, *rows = table.strip().splitlines()
    assert header.split(",")[2:] == [f"{m}.test.{k}@10" for m in ("sasrec", "content", "molar")
                                     for k in ("ndcg", "recall")] + [
        "train_id.lr", "train.align_alpha", "train_variants.content.align_alpha", "train_variants.molar.align_alpha"]
    assert sum(1 for r in rows if r.split(",")[-1] == "0.1") == 2  # workspace and the align_alpha=0.1 experiment
    # training curves and breakdowns compared across revisions
    _run([*dvc, "plots", "diff", "-o", str(tmp_path / "plots_diff")], work, env)
    page = (tmp_path / "plots_diff" / "index.html").read_text()
    for plot in ("curve.csv", "ndcg_by_history_length.csv", "ndcg_by_popularity.csv", "molar.csv"):
        assert plot in page


def test_every_param_a_stage_lists_is_in_params_yaml():
    """DVC refuses to run a stage whose listed param key is missing from params.yaml (a pydantic default is not
    enough): every `params:` entry of dvc.yaml must resolve to a key that params.yaml spells out."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    missing = []
    for name, stage in stages.items():
        stage = stage.get("do", stage)
        for key in stage.get("params", []):
            if "${" in str(key):
                continue
            node = params
            for part in str(key).split("."):
                if not isinstance(node, dict) or part not in node:
                    missing.append(f"{name}: {key}")
                    break
                node = node[part]
    assert not missing, missing
