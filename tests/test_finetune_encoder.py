"""Stage 1 (finetune_encoder): mixtures built from the data with counted skips, the two objectives against
references computed another way, training that moves the vectors embed computes, LoRA merged into a plain model
directory, the stage's artifacts, and embed's refusal of a fine-tuned model used with other settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from molar_core.encoders import EncoderConfig, build_encoder
from molar_core.encoders.base import EncoderError
from molar_core.encoders.tiny import build_tiny_qwen2vl
from molar_core.finetune.encoder_training import FinetuneConfig, MixtureSpec, finetune_encoder, save_encoder
from molar_core.finetune.mixtures import Pair, View, build_mixtures, split_title
from molar_core.finetune.objectives import ItemViews, contrastive_loss, generative_loss, masked_info_nce
from molar_core.training import FitConfig
from pipeline import paths
from pipeline.params import ParamsError, parse_params
from tests.conftest import ML100K_POSTERS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GENRES = ["Drama", "Comedy", "Horror"]


def fixture_items(tmp_path: Path, n: int = 24) -> tuple[list[str], list[str | None]]:
    """Item texts as prepare writes them (one without a title, one title-only) and images for two items in three,
    coloured by genre so that images carry the genre signal."""
    texts = [f"Title: Film {i}. Class: {GENRES[i % 3]}" for i in range(n)]
    texts[5] = "An item whose text has no title field"
    texts[7] = "Title: Only a title"
    paths_ = []
    for i in range(n):
        if i % 3 == 2:
            paths_.append(None)
            continue
        p = tmp_path / f"img{i}.png"
        Image.new("RGB", (56, 84), [(200, 30, 30), (30, 200, 30), (30, 30, 200)][i % 3]).save(p)
        paths_.append(str(p))
    return texts, paths_


def tiny_encoder(tmp_path: Path, texts: list[str], **cfg) -> object:
    model = build_tiny_qwen2vl(tmp_path / "base", seed=0, hidden=64, layers=2, heads=2, corpus=texts * 3)
    return build_encoder(EncoderConfig(encoder="mllm", model=str(model), backend="transformers", device="cpu",
                                       batch_size=16, max_pixels=28 * 28 * 4, **cfg))


def genre_sequences(n: int, users: int = 30, length: int = 10) -> list[list[int]]:
    """Users who each stay within one genre: the next item is predictable from the genre of the recent ones."""
    g = torch.Generator().manual_seed(1)
    out = []
    for u in range(users):
        genre_items = [i + 1 for i in range(n) if i % 3 == u % 3]
        out.append([genre_items[j] for j in torch.randint(len(genre_items), (length,), generator=g).tolist()])
    return out


def test_mixtures_use_only_what_items_have_and_count_the_rest():
    texts = ["Title: A. Class: Drama", "no title here", "Title: B. Class: Comedy", "Title: C", ""]
    has_image = [True, True, False, True, False]
    seqs = [[1, 2, 3, 4], [3], [2, 1]]
    pairs, counts = build_mixtures({"IT": 100, "SA": 100, "UB": 100}, texts, has_image, seqs, history=2,
                                   generator=torch.Generator().manual_seed(0))
    by = {m: [p for p in pairs if p.mixture == m] for m in ("IT", "SA", "UB")}
    assert [p.key for p in by["IT"]] == [1, 2, 4]  # items with text and a usable image
    assert counts["IT"].skipped == {"no_image": 1, "no_text": 1}
    assert [(p.query[0].text, p.target.text) for p in by["SA"]] == [("A", "Class: Drama"), ("B", "Class: Comedy")]
    assert counts["SA"].skipped == {"no_title_or_rest": 2, "no_text": 1}
    # UB: every position after the first of every training sequence, the 2 previous items as the query
    assert [([v.item for v in p.query], p.target.item) for p in by["UB"]] == [
        ([1], 2), ([1, 2], 3), ([2, 3], 4), ([2], 1)]
    assert counts["UB"].skipped == {"sequence_shorter_than_2": 1}
    assert sum(c.used for c in counts.values()) == len(pairs)


def test_mixture_size_draws_a_seeded_subset():
    seqs = [list(range(1, 30))] * 4
    draw = [build_mixtures({"UB": 10}, [], [], seqs, 3, torch.Generator().manual_seed(s))[0] for s in (0, 0, 1)]
    assert len(draw[0]) == 10 and draw[0] == draw[1] and draw[0] != draw[2]
    _, counts = build_mixtures({"UB": 10}, [], [], seqs, 3, torch.Generator().manual_seed(0))
    assert (counts["UB"].available, counts["UB"].used) == (4 * 28, 10)


def test_split_title():
    assert split_title("Title: Toy Story. Release year: 1995. Class: Comedy") == (
        "Toy Story", "Release year: 1995. Class: Comedy")
    assert split_title("Title: Only") is None and split_title("Text: x. y") is None


def test_masked_info_nce_matches_a_loop_and_drops_same_target_negatives():
    g = torch.Generator().manual_seed(0)
    q, t = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    keys = [1, 2, 1, 3, 4]  # rows 0 and 2 share a target item

    def reference() -> float:
        qn, tn = F.normalize(q, dim=-1), F.normalize(t, dim=-1)
        total = 0.0
        for a, b in ((qn, tn), (tn, qn)):
            for i in range(5):
                negatives = [j for j in range(5) if j == i or keys[j] != keys[i]]
                logits = torch.stack([a[i] @ b[j] / 0.1 for j in negatives])
                total += -torch.log_softmax(logits, 0)[negatives.index(i)].item() / 10
        return total

    assert masked_info_nce(q, t, keys, 0.1).item() == pytest.approx(reference(), rel=1e-5)


def test_generative_loss_equals_per_item_unpadded_cross_entropy(tmp_path):
    texts, images = fixture_items(tmp_path, 9)
    enc = tiny_encoder(tmp_path, texts)
    views = ItemViews(enc, texts, images)
    pairs = [Pair("IT", (View("", image_of=1),), View(texts[0]), 1),
             Pair("SA", (View("Film 3"),), View("Class: Drama and a longer description"), 4),
             Pair("IT", (View("", image_of=2),), View(texts[1]), 2)]
    batch = generative_loss(views, pairs)
    tok_sum, tok_n = 0.0, 0
    for p in pairs:  # one pair at a time, no padding: the loss the batch must reproduce
        prompt, image = views.render([p.query[0]], summary="")
        q = enc.processor(text=prompt, images=[x for x in image if x is not None] or None, return_tensors="pt")
        t = enc.tokenizer([p.target.text + "<|im_end|>"], add_special_tokens=False, return_tensors="pt")
        ids = torch.cat([q["input_ids"], t["input_ids"]], dim=1)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                  "mm_token_type_ids": torch.cat([q["mm_token_type_ids"], torch.zeros_like(t["input_ids"])], 1)}
        for k in ("pixel_values", "image_grid_thw"):
            if k in q:
                inputs[k] = q[k]
        inputs["position_ids"], _ = enc.backbone.get_rope_index(
            input_ids=ids, mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs.get("image_grid_thw"),
            attention_mask=inputs["attention_mask"])
        enc.backbone.rope_deltas = None
        logits = enc.model(**inputs, use_cache=False).logits[0]
        n_q = q["input_ids"].shape[1]
        targets = ids[0, n_q:]
        tok_sum += F.cross_entropy(logits[n_q - 1:-1], targets, reduction="sum").item()
        tok_n += len(targets)
    assert batch.item() == pytest.approx(tok_sum / tok_n, rel=1e-4)


def _ub_loss(enc, texts, images, seqs) -> float:
    views = ItemViews(enc, texts, images)
    pairs, _ = build_mixtures({"UB": 64}, texts, views.has_image(), seqs, 3, torch.Generator().manual_seed(5))
    with torch.no_grad():
        return contrastive_loss(views, pairs, 0.05).item()


@pytest.mark.parametrize("method", ["full", "lora"])
def test_training_moves_the_vectors_embed_computes_and_the_saved_model_reproduces_them(tmp_path, method):
    texts, images = fixture_items(tmp_path)
    seqs = genre_sequences(len(texts))
    enc = tiny_encoder(tmp_path, texts)
    before_vecs = enc.encode(texts, images)
    before = _ub_loss(enc, texts, images, seqs)
    cfg = FinetuneConfig(mixtures={"IT": MixtureSpec(100), "SA": MixtureSpec(100, 1.0, "generative"),
                                   "UB": MixtureSpec(300)},
                         method=method, lora_r=8, fit=FitConfig(lr=3e-3, batch_size=32, max_epochs=3, patience=5))
    res = finetune_encoder(enc, texts, images, seqs, [s[:-1] for s in seqs], [s[-1] for s in seqs], cfg,
                           torch.Generator().manual_seed(0))
    assert res.counts["IT"]["skipped"] == {"no_image": 8} and res.counts["SA"]["skipped"] == {"no_title_or_rest": 2}
    assert len(res.fit.curve) == 3 and {"loss_IT", "loss_SA", "loss_UB"} <= set(res.fit.curve[0])
    if method == "lora":
        assert 0 < res.trainable_params < res.total_params / 5
    else:
        assert res.trainable_params == res.total_params
    assert _ub_loss(enc, texts, images, seqs) < before  # the recommendation objective improved
    after_vecs = enc.encode(texts, images)
    assert not torch.allclose(before_vecs, after_vecs)
    save_encoder(enc, tmp_path / "out")
    reloaded = build_encoder(EncoderConfig(encoder="mllm", model=str(tmp_path / "out"), backend="transformers",
                                           device="cpu", batch_size=5, max_pixels=28 * 28 * 4))
    assert torch.allclose(reloaded.encode(texts, images), after_vecs, atol=1e-5)
    assert not any(k.startswith("base_model") or "lora" in k for k in reloaded.model.state_dict())


def test_untrained_base_is_measured_not_trained(tmp_path):
    texts, images = fixture_items(tmp_path, 9)
    enc = tiny_encoder(tmp_path, texts)
    seqs = genre_sequences(9, users=6)
    before = enc.encode(texts, images)
    res = finetune_encoder(enc, texts, images, seqs, [s[:-1] for s in seqs], [s[-1] for s in seqs],
                           FinetuneConfig(mixtures={"UB": MixtureSpec(50)}, fit=FitConfig(max_epochs=0)),
                           torch.Generator().manual_seed(0))
    assert res.fit.curve == [] and "ndcg@10" in res.fit.best_metrics
    assert torch.equal(enc.encode(texts, images), before)


def test_params_reject_impossible_settings_by_key():
    with pytest.raises(ParamsError, match="UB.objective"):
        parse_params({"finetune_encoder": {"UB": {"objective": "generative"}}})
    with pytest.raises(ParamsError, match="finetune_encoder.scratch"):
        parse_params({"finetune_encoder": {"scratch": {"hidden": 100}}})
    with pytest.raises(ParamsError, match="finetune_encoder.IT.colour: unknown key"):
        parse_params({"finetune_encoder": {"IT": {"colour": 1}}})
    with pytest.raises(ParamsError, match="every mixture is off"):
        parse_params({"finetune_encoder": {"init": "scratch", "IT": {"size": 0}, "SA": {"size": 0},
                                           "UB": {"size": 0}}})


STAGE = {"init": "scratch", "threads": 1, "max_epochs": 2, "patience": 5, "batch_size": 16, "valid_users": 50,
         "IT": {"size": 60}, "SA": {"size": 60}, "UB": {"size": 120},
         "scratch": {"hidden": 64, "layers": 1, "heads": 2, "kv_heads": 1, "vision_depth": 1, "vision_dim": 32,
                     "vision_heads": 2, "vocab_size": 600}}
EMBED = {"encoder": "mllm", "model": "artifacts/encoder", "backend": "transformers", "max_pixels": 28 * 28 * 4,
         "batch_size": 16}


@pytest.fixture(scope="module")
def finetuned(small_workspace, tmp_path_factory) -> Path:
    """The small ML-100K workspace (posters where the shared copy has them) after finetune_encoder (scratch,
    2 epochs) and an embed with it."""
    import shutil

    from stages import embed, finetune_encoder as stage

    root = tmp_path_factory.mktemp("ft") / "ws"
    shutil.copytree(small_workspace / "data", root / "data")
    p = parse_params({"finetune_encoder": STAGE, "embed": EMBED})
    stage.run(p.finetune_encoder, p.embed, root)
    embed.run(p.embed, root)
    return root


def test_stage_writes_a_model_dir_embed_loads_and_records_what_it_did(finetuned):
    record = json.loads((finetuned / paths.ENCODER / "molar_finetune.json").read_text())
    assert record["init"] == "scratch" and record["method"] == "full" and record["epochs_run"] == 2
    assert record["settings"]["max_pixels"] == 28 * 28 * 4 and record["settings"]["pooling"] == "last"
    items = json.loads((finetuned / "data/prepared/stats.json").read_text())["items"]
    it = record["counts"]["IT"]
    assert it["available"] + it["skipped"].get("no_image", 0) == items  # every item accounted for
    assert (finetuned / "plots/finetune_encoder/curve.csv").read_text().count("\n") == 3
    emb = json.loads((finetuned / "metrics/embed.json").read_text())
    assert emb["embedded"] == items
    assert (emb["encode_counts"]["image_used"] > 0) == ML100K_POSTERS.is_dir()  # text-only without the posters
    tok = json.loads((finetuned / paths.ENCODER / "tokenizer.json").read_text())
    assert "Title" in "".join(tok["model"]["vocab"])  # the tokenizer was trained on the dataset's text


def test_embed_refuses_other_settings_or_a_stage_that_is_off(finetuned, tmp_path):
    from stages import embed, finetune_encoder as stage

    p = parse_params({"embed": {**EMBED, "max_pixels": 28 * 28}})
    with pytest.raises(EncoderError, match=r"embed.max_pixels is 784 but the encoder .* was fine-tuned with 3136"):
        embed.run(p.embed, finetuned)
    off = tmp_path / "off"
    (off / "data").mkdir(parents=True)
    p = parse_params({"embed": EMBED})
    stage.run(p.finetune_encoder, p.embed, off)  # init none
    assert json.loads((off / "metrics/finetune_encoder.json").read_text()) == {"init": "none"}
    with pytest.raises(EncoderError, match="finetune_encoder.init: none"):
        build_encoder(EncoderConfig(encoder="mllm", model=str(off / paths.ENCODER), backend="transformers"))
