"""Next-item losses over item scoring vectors."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def full_softmax_ce(hidden: torch.Tensor, item_vectors: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every item. hidden (P, D) at real positions, item_vectors (N, D) for ids 1..N,
    targets (P,) in 1..N."""
    logits = hidden @ item_vectors.T
    return F.cross_entropy(logits, targets - 1)


def sample_negatives(num_items: int, count: int, generator: torch.Generator | None,
                     device: torch.device | str) -> torch.Tensor:
    """`count` item ids drawn uniformly from 1..num_items, shared by a batch (a draw may equal a positive)."""
    return torch.randint(1, num_items + 1, (count,), generator=generator, device=device)


def sampled_softmax_ce(hidden: torch.Tensor, item_vectors: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
                       targets: torch.Tensor, num_negatives: int, generator: torch.Generator | None = None,
                       num_items: int | None = None) -> torch.Tensor:
    """Cross-entropy against the positive and `num_negatives` uniformly sampled items shared by the batch,
    with the sampled items that equal a row's positive masked out (for catalogues too large for full softmax).
    `item_vectors`: (N, D) for ids 1..N, or a lookup from ids 1..`num_items` to vectors (an embedding table
    with sparse gradients, so only the rows used get one)."""
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
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=hidden.device))


def cosine_info_nce(hidden: torch.Tensor, item_vectors: torch.Tensor, targets: torch.Tensor,
                    logit_scale: torch.Tensor, num_negatives: int | None = None,
                    generator: torch.Generator | None = None, negatives: torch.Tensor | None = None) -> torch.Tensor:
    """HLLM/Molar's next-item InfoNCE: cosine similarity times a learnable scale (exp of `logit_scale`,
    initialised to 1/0.07). With `num_negatives`, shared uniformly sampled negatives replace the full catalogue
    (or the given `negatives`, ids into `item_vectors`), and negatives equal to a row's positive are masked."""
    h = F.normalize(hidden, dim=-1)
    scale = logit_scale.exp().clamp(max=100.0)
    if num_negatives is None and negatives is None:
        return F.cross_entropy(scale * h @ F.normalize(item_vectors, dim=-1).T, targets - 1)
    n = item_vectors.shape[0]
    neg = negatives if negatives is not None else sample_negatives(n, num_negatives, generator, hidden.device)
    pos = (h * F.normalize(item_vectors[targets - 1], dim=-1)).sum(-1, keepdim=True)
    negs = scale * (h @ F.normalize(item_vectors[neg - 1], dim=-1).T)
    # scale first, mask after: scale * -inf would send 0 * -inf = NaN into the scale's gradient
    negs = negs.masked_fill(neg.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([scale * pos, negs], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=hidden.device))


def bce_one_negative(hidden: torch.Tensor, item_vectors: torch.Tensor, targets: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """The paper's text: binary cross-entropy with one uniformly sampled negative per positive
    (a negative that equals the positive is resampled once, then ignored)."""
    n = item_vectors.shape[0]
    neg = torch.randint(1, n + 1, targets.shape, generator=generator, device=hidden.device)
    pos_logit = (hidden * item_vectors[targets - 1]).sum(-1)
    neg_logit = (hidden * item_vectors[neg - 1]).sum(-1)
    valid = (neg != targets).float()
    loss_pos = F.binary_cross_entropy_with_logits(pos_logit, torch.ones_like(pos_logit))
    loss_neg = (F.binary_cross_entropy_with_logits(neg_logit, torch.zeros_like(neg_logit), reduction="none")
                * valid).sum() / valid.sum().clamp(min=1)
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
