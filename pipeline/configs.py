"""The params sections as molar_core's settings: the one place where a validated section becomes the plain
config dataclasses the library takes (molar_core never sees a params object)."""

from __future__ import annotations

from pathlib import Path

from molar_core.encoders import EncoderConfig
from molar_core.models.build import resolve_user_encoder
from molar_core.models.content import ContentConfig
from molar_core.models.molar import MolarLossConfig
from molar_core.models.sasrec import SASRecConfig
from molar_core.training import FitConfig
from pipeline.params import EmbedParams, TrainIdParams, TrainParams, UserModelParams


def sasrec_config(p: TrainIdParams, num_items: int, train_items: int | None = None) -> SASRecConfig:
    """The architecture `train_id`'s params describe, for a catalogue of `num_items` (of which 1..`train_items`
    are known while training, when prepare held out cold items)."""
    return SASRecConfig(num_items=num_items, max_len=p.max_len, dim=p.dim, layers=p.layers, heads=p.heads,
                        dropout=p.dropout, norm=p.norm, train_items=train_items)


def content_config(p: TrainParams, num_items: int, input_dim: int, train_items: int | None = None) -> ContentConfig:
    """The content model a `train` variant's params describe, over item features of width `input_dim` (of which
    items 1..`train_items` are known while training, when prepare held out cold items). With user_encoder llm the
    LLM is located and its hidden size is the model's dim (molar_core.models.build.resolve_user_encoder)."""
    llm = p.user_encoder == "llm"
    cfg = ContentConfig(num_items=num_items, input_dim=input_dim, max_len=p.max_len, dim=p.dim, layers=p.layers,
                        heads=p.heads, dropout=p.dropout, adapter_hidden=p.adapter_hidden, hybrid=p.hybrid,
                        norm=p.norm, user_encoder=p.user_encoder, llm_model=p.llm_model if llm else None,
                        llm_layers=p.llm_layers, train_items=train_items)
    return resolve_user_encoder(cfg, "train.llm_model")


def molar_loss_config(p: TrainParams) -> MolarLossConfig:
    """A `train` variant's training objective: the next-item loss and the alignment to SASRec."""
    return MolarLossConfig(rec_loss=p.rec_loss, num_negatives=p.num_negatives, temperature=p.temperature,
                           align_alpha=p.align_alpha, align_tau=p.align_tau, align_positions=p.align_positions,
                           align_head=p.align_head, align_items=p.align_items, joint=p.joint,
                           align_same_user_negatives=p.align_same_user_negatives)


def fit_config(p: UserModelParams, monitor: str, name: str, max_epochs: int | None = None) -> FitConfig:
    """The training loop's settings from a user model's params section (`max_epochs`: a refit's epochs, which
    are also what a cosine schedule decays over)."""
    return FitConfig(lr=p.lr, weight_decay=p.weight_decay, batch_size=p.batch_size,
                     max_epochs=max_epochs or p.max_epochs, patience=p.patience, min_epochs=p.min_epochs,
                     stop_window=p.stop_window,
                     warmup_steps=p.warmup_steps, cosine=p.lr_schedule == "cosine",
                     precision=p.precision, ema_decay=p.ema_decay, monitor=monitor, name=name)


def encoder_config(p: EmbedParams, root: Path = Path(".")) -> EncoderConfig:
    """The item encoder the `embed` section describes. A relative `model` that exists under the project root
    (artifacts/encoder, say) is read from there."""
    cfg = EncoderConfig(**p.model_dump(exclude={"shard_size", "engine", "ray"}))
    if p.model and not Path(p.model).is_absolute() and (root / p.model).exists():
        cfg.model = str(root / p.model)
    return cfg
