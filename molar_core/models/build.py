"""The user models the training stages train, built from their configs: a library user who builds with these
functions gets the model a stage builds, with the same initial weights for the same seed.

Each builder draws initial weights from torch's global generator (seed it first: molar_core.training.seed_everything),
in the order the stages draw them.
"""

from __future__ import annotations

import dataclasses

import torch

from molar_core.models.content import ContentConfig, ContentUserModel
from molar_core.models.molar import Molar, MolarLossConfig
from molar_core.models.sasrec import SASRec, SASRecConfig


def build_sasrec(cfg: SASRecConfig, sparse_item_updates: bool = False,
                 device: torch.device | str = "cpu") -> SASRec:
    """A freshly initialised SASRec to train. With `sparse_item_updates` its item table's gradient holds only the
    rows a step reads (for sampled softmax; molar_core.optim then updates those rows only)."""
    model = SASRec(cfg).to(device)
    model.item_emb.sparse = sparse_item_updates
    return model


def resolve_user_encoder(cfg: ContentConfig, setting: str = "llm_model") -> ContentConfig:
    """`cfg` ready to build. With user_encoder llm: llm_model located (a local directory, or the Hugging Face hub's
    snapshot of an id) and dim set to that LLM's hidden size, which the user transformer's width must be; any other
    config is returned as it is. `setting` names llm_model in error messages (the params key, say)."""
    if cfg.user_encoder != "llm":
        return cfg
    if cfg.llm_model is None:
        raise ValueError(f"{setting}: user_encoder llm needs a causal LM (a local directory or a hub id)")
    from transformers import AutoConfig

    from molar_core.encoders.base import locate_model

    directory = str(locate_model(cfg.llm_model, None, setting))
    width = int(AutoConfig.from_pretrained(directory, trust_remote_code=False).hidden_size)
    return dataclasses.replace(cfg, llm_model=directory, dim=width)


def build_molar(cfg: ContentConfig, item_features: torch.Tensor, loss: MolarLossConfig,
                id_model: SASRec | None = None, device: torch.device | str = "cpu") -> Molar:
    """A freshly initialised content user model over `item_features` (N, input_dim) inside its training objective
    (next-item loss, and alignment to `id_model` when loss.align_alpha > 0): the content model's weights are drawn
    before the alignment head's. `id_model` is the trained SASRec to align to; load it (molar_core.models.sasrec.
    load_sasrec, which draws initial weights too) before calling this, as the train stage does."""
    return Molar(ContentUserModel(cfg, item_features), loss, id_model).to(device)
