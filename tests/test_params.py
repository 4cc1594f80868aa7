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
                                     "protocol": {"ks": [5], "early_stop_metric": "ndcg@5"}})  # fmt: skip
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


@pytest.mark.parametrize("metric", ["ndcg@5", "recall@100", "hit@10", "ndcg", "NDCG@10", "mrr@ten"])
def test_early_stop_metric_must_be_one_validation_computes(metric):
    """Only a metric at a K of protocol.ks exists in the validation results (anything else failed after epoch 1)."""
    fails({"protocol": {"early_stop_metric": metric}}, "protocol.early_stop_metric:", "ndcg@10", "recall@20",
          "mrr@50")


def test_early_stop_metric_follows_protocol_ks():
    assert parse_params({"protocol": {"ks": [5, 100], "early_stop_metric": "recall@100"}}).protocol.ks == [5, 100]
    fails({"protocol": {"ks": [20, 50]}}, "protocol.early_stop_metric:", "ndcg@20")  # default ndcg@10 not in ks


@pytest.mark.parametrize(("index", "key"), [
    ({"nprobe": 8}, "index.nprobe"),
    ({"factory": "HNSW32", "nprobe": 8}, "index.nprobe"),
    ({"factory": "IVF256,Flat", "ef_search": 32}, "index.ef_search"),
    ({"refine_k_factor": 4}, "index.refine_k_factor"),
    ({"factory": "IVF256,Flat", "refine_k_factor": 4}, "index.refine_k_factor"),
])
def test_index_search_settings_the_factory_lacks_are_refused(index, key):
    fails({"index": index}, f"{key}:", index.get("factory", "Flat"))


def test_index_search_settings_default_to_unset_and_apply_where_the_factory_has_them():
    p = parse_params({}).index
    assert (p.nprobe, p.ef_search, p.refine_k_factor) == (None, None, None)
    for index in ({"factory": "IVF256,Flat", "nprobe": 8}, {"factory": "HNSW32", "ef_search": 32},
                  {"factory": "IVF64,PQ16x4fs,RFlat", "nprobe": 8, "refine_k_factor": 16},
                  {"factory": "IVF64,SQ8,Refine(Flat)", "refine_k_factor": 4},
                  {"factory": "IVF1024_HNSW32,Flat", "nprobe": 8, "ef_search": 32}):
        got = parse_params({"index": index}).index
        assert all(getattr(got, k) == v for k, v in index.items()), index


# Options the chosen settings ignore are refused when written, naming the keys (a key counts as written when it
# is in the file or in a variant's overrides: pydantic's model_fields_set).

def test_joint_needs_alignment():
    fails({"train": {"joint": True}}, "train: joint: true with align_alpha 0", "align_alpha above 0")
    fails({"train_variants": {"j": {"joint": True}}}, "train_variants.j: joint: true with align_alpha 0")
    assert parse_params({"train_variants": {"j": {"joint": True, "align_alpha": 0.5}}}).train_variant("j").joint


def test_joint_needs_train_id_full_cross_entropy():
    sampled = {"loss": "sampled_softmax"}
    fails({"train_id": sampled, "train": {"joint": True, "align_alpha": 0.5}},
          "train: joint: true", "train_id.loss sampled_softmax", "train_id.loss: ce")
    # a variant turning joint on is checked too, although the train section itself is not joint
    msg = fails({"train_id": sampled, "train_variants": {"content": {}, "molar_joint": {"joint": True,
                                                                                         "align_alpha": 0.5}}},
                "train_variants.molar_joint: joint: true", "train_id.loss sampled_softmax")
    assert "content" not in msg
    assert parse_params({"train_id": sampled, "train_variants": {"molar": {"align_alpha": 0.5}}})
    assert parse_params({"train_variants": {"j": {"joint": True, "align_alpha": 0.5}}})  # train_id.loss ce


@pytest.mark.parametrize("rec_loss", ["bce", "ce"])
@pytest.mark.parametrize("written", [{"num_negatives": 64}, {"temperature": 0.05},
                                     {"num_negatives": 64, "temperature": 0.1}])
