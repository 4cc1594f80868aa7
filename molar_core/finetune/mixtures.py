"""Stage 1's training pairs, built from the dataset itself: three mixtures of (query, target) views of items.

- IT: an item's image -> the item's text. Teaches the vision tower to land where the item's words do.
- SA: an item's title -> the rest of its text (attributes, description): text-side semantics.
- UB: a user's most recent items -> the next item, from the training sequences only (no validation or test
  target leaks in). The recommendation signal itself, on the pooled item vectors.

Items that lack what a mixture needs (no image, no title, nothing after the title) are skipped and counted by
reason; each mixture then draws at most `size` pairs with a seeded generator, and the counts say how many.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

MIXTURES = ("IT", "SA", "UB")


@dataclass(frozen=True)
class View:
    """What the encoder is shown for one side of a pair: a text, and the image of item `image_of` (or none).

    `item` names the whole item (its full text and, where usable, its image: exactly what `embed` encodes)."""

    text: str = ""
    image_of: int | None = None
    item: int | None = None


@dataclass(frozen=True)
class Pair:
    mixture: str
    query: tuple[View, ...]  # UB: several items, their vectors averaged; IT, SA: one view
    target: View
    key: int  # the target item: pairs of a batch sharing it are not each other's negatives


@dataclass
class MixtureCounts:
    available: int = 0
    used: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> items or positions skipped

    def to_dict(self) -> dict:
        return {"available": self.available, "used": self.used, "skipped": dict(self.skipped)}


def split_title(text: str) -> tuple[str, str] | None:
    """'Title: X. Rest...' (the text `prepare` writes) -> ('X', 'Rest...'); None without a title or a rest."""
    if not text.startswith("Title: "):
        return None
    head, sep, rest = text[len("Title: "):].partition(". ")
    if not sep or not head.strip() or not rest.strip():
        return None
    return head.strip(), rest.strip()


def item_pairs(mixture: str, texts: list[str], has_image: list[bool], counts: MixtureCounts) -> list[Pair]:
    """IT or SA pairs of items 1..N (`texts[i]` is item i+1's text; `has_image` whether its image is usable)."""
    out = []
    for i, text in enumerate(texts):
        item = i + 1
        if not text.strip():
            counts.skipped["no_text"] += 1
            continue
        if mixture == "IT":
            if not has_image[i]:
                counts.skipped["no_image"] += 1
                continue
            out.append(Pair("IT", (View("", image_of=item),), View(text), item))
        else:
            parts = split_title(text)
            if parts is None:
                counts.skipped["no_title_or_rest"] += 1
                continue
            out.append(Pair("SA", (View(parts[0]),), View(parts[1]), item))
    return out


def behaviour_pairs(sequences: list[list[int]], history: int, counts: MixtureCounts) -> list[Pair]:
    """UB pairs: every position t >= 1 of every training sequence, its `history` previous items -> item t."""
    out = []
    for seq in sequences:
        if len(seq) < 2:
            counts.skipped["sequence_shorter_than_2"] += 1
            continue
        for t in range(1, len(seq)):
            recent = seq[max(0, t - history):t]
            out.append(Pair("UB", tuple(View(item=i) for i in recent), View(item=seq[t]), seq[t]))
    return out


def draw(pairs: list[Pair], size: int, generator: torch.Generator, counts: MixtureCounts) -> list[Pair]:
    """At most `size` of the pairs, uniformly without replacement (all of them, in order, when size covers it)."""
    counts.available = len(pairs)
    if size >= len(pairs):
        counts.used = len(pairs)
        return pairs
    idx = torch.randperm(len(pairs), generator=generator)[:size].sort().values.tolist()
    counts.used = size
    return [pairs[i] for i in idx]


def build_mixtures(sizes: dict[str, int], texts: list[str], has_image: list[bool], sequences: list[list[int]],
                   history: int, generator: torch.Generator) -> tuple[list[Pair], dict[str, MixtureCounts]]:
    """The pairs of every mixture with size > 0, and each mixture's counts."""
    pairs, counts = [], {}
    for name in MIXTURES:
        size = sizes.get(name, 0)
        if size <= 0:
            continue
        c = counts[name] = MixtureCounts()
        pool = (behaviour_pairs(sequences, history, c) if name == "UB"
                else item_pairs(name, texts, has_image, c))
        pairs += draw(pool, size, generator, c)
    return pairs, counts
