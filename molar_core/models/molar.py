"""Molar: the content user model trained for next-item prediction plus post-alignment of its user vectors
with an ID-based user model (SASRec).

L = L_rec + alpha * L_align. L_align is a symmetric InfoNCE between the content user vector (through an optional
linear head into the ID model's width) and the ID user vector of the same sequence prefix; the rows of the batch
from other users are negatives (the same user's other windows and positions are not). The ID model is frozen by
default (pre-trained in `train_id`); `joint` trains it too, with its own full-catalogue cross-entropy added
(whatever loss `train_id` used: the params refuse any other).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from molar_core.data.sequences import next_item_pairs, row_users
from molar_core.distributed.ddp import active
from molar_core.losses import (
    bce_negatives,
    bce_one_negative,
    cosine_info_nce,
    full_softmax_ce,
    sample_negatives,
    symmetric_info_nce,
    symmetric_info_nce_sharded,
)
from molar_core.models.content import ContentUserModel
from molar_core.models.sasrec import SASRec


@dataclass
class MolarLossConfig:
    rec_loss: str = "infonce"  # infonce (cosine, learnable temperature) | bce (one negative) | ce (dot product)
    num_negatives: int | None = None  # None: every item is a negative (full catalogue)
    temperature: float = 0.07  # initial InfoNCE temperature (learnable)
    align_alpha: float = 0.0
    align_tau: float = 0.2
    align_positions: str = "last"  # last: one user vector per sequence; all: every real position
    align_head: bool = True  # linear head from the content width to the ID width
    align_items: bool = False  # also align the batch's adapted item vectors with the ID model's item embeddings
    align_max_rows: int = 2048  # bound on the alignment matrices (`all` positions; distinct items, drawn at random)
    align_same_user_negatives: bool = False  # True: a user's other windows (positions) are alignment negatives too
    joint: bool = False  # train the ID model too (with its own full CE) instead of freezing it

    def to_dict(self) -> dict:
        return asdict(self)


def scoring_form(vectors: torch.Tensor, rec_loss: str) -> torch.Tensor:
    """User or item vectors in the form whose inner product is the ranking score (normalised for InfoNCE): one
    definition for the vectors training saves and the ones a reloaded model computes."""
    return nn.functional.normalize(vectors, dim=-1) if rec_loss == "infonce" else vectors


class Molar(nn.Module):
    def __init__(self, content: ContentUserModel, loss: MolarLossConfig, id_model: SASRec | None = None):
        super().__init__()
        self.content = content
        self.loss_cfg = loss
        self.logit_scale = nn.Parameter(torch.tensor(1.0 / loss.temperature).log())
        if loss.align_alpha > 0 and id_model is None:
            raise ValueError("align_alpha > 0 needs the ID model (artifacts of train_id)")
        self.id_model = id_model
        if id_model is not None and not loss.joint:
            for p in id_model.parameters():
                p.requires_grad_(False)
        id_dim = id_model.cfg.dim if id_model is not None else content.cfg.dim
        self.head = nn.Linear(content.cfg.dim, id_dim) if loss.align_head and id_model is not None else None
        if self.head is None and id_model is not None and id_dim != content.cfg.dim:
            raise ValueError(f"content dim {content.cfg.dim} != ID dim {id_dim}: enable align_head")

    def _frozen_id_users(self, id_in: torch.Tensor) -> torch.Tensor:
        """The frozen ID model's user vectors of this batch, recomputed every step (in eval mode, no graph):
        training windows may change from one epoch to the next, so no per-window result is reused."""
        self.id_model.eval()
        with torch.no_grad():
            return self.id_model.user_vectors(id_in)

    def user_vectors(self, seq: torch.Tensor) -> torch.Tensor:
        return self.content.user_vectors(seq)

    def item_vectors(self) -> torch.Tensor:
        return self.content.item_vectors()

    def scoring_form(self, vectors: torch.Tensor) -> torch.Tensor:
        return scoring_form(vectors, self.loss_cfg.rec_loss)

    def loss(self, seqs: list[list[int]], generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
        """L_rec (+ the ID model's CE in joint mode) + alpha * L_align over a batch of training windows.

        Inside a data-parallel training step (molar_core.distributed.ddp.active()), `seqs` is the global batch
        and the result is this rank's share (molar_core.distributed.ddp): its rows' losses over the global
        batch's counts, the random draws made for the global batch and sliced, the alignment scored against the
        rows of every rank; the ranks' shares add up to the one-process loss."""
        cfg = self.loss_cfg
        device = self.logit_scale.device
        inputs, targets = next_item_pairs(seqs, self.content.cfg.max_len)
        users_all = row_users(seqs) if self.id_model is not None and cfg.align_alpha > 0 \
            and not cfg.align_same_user_negatives else None
        shard = _Shard.of(active(), inputs, targets, users_all)
        if shard is not None:
            inputs, targets = shard.inputs, shard.targets
        inputs, targets = inputs.to(device), targets.to(device)
        neg = None
        if cfg.rec_loss == "infonce" and cfg.num_negatives is not None:
            # sampled negatives: adapt only the items this step touches (histories, targets, negatives), so a
            # step costs the same for 1e4 or 1e6 items; `local` maps item ids to rows of that table (0 stays 0)
            neg = sample_negatives(self.content.cfg.catalogue, cfg.num_negatives, generator, device)
            used = [inputs[inputs > 0], targets[targets > 0], neg]
            if shard is not None and cfg.align_items and self.id_model is not None and cfg.align_alpha > 0:
                used.append(shard.global_targets.to(device))  # the item alignment reads every batch target
            touched = torch.unique(torch.cat(used))

            def local(ids: torch.Tensor) -> torch.Tensor:
                return torch.where(ids > 0, torch.searchsorted(touched, ids) + 1, 0)

            items = self.content.item_table(touched)
        else:
            def local(ids: torch.Tensor) -> torch.Tensor:
                return ids

            items = self.content.item_table(catalogue=True)  # cold items (ids past it) are never scored
        h = self.content.hidden(local(inputs), items)
        real = targets > 0
        hr, t = h[real], local(targets[real])
        total = shard.positions if shard is not None else None
        if cfg.rec_loss == "infonce":
            rec = cosine_info_nce(hr, items, t, self.logit_scale, cfg.num_negatives, generator,
                                  negatives=local(neg) if neg is not None else None, total=total)
        elif cfg.rec_loss == "bce":
            if shard is None:
                rec = bce_one_negative(hr, items, t, generator)
            else:  # one negative per positive of the global batch, drawn as one process would, then sliced
                negs = bce_negatives(items.shape[0], shard.positions, generator, hr.device)
                valid = int((negs != shard.global_targets.to(negs.device)).sum())
                rec = bce_one_negative(hr, items, t, negatives=negs[shard.p0:shard.p1], total=shard.positions,
                                       valid_total=valid)
        else:
            rec = full_softmax_ce(hr, items, t, total=total)
        parts = {"rec": float(rec.detach())}
        total_loss = rec
        if self.id_model is not None and (cfg.align_alpha > 0 or cfg.joint):
            id_in = inputs[:, -self.id_model.cfg.max_len:]
            width = id_in.shape[1]
            if cfg.joint:
                self.id_model.train()
                hid = self.id_model.hidden(id_in)
                id_rec = full_softmax_ce(hid[real[:, -width:]],
                                         self.id_model.item_vectors()[:self.id_model.cfg.catalogue],
                                         targets[:, -width:][real[:, -width:]],
                                         total=shard.positions_in_last(width) if shard is not None else None)
                total_loss = total_loss + id_rec
                parts["id_rec"] = float(id_rec.detach())
            elif cfg.align_positions == "last":
                hid = None  # only the last position is needed: _frozen_id_users below
            else:
                self.id_model.eval()
                with torch.no_grad():
                    hid = self.id_model.hidden(id_in)
            if cfg.align_alpha > 0:
                # each aligned row's user: rows of one user are not each other's negatives
                users = None
                if users_all is not None:
                    users = (shard.users if shard is not None else users_all).to(device)
                if cfg.align_positions == "last":
                    a, b = h[:, -1], hid[:, -1] if hid is not None else self._frozen_id_users(id_in)
                else:
                    keep = real[:, -width:]
                    a, b = h[:, -width:][keep], hid[keep]
                    users = users.unsqueeze(1).expand_as(keep)[keep] if users is not None else None
                    if shard is None:
                        if len(a) > cfg.align_max_rows:
                            idx = torch.randperm(len(a), generator=generator)[: cfg.align_max_rows].to(device)
                            a, b = a[idx], b[idx]
                            users = users[idx] if users is not None else None
                    else:  # the subset drawn over the global batch's rows; this rank keeps its own of them
                        k0, k1 = shard.kept_range(width)
                        if shard.kept(width) > cfg.align_max_rows:
                            idx = torch.randperm(shard.kept(width), generator=generator)[: cfg.align_max_rows]
                            idx = (idx[(idx >= k0) & (idx < k1)] - k0).to(device)
                            a, b = a[idx], b[idx]
                            users = users[idx] if users is not None else None
                if self.head is not None:
                    a = self.head(a)
                if shard is None:
                    align = symmetric_info_nce(a, b, cfg.align_tau, users)
                else:
                    align = symmetric_info_nce_sharded(a, b, cfg.align_tau, users, shard.dp)
                if cfg.align_items:
                    all_targets = targets[real] if shard is None else shard.global_targets.to(device)
                    ids = torch.unique(all_targets)
                    if len(ids) > cfg.align_max_rows:  # a random subset: the lowest ids would always win
                        pick = torch.randperm(len(ids), generator=generator)[: cfg.align_max_rows]
                        ids = ids[pick.to(device)]
                    ai = items[local(ids) - 1]
                    bi = self.id_model.item_emb(ids).detach() if not cfg.joint else self.id_model.item_emb(ids)
                    if self.head is not None:
                        ai = self.head(ai)
                    align_items = symmetric_info_nce(ai, bi, cfg.align_tau)
                    if shard is not None:  # every rank computes the whole term: each contributes 1 / W of it
                        align_items = align_items / shard.dp.world_size
                    parts["align_items"] = float(align_items.detach())
                    align = align + align_items
                total_loss = total_loss + cfg.align_alpha * align
                parts["align"] = float(align.detach())
        parts["loss"] = float(total_loss.detach())
        return total_loss, parts


@dataclass
class _Shard:
    """A data-parallel rank's rows of a global batch of training windows (rows [start, stop)), with the counts
    of the global batch its loss shares are normalised by (molar_core.distributed.ddp)."""

    dp: object  # molar_core.distributed.ddp.DataParallel
    start: int
    stop: int
    inputs: torch.Tensor  # this rank's rows of the global batch's (inputs, targets): one width on every rank
    targets: torch.Tensor
    users: torch.Tensor | None
    global_real: torch.Tensor  # (B, L) bool: the global batch's real target positions
    global_targets: torch.Tensor  # (P,) the global batch's real targets, in row-major order
    positions: int  # P
    p0: int  # this rank's real targets are positions [p0, p1) of the global row-major order
    p1: int

    @classmethod
    def of(cls, dp, inputs: torch.Tensor, targets: torch.Tensor, users: torch.Tensor | None) -> _Shard | None:
        if dp is None:
            return None
        start, stop = dp.rows(len(inputs))
        real = targets > 0
        per_row = real.sum(1)
        return cls(dp, start, stop, inputs[start:stop], targets[start:stop],
                   users[start:stop] if users is not None else None, real, targets[real], int(per_row.sum()),
                   int(per_row[:start].sum()), int(per_row[:stop].sum()))

    def positions_in_last(self, width: int) -> int:
        """Real target positions among the last `width` columns of the global batch."""
        return int(self.global_real[:, -width:].sum())

    def kept(self, width: int) -> int:
        return self.positions_in_last(width)

    def kept_range(self, width: int) -> tuple[int, int]:
        """This rank's rows of the global batch's real positions in the last `width` columns, row-major."""
        per_row = self.global_real[:, -width:].sum(1)
        return int(per_row[:self.start].sum()), int(per_row[:self.stop].sum())
