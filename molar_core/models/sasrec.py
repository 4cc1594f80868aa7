"""SASRec (Kang & McAuley 2018), strong variant: shared item embeddings score every item at every position.

Trained with full softmax cross-entropy (or sampled softmax with many negatives for large catalogues), as
re-evaluations found this far stronger than the original one-negative BCE.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from molar_core.models.causal_transformer import CausalTransformer, Dropout, bert_init_


@dataclass
class SASRecConfig:
    num_items: int  # real items; ids 1..num_items, 0 = padding
    max_len: int = 200
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    norm: str = "pre"  # pre: pre-LayerNorm; post: RecBole's encoder (post-LN, input LN, N(0, 0.02) init, unscaled)

    def to_dict(self) -> dict:
        return asdict(self)


class SASRec(nn.Module):
    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.num_items + 1, cfg.dim, padding_idx=0)
        self.encoder = CausalTransformer(cfg.dim, cfg.layers, cfg.heads, cfg.dropout, cfg.max_len, cfg.norm)
        self.emb_drop = Dropout(cfg.dropout)
        self.scale = cfg.dim ** 0.5 if cfg.norm == "pre" else 1.0
        nn.init.normal_(self.item_emb.weight, std=cfg.dim ** -0.5)
        if cfg.norm == "post":
            bert_init_(self)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def hidden(self, seq: torch.Tensor) -> torch.Tensor:
        """seq: (B, L) left-padded item ids -> hidden states (B, L, D)."""
        x = self.item_emb(seq) * self.scale
        return self.encoder(self.emb_drop(x), seq > 0)

    def user_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        """The user vector is the hidden state at the last (newest) position."""
        return self.hidden(seq)[:, -1].contiguous()  # a copy: a view would keep all (B, L, D) states alive

    def item_vectors(self) -> torch.Tensor:
        """Scoring vectors of items 1..N (row i is item i+1)."""
        return self.item_emb.weight[1:]


def sasrec_loss(model: SASRec, seqs: list[list[int]], loss: str = "ce", num_negatives: int = 256,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-item loss at every real position of a batch of training sequences."""
    from molar_core.data.sequences import next_item_pairs
    from molar_core.losses import full_softmax_ce, sampled_softmax_ce

    device = model.item_emb.weight.device
    inputs, targets = next_item_pairs(seqs, model.cfg.max_len)
    inputs, targets = inputs.to(device), targets.to(device)
    h = model.hidden(inputs)
    real = targets > 0
    h, t = h[real], targets[real]
    if loss == "ce":
        value = full_softmax_ce(h, model.item_vectors(), t)
    else:
        # a sparse item table (train_id.sparse_item_updates) is read row by row, so its gradient stays sparse
        table = model.item_emb if model.item_emb.sparse else model.item_vectors()
        value = sampled_softmax_ce(h, table, t, num_negatives, generator, model.cfg.num_items)
    return value, {"loss": float(value.detach())}


def load_sasrec(directory, rebuild: str = "dvc repro train_id") -> SASRec:
    """Load a SASRec checkpoint directory written by train_id (config.json + model.safetensors)."""
    import json
    from pathlib import Path

    from molar_core.errors import ArtifactError
    from molar_core.vectors import load_tensors

    directory = Path(directory)
    cfg_path = directory / "config.json"
    if not cfg_path.exists():
        raise ArtifactError(str(cfg_path), "not found", rebuild)
    conf = json.loads(cfg_path.read_text())
    if conf.get("model") != "sasrec":
        raise ArtifactError(str(cfg_path), f"is a {conf.get('model')!r} checkpoint, not sasrec", rebuild)
    model = SASRec(SASRecConfig(**conf["config"]))
    state = load_tensors(directory / "model.safetensors", rebuild)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(str(directory / "model.safetensors"), f"incompatible checkpoint (missing {missing}, "
                            f"unexpected {unexpected})", rebuild)
    return model.eval()
