"""params.yaml schema: the repo's file loads; typos, wrong types and impossible values fail naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.params import Params, ParamsError, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, data) -> Path:
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def fails(data: dict, *needles: str) -> str:
    with pytest.raises(ParamsError) as err:
        parse_params(data, "my.yaml")
    msg = str(err.value)
    assert msg.startswith("my.yaml: invalid params")
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def test_repo_params_yaml_loads():
    p = load_params(REPO / "params.yaml")
    assert isinstance(p, Params)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    # every value written in the file is the value loaded (nothing silently dropped or renamed)
    dumped = p.model_dump()
    for section, values in raw.items():
        for key, value in values.items():
            if isinstance(value, dict):
                for k2, v2 in value.items():
                    assert dumped[section][key][k2] == v2, f"{section}.{key}.{k2}"
            elif section == "protocol" and key == "ks":
                assert dumped[section][key] == sorted(set(value))
            else:
                assert dumped[section][key] == value, f"{section}.{key}"


def test_empty_data_gives_defaults():
    assert parse_params(None) == Params()
    assert parse_params({}) == Params()


def test_unknown_key_names_dotted_path():
    msg = fails({"train_id": {"lrr": 0.1}}, "train_id.lrr", "unknown key")
    assert msg.count("\n") == 1  # exactly one problem reported
    fails({"prepare": {"images": {"dirr": "x"}}}, "prepare.images.dirr", "unknown key")


def test_unknown_top_level_section():
    fails({"trian_id": {"lr": 0.1}}, "trian_id", "unknown key")


def test_wrong_type_names_key_and_value():
    fails({"train_id": {"dim": "abc"}}, "train_id.dim", "'abc'")
    fails({"prepare": {"k_core_user": 2.5}}, "prepare.k_core_user")
    fails({"index": {"models": "sasrec"}}, "index.models")


@pytest.mark.parametrize(
    "data,key",
    [
        ({"prepare": {"k_core_user": 0}}, "prepare.k_core_user"),
        ({"prepare": {"k_core_item": 0}}, "prepare.k_core_item"),
        ({"prepare": {"max_seq_len": 2}}, "prepare.max_seq_len"),
        ({"prepare": {"images": {"max_bytes": 0}}}, "prepare.images.max_bytes"),
        ({"prepare": {"source": "csv"}}, "prepare.source"),
        ({"train_id": {"lr": -1}}, "train_id.lr"),
        ({"train_id": {"lr": 0}}, "train_id.lr"),
        ({"train_id": {"dropout": 1.0}}, "train_id.dropout"),
        ({"train_id": {"loss": "bpr"}}, "train_id.loss"),
        ({"protocol": {"masking": "all"}}, "protocol.masking"),
        ({"index": {"use_gpu": "yes"}}, "index.use_gpu"),
        ({"evaluate": {"batch_size": 0}}, "evaluate.batch_size"),
    ],
)
def test_impossible_values_name_the_key(data, key):
    fails(data, f"{key}:")


def test_every_bad_key_is_reported_at_once():
    fails({"train_id": {"lr": -1, "dim": "x"}, "prepare": {"k_core_user": 0}}, "train_id.lr", "train_id.dim",
          "prepare.k_core_user")  # fmt: skip


def test_dim_must_be_divisible_by_heads():
    fails({"train_id": {"dim": 64, "heads": 3}}, "train_id", "dim (64) must be divisible by heads (3)")
    assert parse_params({"train_id": {"dim": 66, "heads": 3}}).train_id.dim == 66


def test_protocol_ks_sorted_deduplicated_and_positive():
    assert parse_params({"protocol": {"ks": [50, 10, 20, 10]}}).protocol.ks == [10, 20, 50]
    for bad in ([0, 10], [-5], []):
        fails({"protocol": {"ks": bad}}, "protocol.ks")


def test_source_table_needs_interactions():
    fails({"prepare": {"source": "table"}}, "prepare", "prepare.table.interactions")
    ok = parse_params({"prepare": {"source": "table", "table": {"interactions": "x.csv"}}})
    assert ok.prepare.table.interactions == "x.csv"
    fails({"prepare": {"source": "recbole_atomic"}}, "prepare.path")
    fails({"prepare": {"source": "amazon2023"}}, "prepare.amazon.reviews")


def test_sections_are_frozen():
    p = parse_params({})
    with pytest.raises(Exception):  # noqa: B017 (pydantic's frozen-instance error)
        p.train_id.lr = 1.0  # type: ignore[misc]


def test_missing_file_names_path(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ParamsError, match="not found") as err:
        load_params(path)
    assert str(path) in str(err.value)


def test_invalid_yaml_names_path(tmp_path):
    path = write(tmp_path / "bad.yaml", "train_id:\n  lr: [0.1\n")
    with pytest.raises(ParamsError, match="not valid YAML") as err:
        load_params(path)
    assert str(path) in str(err.value)


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ParamsError, match="mapping") as err:
        load_params(path)
    assert str(path) in str(err.value)


def test_empty_file_gives_defaults(tmp_path):
    assert load_params(write(tmp_path / "empty.yaml", "")) == Params()


def test_errors_from_a_file_name_the_file(tmp_path):
    path = write(tmp_path / "p.yaml", {"train_id": {"lrr": 0.1}})
    with pytest.raises(ParamsError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: invalid params") and "train_id.lrr" in str(err.value)


def test_overrides_deep_merge(tmp_path):
    data = {"train_id": {"lr": 0.005, "dim": 32, "heads": 2},
            "prepare": {"images": {"dir": "posters", "pattern": "{item_id}.png"}}}  # fmt: skip
    path = write(tmp_path / "p.yaml", data)
    p = load_params(path, overrides={"train_id": {"dim": 48}, "prepare": {"images": {"dir": "other"}},
                                     "protocol": {"ks": [5]}})  # fmt: skip
    assert (p.train_id.lr, p.train_id.dim, p.train_id.heads) == (0.005, 48, 2)  # siblings kept
    assert (p.prepare.images.dir, p.prepare.images.pattern) == ("other", "{item_id}.png")
    assert p.protocol.ks == [5]
    # overrides are validated like the file
    with pytest.raises(ParamsError, match=r"train_id\.heads"):
        load_params(path, overrides={"train_id": {"heads": 0}})
    with pytest.raises(ParamsError, match="dim"):
        load_params(path, overrides={"train_id": {"heads": 5}})
    # the file itself is not modified
    assert yaml.safe_load(path.read_text())["train_id"]["dim"] == 32


def test_prepare_stage_fails_before_any_work(tmp_path):
    bad = write(tmp_path / "BAD.yaml", {"prepare": {"k_core_user": 5}, "train_id": {"lrr": 0.1}})
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "stages.prepare", str(bad)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "train_id.lrr" in out and "unknown key" in out
    assert "Traceback" not in out
    assert not (tmp_path / "data").exists()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["BAD.yaml"]


def test_dotted_overrides_nest_keys_and_parse_yaml_values():
    from pipeline.params import ParamsError, dotted_overrides

    got = dotted_overrides(["train.patience=15", "prepare.images.dir=posters", "train.hybrid=true",
                            "index.models=[sasrec, molar]"])
    assert got == {"train": {"patience": 15, "hybrid": True}, "prepare": {"images": {"dir": "posters"}},
                   "index": {"models": ["sasrec", "molar"]}}
    with pytest.raises(ParamsError, match="train.patience"):
        dotted_overrides(["train.patience"])
