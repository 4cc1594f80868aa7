"""Next-item losses over item scoring vectors."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def full_softmax_ce(hidden: torch.Tensor, item_vectors: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every item. hidden (P, D) at real positions, item_vectors (N, D) for ids 1..N,
    targets (P,) in 1..N."""
    logits = hidden @ item_vectors.T
    return F.cross_entropy(logits, targets - 1)


def sampled_softmax_ce(hidden: torch.Tensor, item_vectors: torch.Tensor, targets: torch.Tensor,
                       num_negatives: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Cross-entropy against the positive and `num_negatives` uniformly sampled items shared by the batch,
    with the sampled items that equal a row's positive masked out (for catalogues too large for full softmax)."""
    n = item_vectors.shape[0]
    neg = torch.randint(1, n + 1, (num_negatives,), generator=generator, device=hidden.device)
    pos_logit = (hidden * item_vectors[targets - 1]).sum(-1, keepdim=True)
    neg_logit = hidden @ item_vectors[neg - 1].T
    neg_logit = neg_logit.masked_fill(neg.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long, device=hidden.device))