def test_infonce_only_keys_are_refused_with_other_losses(rec_loss, written):
    fails({"train": {"rec_loss": rec_loss, **written}},
          f"train: {', '.join(written)}: read by rec_loss infonce only (rec_loss is {rec_loss})")
    # written in the train section, they are refused in a variant that changes the loss, and vice versa
    fails({"train": written, "train_variants": {"v": {"rec_loss": rec_loss}}}, "train_variants.v: ",
          *written, f"rec_loss is {rec_loss}")
    fails({"train": {"rec_loss": rec_loss}, "train_variants": {"v": written}}, "train_variants.v: ", *written)
    assert parse_params({"train": {"rec_loss": "infonce", **written}})
    assert parse_params({"train": {"rec_loss": rec_loss}}).train.temperature == 0.07  # the default, unread
    # a default written out changes nothing, so it is accepted (params.yaml lists the defaults)
    assert parse_params({"train": {"rec_loss": rec_loss, "num_negatives": None, "temperature": 0.07}})


def test_variants_count_only_written_keys_as_set():
    p = parse_params({"train": {"lr": 0.01}, "train_variants": {"b": {"rec_loss": "bce"}}})
    assert p.train_variant("b").model_fields_set == {"lr", "rec_loss"}
    assert (p.train_variant("b").lr, p.train_variant("b").rec_loss) == (0.01, "bce")


def test_train_id_num_negatives_only_with_sampled_softmax():
    fails({"train_id": {"num_negatives": 64}}, "train_id: num_negatives: read by loss sampled_softmax only")
    fails({"train_id": {"loss": "ce", "num_negatives": 128}}, "train_id: num_negatives")
    assert parse_params({"train_id": {"loss": "ce", "num_negatives": 256}})  # the default written out: no effect
    assert parse_params({"train_id": {"loss": "sampled_softmax", "num_negatives": 64}}).train_id.num_negatives == 64
    assert parse_params({"train_id": {"loss": "sampled_softmax"}}).train_id.num_negatives == 256


@pytest.mark.parametrize("written", [{"dim": 128}, {"layers": 3}, {"heads": 4}, {"dim": 32, "layers": 1, "heads": 4}])
def test_small_transformer_shape_is_refused_with_an_llm_user_encoder(written):
    llm = {"user_encoder": "llm", "llm_model": "some/llm"}
    fails({"train": {**llm, **written}}, f"train: {', '.join(written)}: user_encoder llm: the LLM's width")
    fails({"train": written, "train_variants": {"big": llm}}, "train_variants.big: ", *written, "user_encoder llm")
    assert parse_params({"train": {**llm, "llm_layers": 2}}).train.llm_layers == 2


def test_llm_layers_is_refused_with_the_small_user_encoder():
    fails({"train": {"llm_layers": 2}}, "train: llm_layers: read by user_encoder llm only")
    assert parse_params({"train": {"llm_layers": None, "user_encoder": "small"}})  # the default: no effect
    llm = {"user_encoder": "llm", "llm_model": "x", "llm_layers": 2}
    fails({"train": llm, "train_variants": {"v": {"user_encoder": "small"}}}, "train_variants.v: llm_layers")
    assert parse_params({"train_variants": {"v": llm}}).train_variant("v").llm_layers == 2


@pytest.mark.parametrize("data", [
    {},
    {"train_id": {"loss": "sampled_softmax", "num_negatives": 64}},
    {"train": {"rec_loss": "bce", "user_encoder": "llm", "llm_model": "x"}, "train_variants": {"m": {}}},
    {"train": {"align_alpha": 0.5, "joint": True, "lr_schedule": "cosine", "warmup_steps": 10}},
])
def test_a_dump_loads_again_as_the_same_params(data):
    """A dump leaves out the keys its settings ignore, so writing it back (bench/sweep.py, tests) validates."""
    p = parse_params(data)
    again = parse_params(yaml.safe_load(yaml.safe_dump(p.model_dump())))
    assert again == p
    assert again.train_variants == p.train_variants
    assert all(again.train_variant(n) == p.train_variant(n) for n in p.train_variants)


def test_repo_params_yaml_dump_loads_again():
    p = load_params(REPO / "params.yaml")
    assert parse_params(p.model_dump()) == p
    assert "num_negatives" not in p.model_dump()["train_id"]  # loss ce does not read it
