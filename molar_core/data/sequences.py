"""Turn variable-length item-id lists into left-padded tensors for the user models."""

from __future__ import annotations

import numpy as np
import torch


def pad_left(seqs: list[list[int]] | list[np.ndarray], max_len: int) -> torch.Tensor:
    """Keep the last `max_len` ids of each sequence, left-pad with 0: (B, L) int64, L = min(max_len, longest)."""
    width = min(max_len, max((len(s) for s in seqs), default=1)) or 1
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        tail = np.asarray(s[-width:], dtype=np.int64) if len(s) else np.zeros(0, dtype=np.int64)
        if len(tail):
            out[i, width - len(tail):] = tail
    return torch.from_numpy(out)


def next_item_pairs(seqs: list[list[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs s[:-1] and targets s[1:] (last `max_len` positions), both left-padded; target 0 = no loss."""
    inputs = [s[:-1] for s in seqs]
    targets = [s[1:] for s in seqs]
    return pad_left(inputs, max_len), pad_left(targets, max_len)


def training_windows(seqs: list[list[int]], max_len: int) -> list[list[int]]:
    """Cut each training sequence into windows of at most max_len + 1 items, newest first, so that every
    next-item pair is trained once even when a history is longer than the model's context."""
    out = []
    for s in seqs:
        end = len(s)
        while end >= 2:
            start = max(0, end - max_len - 1)
            out.append(list(s[start:end]))
            end = start + 1 if start > 0 else 0
    return out
