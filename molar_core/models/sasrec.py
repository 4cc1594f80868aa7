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
    """SASRec's architecture. The defaults are the pipeline's (pipeline/params.py takes train_id's from here), so
    a library user gets the model the default pipeline trains."""

    num_items: int  # real items; ids 1..num_items, 0 = padding
    max_len: int = 50
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    norm: str = "post"  # post: RecBole's encoder (post-LN, input LN, N(0, 0.02) init, unscaled); pre: pre-LayerNorm
    train_items: int | None = None  # the training catalogue is ids 1..train_items (None: all); later ids are
    # cold items (prepare.cold_items) that no loss or validation scores, so their rows keep their initial values

    @property
    def catalogue(self) -> int:
        """Items a training step scores: 1..catalogue."""
        return self.num_items if self.train_items is None else self.train_items

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
    """Next-item loss at every real position of a batch of training sequences.

    Inside a data-parallel training step (molar_core.distributed.ddp.active()), `seqs` is the global batch and
    the result is this rank's share: the loss summed over the rank's rows (DataParallel.rows) divided by the
    global batch's count of positions; the ranks' shares add up to the one-process loss (the sampled negatives
    are one draw per call, the same on every rank)."""
    from molar_core.data.sequences import next_item_pairs
    from molar_core.distributed.ddp import active
    from molar_core.losses import full_softmax_ce, sampled_softmax_ce

    device = model.item_emb.weight.device
    inputs, targets = next_item_pairs(seqs, model.cfg.max_len)
    total = None
    if (dp := active()) is not None:  # the global batch's pairs (one width on every rank), this rank's rows
        total = int((targets > 0).sum())
        start, stop = dp.rows(len(seqs))
        inputs, targets = inputs[start:stop], targets[start:stop]
    inputs, targets = inputs.to(device), targets.to(device)
    h = model.hidden(inputs)
    real = targets > 0
    h, t = h[real], targets[real]
    n = model.cfg.catalogue
    if loss == "ce":
        value = full_softmax_ce(h, model.item_vectors()[:n], t, total=total)
    else:
        # a sparse item table (train_id.sparse_item_updates) is read row by row, so its gradient stays sparse
        table = model.item_emb if model.item_emb.sparse else model.item_vectors()[:n]
        value = sampled_softmax_ce(h, table, t, num_negatives, generator, n, total=total)
    return value, {"loss": float(value.detach())}


WEIGHTS = {"model": "model.safetensors", "early_stopped": "early_stopped.safetensors"}


def _read_config(directory, rebuild: str) -> dict:
    import json

    from molar_core.errors import ArtifactError

    cfg_path = directory / "config.json"
    if not cfg_path.exists():
        raise ArtifactError(str(cfg_path), "not found", rebuild)
    conf = json.loads(cfg_path.read_text())
    if conf.get("model") != "sasrec":
        raise ArtifactError(str(cfg_path), f"is a {conf.get('model')!r} checkpoint, not sasrec", rebuild)
    return conf


def sasrec_weights_path(directory, weights: str = "model", rebuild: str = "dvc repro train_id"):
    """The weights file of a SASRec checkpoint directory. `early_stopped`: the early-stopped run's weights, which
    differ from the saved model only after a refit (trained on the validation items too, so a model that
    validates must not learn from it); without a refit the saved model is the early-stopped one."""
    from pathlib import Path

    from molar_core.errors import ArtifactError

    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    directory = Path(directory)
    conf = _read_config(directory, rebuild)
    path = directory / WEIGHTS[weights if conf.get("refit") else "model"]
    if not path.exists() and weights == "early_stopped":
        raise ArtifactError(str(path), "not found: a refit SASRec needs its early-stopped weights beside it",
                            rebuild)
    return path


def load_sasrec(directory, rebuild: str = "dvc repro train_id", weights: str = "model") -> SASRec:
    """Load a SASRec checkpoint directory written by train_id (config.json + model.safetensors, or with
    `weights="early_stopped"` the early-stopped run's weights: sasrec_weights_path)."""
    from pathlib import Path

    from molar_core.errors import ArtifactError
    from molar_core.vectors import load_tensors

    path = sasrec_weights_path(directory, weights, rebuild)
    model = SASRec(SASRecConfig(**_read_config(Path(directory), rebuild)["config"]))
    state = load_tensors(path, rebuild)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(str(path), f"incompatible checkpoint (missing {missing}, unexpected {unexpected})",
                            rebuild)
    return model.eval()
