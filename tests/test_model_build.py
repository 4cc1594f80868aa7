"""molar_core.models.build and molar_core.checkpoint.write_checkpoint: what the training stages build and write,
usable from the library with plain values (the same seed gives the same initial weights)."""

from __future__ import annotations

import json

import pytest
import torch

import molar_core
from molar_core.checkpoint import CHECKPOINT_FORMAT, open_checkpoint, write_checkpoint
from molar_core.io import sha256_file
from molar_core.models.build import build_molar, build_sasrec, resolve_user_encoder
from molar_core.models.content import ContentConfig, ContentUserModel
from molar_core.models.molar import Molar, MolarLossConfig
from molar_core.models.sasrec import SASRec, SASRecConfig
from molar_core.training import seed_everything


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_build_sasrec_draws_the_weights_sasrec_draws_and_sets_sparse_updates():
    cfg = SASRecConfig(num_items=30, dim=16, max_len=8)
    seed_everything(3)
    built = build_sasrec(cfg, sparse_item_updates=True)
    seed_everything(3)
    assert _same_state(built, SASRec(cfg)) and built.item_emb.sparse
    assert not build_sasrec(cfg).item_emb.sparse


def test_build_molar_draws_content_then_head_weights():
    cfg, loss = ContentConfig(num_items=30, input_dim=12, dim=16, adapter_hidden=8), MolarLossConfig(align_alpha=0.5)
    feats = torch.randn(30, 12)
    seed_everything(5)
    sasrec = SASRec(SASRecConfig(num_items=30, dim=8))
    built = build_molar(cfg, feats, loss, sasrec)
    seed_everything(5)
    sasrec_again = SASRec(SASRecConfig(num_items=30, dim=8))
    assert _same_state(built, Molar(ContentUserModel(cfg, feats), loss, sasrec_again))
    assert built.head is not None and built.head.out_features == 8


def test_a_small_user_encoder_needs_no_resolving():
    cfg = ContentConfig(num_items=3, input_dim=4, llm_model=None)
    assert resolve_user_encoder(cfg) is cfg
    with pytest.raises(ValueError, match="train.llm_model"):
        resolve_user_encoder(ContentConfig(num_items=3, input_dim=4, user_encoder="llm"), "train.llm_model")


def test_an_llm_user_encoder_takes_the_llms_width(tmp_path):
    from transformers import Qwen2Config

    Qwen2Config(vocab_size=11, hidden_size=24, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                num_key_value_heads=1).save_pretrained(tmp_path)
    cfg = resolve_user_encoder(ContentConfig(num_items=3, input_dim=4, dim=64, user_encoder="llm",
                                             llm_model=str(tmp_path)))
    assert cfg.dim == 24 and cfg.llm_model == str(tmp_path.resolve())


def test_a_written_checkpoint_reloads_as_a_recommender(tmp_path):
    items = tmp_path / "items.parquet"
    items.write_bytes(b"the items table a model was trained on")
    seed_everything(0)
    model = build_sasrec(SASRecConfig(num_items=20, dim=8, max_len=6)).eval()
    users = torch.tensor([1, 2])
    histories = torch.tensor([[0, 0, 0, 1, 2, 3], [0, 0, 0, 0, 5, 6]])
    with torch.no_grad():
        vectors = model.user_vectors(histories)
    config = {"model": "sasrec", "config": model.cfg.to_dict(),
              "data": {"items_sha256": sha256_file(items), "num_items": 20, "num_users": 2}}
    target = tmp_path / "artifacts" / "sasrec"
    write_checkpoint(target, config, dict(model.state_dict()), model.item_vectors().detach(), users,
                     {s: vectors.clone() for s in ("train", "valid", "test", "next")}, {"model": "sasrec"},
                     {"early_stopped.safetensors": dict(model.state_dict())})
    assert json.loads((target / "config.json").read_text())["format_version"] == CHECKPOINT_FORMAT
    assert (target / "early_stopped.safetensors").exists()
    ckpt = open_checkpoint(target)
    ckpt.check_data(items, 2)
    rec = molar_core.load(target, rebuild="rebuild it")
    assert torch.allclose(rec.user_vector([1, 2, 3]), vectors[0], atol=1e-6)
    assert [i for i, _ in rec.recommend([1, 2, 3], k=3)] == [i for i, _ in rec.recommend_many([[1, 2, 3]], k=3)[0]]


def test_a_checkpoint_without_its_data_or_of_another_format_is_not_written(tmp_path):
    model = build_sasrec(SASRecConfig(num_items=4, dim=8))
    args = (dict(model.state_dict()), model.item_vectors().detach(), torch.tensor([1]), {"next": torch.zeros(1, 8)},
            {})
    with pytest.raises(ValueError, match="data"):
        write_checkpoint(tmp_path / "a", {"model": "sasrec"}, *args)
    with pytest.raises(ValueError, match="format_version"):
        write_checkpoint(tmp_path / "b", {"model": "sasrec", "data": {}, "format_version": 1}, *args)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
