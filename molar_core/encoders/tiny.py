"""Build a tiny random Qwen2-VL (tokenizer, config, weights, image processor) into a directory, offline.

No vision-language weights can be downloaded here, so tests and from-scratch runs use this: a byte-level BPE
tokenizer trained in milliseconds with the Qwen special tokens, a 2-layer text model and a 2-layer vision tower.
The build is deterministic for a seed (same files, same fingerprint), so caches keyed by it stay valid.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch

QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

_CORPUS = [
    "Compress the text and image into embedding. Item information: Item Image:",
    "Compress the text into embedding. user assistant system",
    "Title: Toy Story. Year: 1995. Class: Animation, Children's, Comedy, Drama, Action, Thriller, Romance",
    "Title: GoldenEye. Year: 1995. Class: Action, Adventure, Thriller. Sci-Fi, War, Western, Musical",
    "the of and a to in is was for on with as by at from that this it an be are or his her their",
    "0123456789 (1995) (1996) (1997) Film-Noir Documentary Horror Mystery Crime Fantasy",
]


def build_tiny_qwen2vl(target: str | Path, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 2,
                       vision_depth: int = 2, vocab_size: int = 512, max_pixels: int = 28 * 28 * 4,
                       kv_heads: int = 1, intermediate: int | None = None, vision_dim: int = 32,
                       vision_heads: int = 2, vision_mlp_ratio: int = 2, vocab_pad_to: int | None = None,
                       dtype: torch.dtype = torch.float32, device: str = "cpu",
                       corpus: list[str] | None = None) -> Path:
    """Write a loadable random Qwen2-VL to `target` (tiny by default, about 0.2 s) and return the directory.

    The shape arguments also build a released model's shape (bench/gpu.py: Qwen2-VL-2B's) to time it without
    its weights; `vocab_pad_to` widens the embedding table to a real vocabulary size beyond the trained tokens.
    `corpus` trains the tokenizer on a dataset's own text (fine-tuning from scratch) instead of the fixed one.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl import Qwen2VLImageProcessorPil

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=QWEN_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus if corpus is not None else _CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   model_max_length=2048)
    fast.save_pretrained(target)
    ids = {s: tok.token_to_id(s) for s in QWEN_SPECIAL}
    head_dim = hidden // heads
    section = head_dim // 2  # mrope splits the rotary half-dimension into temporal, height, width
    mrope = [section - 2 * (section // 3), section // 3, section // 3]
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=max(tok.get_vocab_size(), vocab_pad_to or 0), hidden_size=hidden,
                         intermediate_size=intermediate or 2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "mrope_section": mrope, "rope_theta": 10000.0},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=vision_depth, embed_dim=vision_dim, hidden_size=hidden, num_heads=vision_heads,
                           mlp_ratio=vision_mlp_ratio,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        with torch.device(device):
            model = Qwen2VLForConditionalGeneration(cfg).to(dtype)
    _save_quietly(model, target)
    Qwen2VLImageProcessorPil(max_pixels=max_pixels, min_pixels=min(max_pixels, 56 * 56)).save_pretrained(target)
    return target


def build_tiny_sentence_encoder(target: str | Path, seed: int = 0, hidden: int = 32, layers: int = 1,
                                heads: int = 2) -> Path:
    """Write a random BERT with all-MiniLM-L6-v2's tokenizer to `target`: a `sentence` encoder (embed.model: DIR)
    cheap enough to run the real embed stage over a million items (bench/scale.py). Deterministic for a seed."""
    import shutil

    from transformers import BertConfig, BertModel

    from molar_core.encoders.sentence import default_model_dir

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    source = default_model_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        if (source / name).exists():
            shutil.copyfile(source / name, target / name)
    cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=2 * hidden, max_position_embeddings=512)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BertModel(cfg)  # with its (unused) pooler, so AutoModel loads it without a MISSING report
    _save_quietly(model, target)
    return target


def _save_quietly(model, target: Path) -> None:
    """save_pretrained without its "Writing model shards" bar."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(target)
    finally:
        if was:
            hf_logging.enable_progress_bar()


def cache_root() -> Path:
    """Where built models are kept between runs: MOLAR_CACHE_DIR, else $XDG_CACHE_HOME/molar, else ~/.cache/molar."""
    if os.environ.get("MOLAR_CACHE_DIR"):
        return Path(os.environ["MOLAR_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "molar"


def cached_tiny_qwen2vl(seed: int = 0) -> Path:
    """The default tiny model (`embed.model: tiny`), built once per machine into cache_root() and reused.

    A temporary directory per encoder was left behind whenever its process was killed (a Ray actor, a fault
    test). The directory is keyed by the seed, this file and the tokenizer and transformers versions, built beside
    its final name and renamed into place, so a reader never sees a partial model and two processes building at
    once both end with the same files (the build is deterministic; the loser's copy is removed)."""
    import tokenizers
    import transformers

    key = hashlib.sha256(Path(__file__).read_bytes()
                         + f"{seed} {tokenizers.__version__} {transformers.__version__}".encode()).hexdigest()[:16]
    target = cache_root() / f"tiny-qwen2vl-{key}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        built = build_tiny_qwen2vl(staging / "model", seed=seed)
        try:
            os.rename(built, target)
        except OSError:
            if not target.is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
