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


class Window(list):
    """A training window whose first `context_only` targets are trained in an older, overlapping window (where
    they have more history before them): they are inputs here, never targets. `user` is the index of the history
    it was cut from, so a loss that contrasts the rows of a batch can tell the windows of one user apart from
    other users (None: unknown, counted as a user of its own, as a plain list is)."""

    def __init__(self, items: list[int], context_only: int = 0, user: int | None = None):
        super().__init__(items)
        self.context_only = context_only
        self.user = user


def next_item_pairs(seqs: list[list[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs s[:-1] and targets s[1:] (last `max_len` positions), both left-padded; target 0 = no loss."""
    inputs = [s[:-1] for s in seqs]
    skips = [min(getattr(s, "context_only", 0), len(s) - 1) for s in seqs]  # plain lists: every target
    targets = [[0] * k + s[1 + k:] for s, k in zip(seqs, skips)]
    return pad_left(inputs, max_len), pad_left(targets, max_len)


def row_users(seqs: list[list[int]]) -> torch.Tensor:
    """Each row's user (`Window.user`), (B,) int64; a row without one (a plain list) gets an id of its own,
    below 0, so it shares a user with no other row."""
    users = [getattr(s, "user", None) for s in seqs]
    return torch.tensor([-1 - i if u is None else u for i, u in enumerate(users)], dtype=torch.long)


def training_windows(seqs: list[list[int]], max_len: int, overlap: int = 0,
                     newest_only: bool = False, generator: torch.Generator | None = None) -> list[list[int]]:
    """Cut each training sequence into windows of at most max_len + 1 items, newest first, so that every
    next-item pair is trained once even when a history is longer than the model's context.

    `newest_only` keeps only each user's newest window (the original SASRec's training data: one sequence a
    user, its last max_len + 1 items), so a long history's old items weigh no more than a short one's.

    With `overlap` > 0 consecutive windows share `overlap` items, and a window's first `overlap` targets are
    left to the older window (`Window.context_only`): every target after the first window is then predicted
    from at least `overlap` items of history instead of starting from scratch at a window edge.

    With a `generator` the window ending at the newest item stays as it is, and the next older window holds a
    random number of targets (1..max_len - overlap, drawn per user): the boundaries of every older window move
    from one call to the next, so a model trained on a new cut each epoch sees each old target with a
    different amount of history before it (still one training per target per cut).

    Every window carries the index of its sequence in `seqs` (`Window.user`)."""
    if not 0 <= overlap < max_len:
        raise ValueError(f"window overlap must be in [0, max_len={max_len}), got {overlap}")
    phases = (torch.randint(1, max_len - overlap + 1, (len(seqs),), generator=generator).tolist()
              if generator is not None else None)
    out: list[list[int]] = []
    for u, s in enumerate(seqs):
        end, size, first = len(s), max_len, len(out)
        while end >= 2:
            start = max(0, end - size - 1)
            older = start > 0 and not newest_only  # an older window follows and trains the shared targets
            out.append(Window(s[start:end], overlap if older else 0, user=u))
            end = start + 1 + overlap if older else 0
            # the window after the newest one holds a random number of new targets; every later one is full
            size = overlap + phases[u] if phases is not None and len(out) == first + 1 else max_len
    return out


class EpochWindows:
    """Training windows cut anew at every epoch with a random phase (`training_windows` with the training run's
    generator), for `fit`, which calls it at the start of each epoch. `len()` is the size of the cut without a
    phase (what an epoch holds on average, to within one window a user)."""

    def __init__(self, seqs: list[list[int]], max_len: int, overlap: int = 0, newest_only: bool = False):
        self.seqs, self.max_len, self.overlap, self.newest_only = seqs, max_len, overlap, newest_only
        self._fixed = training_windows(seqs, max_len, overlap, newest_only)

    def __call__(self, generator: torch.Generator | None) -> list[list[int]]:
        if generator is None:
            return self._fixed
        return training_windows(self.seqs, self.max_len, self.overlap, self.newest_only, generator)

    def __len__(self) -> int:
        return len(self._fixed)
