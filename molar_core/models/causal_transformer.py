"""A causal transformer over left-padded sequences, shared by every user model: pre-LayerNorm (default), or
post-LayerNorm with a LayerNorm on the input (`norm="post"`, the BERT-style encoder RecBole's SASRec uses).

Sequences are left-padded so the last position is always the newest item (the user vector).
Each position attends to itself and the real items before it; pads are never attended by real positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Dropout(nn.Module):
    """Inverted dropout from a uniform draw: same distribution as nn.Dropout, about 1.5x faster forward and
    backward on the CPU (torch's bernoulli_ sampler was a quarter of a SASRec step; see bench/train_step.py)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * ((torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p))).to(x.dtype)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, norm: str = "pre"):
        super().__init__()
        self.heads = heads
        self.post = norm == "post"
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), Dropout(dropout), nn.Linear(4 * dim, dim))
        self.drop = Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x if self.post else self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.attn_dropout if self.training else 0.0)
        attended = self.drop(self.proj(a.transpose(1, 2).reshape(b, n, d)))
        if self.post:
            x = self.ln1(x + attended)
            return self.ln2(x + self.drop(self.ff(x)))
        x = x + attended
        return x + self.drop(self.ff(self.ln2(x)))


def bert_init_(module: nn.Module) -> None:
    """BERT's initialisation, which RecBole's SASRec uses with the post-LN layout: every Linear and Embedding
    weight N(0, 0.02), Linear biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


class CausalTransformer(nn.Module):
    """Input: vectors (B, L, D) and a padding mask (B, L, True = real item). Output: (B, L, D)."""

    def __init__(self, dim: int, layers: int, heads: int, dropout: float, max_len: int, norm: str = "pre"):
        super().__init__()
        if norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")
        self.pos = nn.Embedding(max_len, dim)
        self.drop = Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout, norm) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)  # pre: on the output; post: on the input
        self.max_len = max_len
        self.post = norm == "post"

    def forward(self, x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        x = x + self.pos(torch.arange(self.max_len - n, self.max_len, device=x.device))
        x = self.drop((self.ln(x) if self.post else x) * real.unsqueeze(-1))
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        mask = ((causal & real.unsqueeze(1)) | eye).unsqueeze(1)  # (B, 1, L, L): True = may attend
        for block in self.blocks:
            x = block(x, mask)
        return x if self.post else self.ln(x)
