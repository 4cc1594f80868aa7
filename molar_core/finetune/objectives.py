"""The two stage-1 objectives over an MLLM item encoder, on batches of mixture pairs.

contrastive: the pooled vector of the query (the mean of its views' vectors) against the pooled vector of the
  target, in-batch negatives, cosine over a temperature; pairs sharing a target item are not negatives of each
  other. It trains the very vectors `embed` computes (same prompt, same pooling).
generative: next-token cross-entropy of the target's text after the query's prompt (image and/or title), the
  usual captioning / description objective; the loss covers the target tokens only.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from PIL import Image

from molar_core.encoders.mllm import MllmEncoder
from molar_core.finetune.mixtures import Pair, View

END = "<|im_end|>"


class ItemViews:
    """Renders views as the encoder would: each item's cleaned, truncated text and its usable image, loaded once
    (downscaled to the size the processor would resize it to, so the cache stays small)."""

    def __init__(self, encoder: MllmEncoder, texts: list[str], image_paths: list[str | None]):
        self.encoder = encoder
        self.texts = encoder.prepare_texts(texts)
        self.images: list[Image.Image | None] = []
        self.image_skips: Counter = Counter()
        for path in image_paths:
            got = encoder.usable_image(path)
            im = got.image
            if im is None:
                if got.reason != "no_image":
                    self.image_skips[got.reason] += 1
            else:
                h, w = encoder._smart_resize(im.height, im.width, factor=encoder.factor,
                                             min_pixels=encoder.min_pixels, max_pixels=encoder.cfg.max_pixels)
                im = im.resize((w, h), Image.BICUBIC) if (h, w) != (im.height, im.width) else im
            self.images.append(im)

    def has_image(self) -> list[bool]:
        return [im is not None for im in self.images]

    def text_and_image(self, view: View) -> tuple[str, Image.Image | None]:
        if view.item is not None:
            return self.texts[view.item - 1], self.images[view.item - 1]
        text = self.encoder.prepare_texts([view.text])[0] if view.text else ""
        return text, self.images[view.image_of - 1] if view.image_of is not None else None

    def render(self, views: list[View], summary: str | None = None) -> tuple[list[str], list]:
        prompts, images = [], []
        for v in views:
            text, im = self.text_and_image(v)
            prompts.append(self.encoder._render(text, im is not None, summary))
            images.append(im)
        return prompts, images


def masked_info_nce(q: torch.Tensor, t: torch.Tensor, keys: list[int], tau: float) -> torch.Tensor:
    """Symmetric InfoNCE of rows of q against rows of t (cosine / tau); rows with the same key are not negatives."""
    q, t = F.normalize(q, dim=-1), F.normalize(t, dim=-1)
    logits = q @ t.T / tau
    k = torch.tensor(keys, device=q.device)
    same = (k[:, None] == k[None, :]) & ~torch.eye(len(keys), dtype=torch.bool, device=q.device)
    logits = logits.masked_fill(same, float("-inf"))
    labels = torch.arange(len(keys), device=q.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def contrastive_loss(views: ItemViews, pairs: list[Pair], tau: float) -> torch.Tensor:
    """Each distinct view is encoded once per batch (a UB item seen by several pairs, say)."""
    index: dict[View, int] = {}
    for p in pairs:
        for v in (*p.query, p.target):
            index.setdefault(v, len(index))
    prompts, images = views.render(list(index))
    vecs = views.encoder.pooled(prompts, images)
    q = torch.stack([vecs[[index[v] for v in p.query]].mean(dim=0) for p in pairs])
    t = vecs[[index[p.target] for p in pairs]]
    return masked_info_nce(q, t, [p.key for p in pairs], tau)


def generative_loss(views: ItemViews, pairs: list[Pair]) -> torch.Tensor:
    """Cross-entropy of the target text's tokens given the query prompt (which must be one view)."""
    enc = views.encoder
    if any(len(p.query) != 1 for p in pairs):
        raise ValueError("the generative objective needs one query view per pair (IT or SA)")
    prompts, images = views.render([p.query[0] for p in pairs], summary="")
    imgs = [im for im in images if im is not None]
    q = enc.processor(text=prompts, images=imgs or None, padding=False, return_tensors=None)
    targets = [views.text_and_image(p.target)[0] + END for p in pairs]
    t_ids = enc.tokenizer(targets, add_special_tokens=False)["input_ids"]
    rows = [list(a) + list(b) for a, b in zip(q["input_ids"], t_ids)]
    width = max(map(len, rows))
    pad = enc.tokenizer.pad_token_id
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for r, (row, qi, qt) in enumerate(zip(rows, q["input_ids"], q["mm_token_type_ids"])):
        ids[r, :len(row)] = torch.tensor(row)
        mask[r, :len(row)] = 1
        types[r, :len(qi)] = torch.tensor(qt)
        labels[r, len(qi):len(row)] = torch.tensor(row[len(qi):])
    inputs = {"input_ids": ids, "attention_mask": mask, "mm_token_type_ids": types}
    if imgs:
        inputs["pixel_values"] = torch.as_tensor(q["pixel_values"])
        inputs["image_grid_thw"] = torch.as_tensor(q["image_grid_thw"])
    inputs = enc.with_positions({k: v.to(enc.device) for k, v in inputs.items()})
    logits = enc.model(**inputs, use_cache=False).logits
    labels = labels.to(logits.device)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten())
