"""bench/ is a package of scripts run as `python -m bench.NAME` from the repository root: every module imports
without side effects, every script answers --help, and every override file in bench/configs is a valid variant of
the repository's params.yaml."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from bench.common import (CONFIGS, bench_params, diff_cell, markdown_table, overrides, relative_cell, timed,
                          write_result)
from pipeline.params import load_params

REPO = Path(__file__).resolve().parents[1]
MODULES = sorted(p.stem for p in (REPO / "bench").glob("*.py") if p.stem != "__init__")
SCRIPTS = [m for m in MODULES if 'if __name__ == "__main__":' in (REPO / "bench" / f"{m}.py").read_text()]
CONFIG_FILES = sorted(CONFIGS.glob("*.yaml"))
MEASURES_NOTHING = {"docs_tables"}  # renders the others' JSON into docs/: no result of its own


def test_the_suite_is_found():
    assert {"sweep", "cold_start", "paper_table", "gpu", "common", "machine"} <= set(MODULES)
    assert {"sweep", "cold_start", "gpu"} <= set(SCRIPTS) and "common" not in SCRIPTS
    assert {p.name for p in CONFIG_FILES} >= {"amazon_scientific.yaml", "ml100k_multimodal.yaml"}


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_without_side_effects(name, capsys, monkeypatch):
    """Importing a bench module prints nothing, edits no sys.path and leaves the working directory alone."""
    import bench

    monkeypatch.delitem(sys.modules, f"bench.{name}", raising=False)  # a fresh import; put back afterwards
    if hasattr(bench, name):
        monkeypatch.delattr(bench, name)
    path = list(sys.path)
    monkeypatch.setattr(sys, "argv", ["pytest-bench-import", "--definitely-not-an-option"])
    before = sorted(p.name for p in REPO.iterdir())
    mod = importlib.import_module(f"bench.{name}")
    assert mod.__name__ == f"bench.{name}"
    assert sys.path == path
    assert capsys.readouterr() == ("", "")
    assert sorted(p.name for p in REPO.iterdir()) == before
    assert sys.argv[1:] == ["--definitely-not-an-option"]


def test_no_script_edits_sys_path_or_is_run_as_a_file():
    for m in MODULES:
        text = (REPO / "bench" / f"{m}.py").read_text()
        assert "sys.path.insert" not in text and "sys.path.append" not in text, m
        assert f"python bench/{m}.py" not in text, m


def _help(name: str) -> tuple[str, subprocess.CompletedProcess]:
    return name, subprocess.run([sys.executable, "-m", f"bench.{name}", "--help"], cwd=REPO, capture_output=True,
                                text=True, timeout=300)


@pytest.mark.slow
def test_every_script_answers_help_and_offers_json():
    """`python -m bench.X --help` from the repo root, every script (in parallel: each imports torch and more)."""
    with ThreadPoolExecutor(4) as pool:
        done = dict(pool.map(_help, SCRIPTS))
    for name, out in done.items():
        assert out.returncode == 0, f"{name}: {out.stderr[-2000:]}"
        assert "usage:" in out.stdout and ("--json" in out.stdout or name in MEASURES_NOTHING), name


@pytest.mark.parametrize("config", CONFIG_FILES, ids=lambda p: p.name)
def test_override_configs_validate_against_params_yaml(config):
    data = yaml.safe_load(config.read_text())
    assert isinstance(data, dict) and data, config
    merged = load_params(REPO / "params.yaml", overrides=data)
    assert merged == bench_params(config=config)


@pytest.mark.parametrize("config", CONFIG_FILES, ids=lambda p: p.name)
def test_override_configs_hold_only_what_differs(config):
    """Every leaf an override file writes changes params.yaml (a key equal to today's default is dropped)."""
    base = load_params(REPO / "params.yaml").model_dump()

    def leaves(node: dict, at: tuple = ()):
        for k, v in node.items():
            yield from leaves(v, (*at, k)) if isinstance(v, dict) else [((*at, k), v)]

    for keys, value in leaves(yaml.safe_load(config.read_text())):
        node = base
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        assert node != value, f"{config.name}: {'.'.join(keys)} = {value!r} is params.yaml's own value"


def test_overrides_merge_config_then_settings_then_extra():
    got = overrides(CONFIGS / "ml100k_multimodal.yaml", ["train.threads=2", "train_id.seed=3"],
                    {"train_id": {"seed": 4}})
    assert got["train"] == {"norm": "pre", "threads": 2} and got["train_id"] == {"threads": 1, "seed": 4}
    assert overrides(None, []) == {}


def test_helpers(tmp_path):
    seconds, result = timed(lambda x: x + 1, 1, repeats=2)
    assert result == 2 and seconds >= 0
    assert markdown_table(["a", "b"], [[1, "x"]]) == "| a | b |\n| --- | --- |\n| 1 | x |"
    pb = {"diff": 0.01, "ci_low": -0.002, "ci_high": 0.02, "relative": 0.1, "relative_low": -0.02,
          "relative_high": 0.2}
    assert diff_cell(pb) == "+0.0100 [-0.0020, +0.0200]" and diff_cell(None) == ""
    assert relative_cell(pb) == "+10.0% [-2.0%, +20.0%]" and relative_cell({**pb, "relative": None}) == ""
    out = write_result(tmp_path / "r.json", {"rows": [1]})
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved == out and saved["rows"] == [1] and "cpu" in saved["machine"] and "commit" in saved


def test_a_checkout_is_dirty_for_changed_code_not_for_changed_results(tmp_path, monkeypatch):
    import subprocess

    from bench import machine

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t", *args], check=True,
                       capture_output=True)

    (tmp_path / "bench/results").mkdir(parents=True)
    for name in ("bench/results/r.json", "README.md", "code.py"):
        (tmp_path / name).write_text("0\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "x")
    monkeypatch.setattr(machine, "ROOT", tmp_path)
    assert machine.checkout()["dirty"] is False
    (tmp_path / "bench/results/r.json").write_text("1\n")
    (tmp_path / "README.md").write_text("1\n")
    assert machine.checkout()["dirty"] is False  # a result and a page: outputs
    (tmp_path / "code.py").write_text("1\n")
    assert machine.checkout()["dirty"] is True


@pytest.mark.slow
def test_peers_runs_our_worker_in_its_own_process(ml100k, tmp_path):
    """bench.peers spawns each system in its own process: ours runs the real stages under RecBole's protocol and
    reports a validation curve and test metrics (one epoch here; RecBole's side needs its own environment)."""
    import argparse
    import shutil

    from bench import peers

    data = tmp_path / "ml-100k"
    data.mkdir()
    for name in ("ml-100k.inter", "ml-100k.item"):
        shutil.copy(ml100k / name, data / name)
    args = argparse.Namespace(epochs=1, threads=1, set=["train_id.max_epochs=1"], data=peers.shared_split(data))
    ours = peers.spawn(sys.executable, "molar", args)
    assert [c["epoch"] for c in ours["curve"]] == [1] and 0 < ours["test_ndcg@10"] < 1
