"""Exact full ranking in torch: the reference the FAISS path is tested against, and the fast validation
used for early stopping. History items are masked unless the protocol says otherwise."""

from __future__ import annotations

import torch


def history_mask(histories: list[list[int]], num_items: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, N) bool, True where item id (column + 1) is in the user's history."""
    mask = torch.zeros(len(histories), num_items, dtype=torch.bool, device=device)
    rows = [i for i, h in enumerate(histories) for _ in h]
    cols = [x - 1 for h in histories for x in h]
    if rows:
        mask[torch.tensor(rows, device=device), torch.tensor(cols, device=device)] = True
    return mask


def masked_scores(users: torch.Tensor, items: torch.Tensor, histories: list[list[int]] | None) -> torch.Tensor:
    """Scores (B, N) of users against items 1..N; history items get -inf when histories are given."""
    scores = users @ items.T
    if histories is not None:
        scores = scores.masked_fill(history_mask(histories, items.shape[0], scores.device), float("-inf"))
    return scores


SCORE_BLOCK_BYTES = 256 << 20  # a chunk of users x all items scores stays under this, whatever the catalogue size


def user_chunk(num_items: int, chunk: int | None) -> int:
    """Users scored at once: `chunk`, or as many as keep one (users x items) float32 block under 256 MiB."""
    return chunk or max(1, min(4096, SCORE_BLOCK_BYTES // (4 * max(1, num_items))))


def target_ranks(users: torch.Tensor, items: torch.Tensor, histories: list[list[int]] | None,
                 targets: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """0-based rank of each target among the unmasked items (number of items scoring strictly higher).
    NaN vectors are refused: a NaN score is never higher than another, so every target would rank first."""
    for name, v in (("user", users), ("item", items)):
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"{name} vectors contain NaN or inf: ranks would be meaningless")
    chunk = user_chunk(items.shape[0], chunk)
    out = []
    for s in range(0, len(users), chunk):
        sc = masked_scores(users[s:s + chunk], items, histories[s:s + chunk] if histories is not None else None)
        t = sc.gather(1, (targets[s:s + chunk] - 1).unsqueeze(1).to(sc.device))
        out.append((sc > t).sum(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def topk_items(users: torch.Tensor, items: torch.Tensor, histories: list[list[int]] | None, k: int,
               chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k item ids (1-based) and scores per user, by brute force."""
    chunk = user_chunk(items.shape[0], chunk)
    ids, scores = [], []
    for s in range(0, len(users), chunk):
        sc = masked_scores(users[s:s + chunk], items, histories[s:s + chunk] if histories is not None else None)
        v, i = sc.topk(min(k, sc.shape[1]), dim=1)
        ids.append((i + 1).cpu())
        scores.append(v.cpu())
    return torch.cat(ids), torch.cat(scores)
