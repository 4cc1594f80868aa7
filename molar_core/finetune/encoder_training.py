"""Stage 1 of the method: fine-tune the MLLM item encoder on the dataset's own mixtures before `embed`.

The model trained is the encoder's own (MllmEncoder's transformers model), so the vectors it learns are the
ones `embed` computes: same prompts, same pooling. Full training for small (scratch) models, LoRA adapters
(peft) for pretrained ones, merged into the weights at the end so both embed backends load a plain model
directory. Validation ranks the whole catalogue for held-out users by the encoder alone (the mean of their
recent items' vectors, cosine), so early stopping watches the recommendation use of the vectors. Training
runs through molar_core.training.fit: per-epoch resume state, the same early stopping as the user models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from molar_core.encoders.mllm import MllmEncoder
from molar_core.finetune.mixtures import MIXTURES, Pair, build_mixtures
from molar_core.finetune.objectives import ItemViews, contrastive_loss, generative_loss
from molar_core.resume import TrainingResume
from molar_core.training import FitConfig, FitResult, fit, ranking_metrics


@dataclass(frozen=True)
class MixtureSpec:
    size: int  # pairs drawn per run (0 = mixture off)
    weight: float = 1.0  # of its loss in a batch, scaled by its share of the batch
    objective: str = "contrastive"  # contrastive | generative (IT and SA only)


@dataclass
class FinetuneConfig:
    mixtures: dict[str, MixtureSpec]
    history: int = 3  # UB: recent items per query
    tau: float = 0.05
    method: str = "full"  # full | lora
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv")
    valid_users: int = 1000  # validation ranks the catalogue for this many users (the first ones)
    fit: FitConfig = field(default_factory=FitConfig)


@dataclass
class FinetuneResult:
    fit: FitResult
    counts: dict  # per mixture: available, used, skipped by reason; images skipped by reason
    trainable_params: int
    total_params: int


def _wrap_lora(encoder: MllmEncoder, cfg: FinetuneConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets))
    return get_peft_model(encoder.model, lora)  # adapters are injected in place: encoder.backbone sees them


def finetune_encoder(encoder: MllmEncoder, texts: list[str], image_paths: list[str | None],
                     sequences: list[list[int]], valid_histories: list[list[int]], valid_targets: list[int],
                     cfg: FinetuneConfig, generator: torch.Generator, resume: TrainingResume | None = None,
                     progress=None) -> FinetuneResult:
    """Train `encoder`'s model in place (LoRA merged back at the end) and return the curve and the counts."""
    for name, spec in cfg.mixtures.items():
        if name not in MIXTURES:
            raise ValueError(f"unknown mixture {name!r} (have {', '.join(MIXTURES)})")
        if spec.objective == "generative" and name == "UB":
            raise ValueError("mixture UB is contrastive only (its target is an item, not a text)")
    views = ItemViews(encoder, texts, image_paths)
    pairs, counts = build_mixtures({k: v.size for k, v in cfg.mixtures.items()}, texts, views.has_image(),
                                   sequences, cfg.history, generator)
    if not pairs:
        raise ValueError("no training pairs: every mixture is off or has nothing to draw from "
                         f"({ {k: v.to_dict() for k, v in counts.items()} })")
    model = _wrap_lora(encoder, cfg) if cfg.method == "lora" else encoder.model
    if cfg.method == "full":
        model.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    def loss_fn(batch: list[Pair]):
        total_loss, parts = 0.0, {}
        for name in MIXTURES:
            group = [p for p in batch if p.mixture == name]
            if not group:
                continue
            spec = cfg.mixtures[name]
            loss = (generative_loss(views, group) if spec.objective == "generative"
                    else contrastive_loss(views, group, cfg.tau))
            total_loss = total_loss + spec.weight * loss * len(group) / len(batch)
            parts[f"loss_{name}"] = float(loss.detach())
        parts["loss"] = float(total_loss.detach())
        return total_loss, parts

    users = min(cfg.valid_users, len(valid_histories))
    vh, vt = valid_histories[:users], valid_targets[:users]

    def validate() -> dict:
        vecs = F.normalize(encoder.encode(texts, image_paths), dim=-1)
        queries = torch.stack([vecs[[i - 1 for i in h[-cfg.history:]]].mean(dim=0) for h in vh])
        return ranking_metrics(queries, vecs, vh, vt, [10], mask_history=True)

    if cfg.fit.max_epochs == 0:  # the untrained base, measured the same way (the "without stage 1" arm)
        with torch.no_grad():
            result = FitResult(0, validate(), [], 0.0)
    else:
        result = fit(model, pairs, loss_fn, validate, cfg.fit, generator, progress=progress, resume=resume)
    if cfg.method == "lora":
        merged = model.merge_and_unload()
        encoder.model, encoder.backbone = merged, merged.model
    encoder.model.eval()
    out_counts = {k: v.to_dict() for k, v in counts.items()}
    out_counts["images_skipped"] = dict(views.image_skips)
    return FinetuneResult(result, out_counts, trainable, total)


def save_encoder(encoder: MllmEncoder, target: Path) -> None:
    """A model directory `embed` loads by path with either backend: weights, config, tokenizer, processor."""
    encoder.model.save_pretrained(target, safe_serialization=True)
    backend = getattr(encoder.tokenizer, "backend_tokenizer", None)
    if backend is not None:  # call-time padding state is not the model's: save the same file whichever calls ran
        backend.no_padding()
        backend.no_truncation()
    encoder.tokenizer.save_pretrained(target)
    encoder.processor.image_processor.save_pretrained(target)
