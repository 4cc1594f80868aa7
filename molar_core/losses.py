"""Next-item losses over item scoring vectors."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _mean(logits: torch.Tensor, labels: torch.Tensor, total: int | None) -> torch.Tensor:
    """Cross-entropy averaged over the rows, or with `total` summed and divided by it: a data-parallel rank's
    share of a mean over the `total` rows of the global batch."""
    if total is None:
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits, labels, reduction="sum") / total


def full_softmax_ce(hidden: torch.Tensor, item_vectors: torch.Tensor, targets: torch.Tensor,
                    total: int | None = None) -> torch.Tensor:
    """Cross-entropy over every item. hidden (P, D) at real positions, item_vectors (N, D) for ids 1..N,
    targets (P,) in 1..N. With `total`, the sum over the P rows divided by `total` (a data-parallel rank's share
    of the mean over the global batch's `total` positions)."""
    logits = hidden @ item_vectors.T
    return _mean(logits, targets - 1, total)


def sample_negatives(num_items: int, count: int, generator: torch.Generator | None,
                     device: torch.device | str) -> torch.Tensor:
    """`count` item ids drawn uniformly from 1..num_items, shared by a batch (a draw may equal a positive)."""
    return torch.randint(1, num_items + 1, (count,), generator=generator, device=device)


def sampled_softmax_ce(hidden: torch.Tensor, item_vectors: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
                       targets: torch.Tensor, num_negatives: int, generator: torch.Generator | None = None,
                       num_items: int | None = None, total: int | None = None) -> torch.Tensor:
    """Cross-entropy against the positive and `num_negatives` uniformly sampled items shared by the batch,
    with the sampled items that equal a row's positive masked out (for catalogues too large for full softmax).
    `item_vectors`: (N, D) for ids 1..N, or a lookup from ids 1..`num_items` to vectors (an embedding table
    with sparse gradients, so only the rows used get one). `total`: as full_softmax_ce's (the negatives are one
    draw per call, the same on every data-parallel rank)."""
    if callable(item_vectors):
        lookup, n = item_vectors, num_items
    else:
        table = item_vectors
        lookup, n = (lambda ids: table[ids - 1]), table.shape[0]
    neg = sample_negatives(n, num_negatives, generator, hidden.device)
    pos_logit = (hidden * lookup(targets)).sum(-1, keepdim=True)
    neg_logit = hidden @ lookup(neg).T
    neg_logit = neg_logit.masked_fill(neg.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=1)
    return _mean(logits, torch.zeros(len(targets), dtype=torch.long, device=hidden.device), total)


def cosine_info_nce(hidden: torch.Tensor, item_vectors: torch.Tensor, targets: torch.Tensor,
                    logit_scale: torch.Tensor, num_negatives: int | None = None,
                    generator: torch.Generator | None = None, negatives: torch.Tensor | None = None,
                    total: int | None = None) -> torch.Tensor:
    """HLLM/Molar's next-item InfoNCE: cosine similarity times a learnable scale (exp of `logit_scale`,
    initialised to 1/0.07). With `num_negatives`, shared uniformly sampled negatives replace the full catalogue
    (or the given `negatives`, ids into `item_vectors`), and negatives equal to a row's positive are masked.
    `total`: as full_softmax_ce's."""
    h = F.normalize(hidden, dim=-1)
    scale = logit_scale.exp().clamp(max=100.0)
    if num_negatives is None and negatives is None:
        return _mean(scale * h @ F.normalize(item_vectors, dim=-1).T, targets - 1, total)
    n = item_vectors.shape[0]
    neg = negatives if negatives is not None else sample_negatives(n, num_negatives, generator, hidden.device)
    pos = (h * F.normalize(item_vectors[targets - 1], dim=-1)).sum(-1, keepdim=True)
    negs = scale * (h @ F.normalize(item_vectors[neg - 1], dim=-1).T)
    # scale first, mask after: scale * -inf would send 0 * -inf = NaN into the scale's gradient
    negs = negs.masked_fill(neg.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([scale * pos, negs], dim=1)
    return _mean(logits, torch.zeros(len(targets), dtype=torch.long, device=hidden.device), total)


def bce_negatives(num_items: int, count: int, generator: torch.Generator | None,
                  device: torch.device | str) -> torch.Tensor:
    """bce_one_negative's draw: one uniform item id in 1..num_items per positive."""
    return torch.randint(1, num_items + 1, (count,), generator=generator, device=device)


def bce_one_negative(hidden: torch.Tensor, item_vectors: torch.Tensor, targets: torch.Tensor,
                     generator: torch.Generator | None = None, negatives: torch.Tensor | None = None,
                     total: int | None = None, valid_total: int | None = None) -> torch.Tensor:
    """The paper's text: binary cross-entropy with one uniformly sampled negative per positive
    (a negative that equals the positive is resampled once, then ignored).

    Data-parallel share: `negatives` (this rank's slice of bce_negatives drawn for the global batch's positives),
    `total` (the global batch's positives) and `valid_total` (its negatives that differ from their positive)."""
    n = item_vectors.shape[0]
    if negatives is None:
        neg = torch.randint(1, n + 1, targets.shape, generator=generator, device=hidden.device)
    else:
        neg = negatives
    pos_logit = (hidden * item_vectors[targets - 1]).sum(-1)
    neg_logit = (hidden * item_vectors[neg - 1]).sum(-1)
    valid = (neg != targets).float()
    if total is None:
        loss_pos = F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit))
        loss_neg = (F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit), reduction="none")
                    * valid).sum() / valid.sum().clamp(min=1)
        return loss_pos + loss_neg
    loss_pos = F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit), reduction="sum") / total
    loss_neg = (F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit), reduction="none")
                * valid).sum() / max(1, valid_total if valid_total is not None else total)
    return loss_pos + loss_neg


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, tau: float,
                       groups: torch.Tensor | None = None) -> torch.Tensor:
    """Post-alignment: row i of `a` and row i of `b` describe the same user (or position); the other rows of
    the batch are negatives. Cosine similarity over `tau`, both directions averaged.

    With `groups` ((B,) user ids), pairs (i, j), i != j, of the same group are left out of both softmaxes: a long
    history is cut into several windows that can share a batch, and another window of the same user describes
    the same person at another time, so pushing it away as a negative would contradict the alignment target.
    The positives (the diagonal) stay."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.T / tau
    labels = torch.arange(len(a), device=a.device)
    if groups is not None:
        same = (groups.unsqueeze(0) == groups.unsqueeze(1)) & (labels.unsqueeze(0) != labels.unsqueeze(1))
        logits = logits.masked_fill(same, float("-inf"))  # symmetric mask: the same pairs leave logits.T
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def symmetric_info_nce_sharded(a: torch.Tensor, b: torch.Tensor, tau: float, groups: torch.Tensor | None,
                               dp) -> torch.Tensor:
    """A data-parallel rank's share of symmetric_info_nce over the rows of all ranks (`dp`: a
    molar_core.distributed.ddp.DataParallel): `a`, `b`, `groups` are this rank's rows (maybe none). The other
    ranks' rows are gathered with gradient, so this rank's rows are scored against every row of the global batch
    in both directions; the share is (the sum of this rank's rows' cross-entropies of both directions) / 2 /
    (the global row count), and the ranks' shares sum to the one-process loss. The order of the rows across
    ranks does not matter: the loss is invariant to permuting the rows of `a` and `b` together."""
    # float32 at least: the gathered rows travel in full precision (and gloo need not support bfloat16)
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b = F.normalize(a, dim=-1).to(dtype), F.normalize(b, dim=-1).to(dtype)
    # one gather (with gradient) of both sides: a single collective in the backward pass, so every rank runs
    # the same collectives in the same order whatever order its autograd engine visits the graph in
    both, start = dp.gather_rows(torch.cat([a, b], dim=1))
    all_a, all_b = both[:, :a.shape[1]], both[:, a.shape[1]:]
    labels = start + torch.arange(len(a), device=a.device)
    ab = a @ all_b.T / tau  # this rank's rows of logits
    ba = b @ all_a.T / tau  # this rank's rows of logits.T
    if groups is not None:
        all_groups, _ = dp.gather_rows(groups, grad=False)
        cols = torch.arange(len(all_groups), device=a.device)
        same = (groups.unsqueeze(1) == all_groups.unsqueeze(0)) & (labels.unsqueeze(1) != cols.unsqueeze(0))
        ab, ba = ab.masked_fill(same, float("-inf")), ba.masked_fill(same, float("-inf"))
    total = len(all_a)
    return 0.5 * (F.cross_entropy(ab, labels, reduction="sum") + F.cross_entropy(ba, labels, reduction="sum")) / total
