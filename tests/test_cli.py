"""The `molar` CLI: stage commands, params check, inspection, and clear errors for missing artifacts."""

from __future__ import annotations

import json

import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from tests.conftest import poster_images

runner = CliRunner()


def test_help_lists_stages_and_commands():
    out = runner.invoke(app, ["--help"]).output
    for name in ("prepare", "train-id", "train ", "index", "evaluate", "check-params", "inspect"):
        assert name in out


def test_train_refuses_an_unknown_variant_naming_the_ones_there_are(tmp_path, monkeypatch):
    """`molar train VARIANT` checks VARIANT against train_variants before reading any data."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train_variants": {"content": {"align_alpha": 0.0},
                                                         "molar": {"align_alpha": 0.5}}}))
    monkeypatch.chdir(tmp_path)  # an empty workspace: had it read data, the error would name data/prepared
    res = runner.invoke(app, ["train", "contnet", "--params", str(params)])
    assert res.exit_code == 1, res.output
    assert "'contnet'" in res.output and "content, molar" in res.output, res.output
    assert not (tmp_path / "artifacts").exists()
    res = runner.invoke(app, ["train", "--params", str(params)])  # the variant is required
    assert res.exit_code == 2 and "variant" in res.output.lower()


def test_check_params_names_the_bad_key(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump({"train_id": {"lr": -1.0}}))
    res = runner.invoke(app, ["check-params", "--params", str(bad)])
    assert res.exit_code == 1 and "train_id.lr" in res.output


def test_inspect_before_prepare_says_which_command_makes_it(tmp_path):
    res = runner.invoke(app, ["inspect", "prepared", "--root", str(tmp_path)])
    assert res.exit_code == 1 and "dvc repro prepare" in res.output
    res = runner.invoke(app, ["inspect", "checkpoint", "sasrec", "--root", str(tmp_path)])
    assert res.exit_code == 1 and "dvc repro train_id" in res.output


def test_prepare_then_inspect_a_user(ml_small, tmp_path, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"prepare": {"source": "recbole_atomic", "path": str(ml_small),
                                                  "images": poster_images()}}))
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["prepare", "--params", str(params)])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "data/prepared/stats.json").read_text())
    assert stats["users"] == 120
    res = runner.invoke(app, ["inspect", "prepared", "--user", "1"])
    assert res.exit_code == 0 and "test" in res.output and "valid" in res.output
    res = runner.invoke(app, ["inspect", "prepared", "--user", "no-such-user"])
    assert res.exit_code == 1 and "unknown user id" in res.output
