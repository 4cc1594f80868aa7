"""The content user model ("DUEG" in the paper, small-transformer variant): frozen cached item vectors pass
through a trainable adapter, and a causal transformer reads the user's history of adapted vectors.

The adapter lets the frozen encoder's space be reshaped for recommendation; the same adapted vectors score
items at inference, so the FAISS index is built over them. `hybrid` adds a learnable item-id embedding to the
adapted vector (beyond the paper), combining content with collaborative identity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from molar_core.models.causal_transformer import CausalTransformer, Dropout, bert_init_


@dataclass
class ContentConfig:
    """The content user model's architecture. The defaults are the pipeline's (pipeline/params.py takes train's
    from here), so a library user gets the model the default pipeline trains."""

    num_items: int
    input_dim: int  # width of the cached item vectors
    max_len: int = 50
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    adapter_hidden: int = 256
    hybrid: bool = False
    norm: str = "post"  # the small user transformer: post-LN with BERT's N(0, 0.02) init (as SASRec's), or pre-LN
    user_encoder: str = "small"  # small: CausalTransformer; llm: layers of a pretrained decoder LLM (llm_model)
    llm_model: str | None = None  # local directory of a causal LM (user_encoder: llm); dim = its hidden size
    llm_layers: int | None = None  # keep only the LLM's first N layers (None: all)
    train_items: int | None = None  # the training catalogue is ids 1..train_items (None: all); later ids are
    # cold items (prepare.cold_items): no loss scores them, the adapter makes their vectors from content alone

    @property
    def catalogue(self) -> int:
        """Items a training step scores: 1..catalogue."""
        return self.num_items if self.train_items is None else self.train_items

    def to_dict(self) -> dict:
        return asdict(self)


class ContentUserModel(nn.Module):
    def __init__(self, cfg: ContentConfig, item_features: torch.Tensor):
        super().__init__()
        if item_features.shape != (cfg.num_items, cfg.input_dim):
            raise ValueError(f"item_features shape {tuple(item_features.shape)} != ({cfg.num_items}, {cfg.input_dim})")
        self.cfg = cfg
        feats = torch.cat([torch.zeros(1, cfg.input_dim), item_features.float()])
        self.register_buffer("features", feats, persistent=False)
        self.adapter = nn.Sequential(nn.LayerNorm(cfg.input_dim), nn.Linear(cfg.input_dim, cfg.adapter_hidden),
                                     nn.GELU(), Dropout(cfg.dropout), nn.Linear(cfg.adapter_hidden, cfg.dim))
        self.id_emb = nn.Embedding(cfg.num_items + 1, cfg.dim, padding_idx=0) if cfg.hybrid else None
        if self.id_emb is not None:
            nn.init.normal_(self.id_emb.weight, std=0.02)
            with torch.no_grad():  # padding and cold items: no id embedding (content alone), as for added items
                self.id_emb.weight[0].zero_()
                self.id_emb.weight[cfg.catalogue + 1:].zero_()
        if cfg.user_encoder == "small":
            self.encoder = CausalTransformer(cfg.dim, cfg.layers, cfg.heads, cfg.dropout, cfg.max_len, cfg.norm)
            if cfg.norm == "post":
                bert_init_(self.encoder)
        elif cfg.user_encoder == "llm":
            from molar_core.models.llm_user_encoder import LLMUserEncoder

            if cfg.llm_model is None:
                raise ValueError("user_encoder llm needs llm_model (a causal LM directory)")
            self.encoder = LLMUserEncoder.from_pretrained(cfg.llm_model, cfg.llm_layers)
            if self.encoder.dim != cfg.dim:
                raise ValueError(f"dim ({cfg.dim}) must equal the LLM's hidden size ({self.encoder.dim})")
        else:
            raise ValueError(f"user_encoder must be small or llm, got {cfg.user_encoder!r}")

    def item_table(self, ids: torch.Tensor | None = None, catalogue: bool = False) -> torch.Tensor:
        """Adapted vectors of the given item ids (when None: all items 1..N, or with `catalogue` the training
        catalogue 1..cfg.catalogue)."""
        if ids is None:
            n = self.cfg.catalogue if catalogue else self.cfg.num_items
            ids = torch.arange(1, n + 1, device=self.features.device)
        x = self.adapter(self.features[ids])
        if self.id_emb is not None:
            x = x + self.id_emb(ids)
        return x * (ids > 0).unsqueeze(-1)

    def hidden(self, seq: torch.Tensor, table: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states over a history. `table` (all adapted items, from item_table()) lets a training step
        run the adapter once per catalogue item instead of once per history position."""
        if table is None:
            return self.encoder(self.item_table(seq), seq > 0)
        padded = torch.cat([table.new_zeros(1, table.shape[1]), table])
        return self.encoder(padded[seq], seq > 0)

    def user_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        return self.hidden(seq)[:, -1].contiguous()  # a copy: a view would keep all (B, L, D) states alive

    def item_vectors(self) -> torch.Tensor:
        return self.item_table()
