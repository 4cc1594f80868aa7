"""The user transformer initialised from a decoder LLM: a tiny Qwen2 that the test saves, loaded the real way."""

from __future__ import annotations

import pytest
import torch

from molar_core.data.sequences import pad_left
from molar_core.models.content import ContentConfig, ContentUserModel
from molar_core.models.molar import Molar, MolarLossConfig


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("llm") / "tiny-qwen2"
    Qwen2ForCausalLM(cfg).save_pretrained(path, safe_serialization=True)
    return path


def _model(tiny_llm, layers=None, dropout=0.0):
    torch.manual_seed(1)
    cfg = ContentConfig(num_items=20, input_dim=12, max_len=10, dim=32, dropout=dropout, adapter_hidden=16,
                        user_encoder="llm", llm_model=str(tiny_llm), llm_layers=layers)
    return ContentUserModel(cfg, torch.randn(20, 12)).eval()


def test_layers_come_from_the_llm_and_word_embeddings_are_dropped(tiny_llm):
    from safetensors.torch import load_file

    model = _model(tiny_llm, layers=2)
    names = [n for n, _ in model.named_parameters()]
    assert not any("embed_tokens" in n or "lm_head" in n for n in names)
    assert len(model.encoder.backbone.layers) == 2
    saved = load_file(str(tiny_llm / "model.safetensors"))
    got = model.encoder.backbone.layers[1].self_attn.q_proj.weight
    assert torch.equal(got, saved["model.layers.1.self_attn.q_proj.weight"])


def test_user_vector_ignores_left_padding_and_the_future(tiny_llm):
    model = _model(tiny_llm)
    hist = [3, 7, 1, 9]
    with torch.no_grad():
        alone = model.user_vectors(pad_left([hist], 10))
        batch = model.user_vectors(pad_left([hist, list(range(1, 11))], 10))[0]
        h_short = model.hidden(pad_left([hist[:2]], 10))[0, -1]
        h_long = model.hidden(pad_left([hist], 10))[0, 1 - len(hist)]  # position of hist[1] in the longer one
    assert torch.allclose(alone[0], batch, atol=1e-5)
    assert torch.allclose(h_short, h_long, atol=1e-5)  # causal: later items do not change earlier states


def test_molar_with_llm_user_encoder_trains(tiny_llm):
    model = Molar(_model(tiny_llm, dropout=0.1).train(), MolarLossConfig())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    seqs = [[(i + j) % 20 + 1 for j in range(8)] for i in range(20)]
    first = None
    for _ in range(40):
        loss, parts = model.loss(seqs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = parts["loss"] if first is None else first
    assert parts["loss"] < 0.7 * first


def test_dim_must_match_the_llm(tiny_llm):
    cfg = ContentConfig(num_items=5, input_dim=4, dim=64, user_encoder="llm", llm_model=str(tiny_llm))
    with pytest.raises(ValueError, match="hidden size"):
        ContentUserModel(cfg, torch.randn(5, 4))


def test_train_stage_with_an_llm_user_encoder(small_workspace, tiny_llm, one_torch_thread):
    """train.user_encoder: llm through the real stage: dim comes from the LLM, and the config records it."""
    from pipeline.params import parse_params
    from stages import train

    p = parse_params({"train": {"max_epochs": 1, "max_len": 20, "batch_size": 64, "adapter_hidden": 16,
                                "user_encoder": "llm", "llm_model": str(tiny_llm), "llm_layers": 1},
                      "train_variants": {"llm": {"align_alpha": 0.0}}})
    cfg = train.run("llm", p.train_variant("llm"), p.protocol, small_workspace)
    assert cfg["content_config"]["dim"] == 32 and cfg["content_config"]["user_encoder"] == "llm"
    assert (small_workspace / "artifacts/llm/user_vectors.safetensors").exists()


def test_llm_user_encoder_needs_a_model():
    from molar_core.errors import MolarError
    from pipeline.params import parse_params

    with pytest.raises(MolarError, match="train.*llm_model"):
        parse_params({"train": {"user_encoder": "llm"}})
