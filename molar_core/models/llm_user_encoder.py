"""The user transformer initialised from a pretrained decoder LLM (the paper's design; for GPU users).

The LLM's transformer layers and final norm read the adapted item vectors as `inputs_embeds`; its word
embeddings are dropped (items are not words) and its LM head is never loaded. The interface is that of
CausalTransformer: vectors (B, L, D) and a padding mask in, hidden states (B, L, D) out, with D the LLM's
hidden size. Left padding is masked and position ids count real items only, so a history gives the same user
vector however much padding its batch needs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class LLMUserEncoder(nn.Module):
    def __init__(self, backbone: nn.Module, layers: int | None = None):
        super().__init__()
        if layers is not None:  # keep the first `layers` blocks (a cheaper, shallower initialisation)
            backbone.layers = backbone.layers[:layers]
            backbone.config.num_hidden_layers = layers
            if hasattr(backbone.config, "layer_types"):
                backbone.config.layer_types = backbone.config.layer_types[:layers]
        backbone.embed_tokens = None  # word embeddings are not used: inputs are item vectors
        self.backbone = backbone
        self.dim = int(backbone.config.hidden_size)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, layers: int | None = None, trust_remote_code: bool = False,
                        dtype: torch.dtype = torch.float32) -> "LLMUserEncoder":
        """The decoder of a causal LM directory (e.g. Qwen2-0.5B), without its LM head."""
        from transformers import AutoModel

        return cls(AutoModel.from_pretrained(model_dir, dtype=dtype, use_safetensors=True,
                                             trust_remote_code=trust_remote_code), layers)

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        mask = real.long()
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        out = self.backbone(inputs_embeds=x, attention_mask=mask, position_ids=positions, use_cache=False)
        return out.last_hidden_state
