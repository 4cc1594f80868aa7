"""The training loop shared by the user models: seeding, epochs, early stopping on validation, best state.

A model plugs in through two callables, `loss_fn(batch_of_sequences) -> (loss, parts)` and
`validate() -> metrics`; the loop knows nothing of SASRec or content models.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from molar_core.data.sequences import pad_left
from molar_core.distributed import ddp
from molar_core.errors import TrainingError
from molar_core.metrics import mean_metrics, per_user_metrics
from molar_core.optim import AdamWLazyEmbeddings, sparse_parameters, weight_decay_groups
from molar_core.ranking import target_ranks
from molar_core.resume import EpochState, TrainingResume


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class FitConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 10
    min_epochs: int = 1
    stop_window: int = 1  # patience counts epochs since the best running mean of this many validation values
    monitor: str = "ndcg@10"
    warmup_steps: int = 0  # the first steps' learning rate rises linearly to lr (lr_factor)
    cosine: bool = False  # then decays to 0 by a half cosine over the rest of max_epochs' steps
    ema_decay: float = 0.0  # > 0: validate, keep and return a moving average of the weights (WeightAverage)
    precision: str = "fp32"  # fp32 | bf16: autocast the training forward (CPUs with AVX512-BF16/AMX, GPUs)
    name: str = "training"  # the stage or model named in errors


def epochs_since_best(values: list[float], window: int = 1) -> int:
    """Epochs since the running mean of the last `window` values last rose to a new maximum (window 1: since the
    best value). Early stopping counts patience on it: one lucky epoch in a noisy validation curve moves the
    mean by 1/window of its luck, so a run is not ended by the noise of a few hundred validation users."""
    if window < 1:
        raise ValueError(f"stop_window must be >= 1, got {window}")
    if len(values) < window:  # the mean exists once `window` epochs have run: no stopping before that
        return 0
    best, best_at = -math.inf, 0
    for i in range(window - 1, len(values)):
        mean = sum(values[i + 1 - window:i + 1]) / window
        if mean > best:
            best, best_at = mean, i
    return len(values) - 1 - best_at


def lr_factor(step: int, warmup_steps: int, cosine: bool, total_steps: int) -> float:
    """The learning rate of optimiser step `step` (0-based) as a fraction of lr: (step + 1) / warmup_steps during
    the warm-up (so the first step already moves), then 1, or with `cosine` 0.5 (1 + cos(pi t)) where t runs from
    0 at the end of the warm-up to 1 at `total_steps`: the paper's recipe is warm-up then cosine decay."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if not cosine:
        return 1.0
    t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1 + math.cos(math.pi * t))


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict[str, float]
    curve: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


class WeightAverage:
    """An exponential moving average of a model's weights, folded in after every optimiser step (`decay` per
    step). Scoring the average of the last steps instead of the last weights smooths out the epoch-to-epoch noise
    of the ranking metrics; a run with `ema_decay` validates, keeps and saves it (README: a small gain for SASRec
    on ML-100K)."""

    def __init__(self, model: nn.Module, decay: float, state: dict[str, torch.Tensor] | None = None):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.state = state if state is not None else {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].lerp_(v, 1.0 - self.decay)
            else:
                self.state[k].copy_(v)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Inside the block the model holds the average; after it, its own weights again."""
        own = copy.deepcopy(model.state_dict())
        model.load_state_dict(self.state)
        try:
            yield model
        finally:
            model.load_state_dict(own)


Windows = list[list[int]] | Callable[[torch.Generator | None], list[list[int]]]


def fit(model: nn.Module, train_seqs: Windows, loss_fn: Callable, validate: Callable[[], dict] | None,
        cfg: FitConfig, generator: torch.Generator, progress: Callable[[dict], None] | None = None,
        resume: TrainingResume | None = None) -> FitResult:
    """Train with AdamW (lazy Adam on embedding tables with sparse gradients, molar_core.optim), validate each
    epoch, stop after `patience` epochs without improvement of `cfg.monitor`, and leave the model in its best
    state. Without `validate` (a refit on data that includes the validation targets), train exactly
    `cfg.max_epochs` epochs and keep the last state. With `cfg.ema_decay`, "state" is the moving average of the
    weights (WeightAverage): it is what is validated, kept as best and left in the model. With `resume`, the
    state after every epoch is saved and a killed run continues from its last finished epoch, giving the same
    result as an uninterrupted one. `train_seqs` is a list of windows, or a function of the generator called
    at the start of every epoch for that epoch's windows (EpochWindows: a new random phase each epoch; called
    with None for the cut that sizes the learning-rate schedule).

    Data-parallel (molar_core.distributed.ddp: torch.distributed initialised with a world size above 1): every
    rank runs this same loop on the same windows and draws the same global batches; `loss_fn` gets the global
    batch and (sasrec_loss, Molar.loss) computes its rank's share of it; gradients are all-reduced after
    backward, so every rank takes the one-process step. Rank 0's weights, generator and torch RNG state are
    broadcast at the start; rank 0 validates and broadcasts the metrics (the stop decision follows from them on
    every rank); only rank 0 calls `progress` and writes the resume state, whose fingerprint gains the world
    size (a run never resumes the state of another world size). Every rank ends with the same model."""
    dp = ddp.current()
    if sparse_parameters(model):  # embedding tables with sparse gradients: lazy Adam on their rows
        opt = AdamWLazyEmbeddings(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(weight_decay_groups(model.parameters(), cfg.weight_decay), lr=cfg.lr,
                                weight_decay=cfg.weight_decay)
    if cfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {cfg.precision!r}")
    device_type = next(model.parameters()).device.type
    windows_for = train_seqs if callable(train_seqs) else lambda _generator: train_seqs
    steps_per_epoch = math.ceil(len(windows_for(None)) / cfg.batch_size)  # the cut without a random phase
    caller_resume = resume
    if dp is not None:
        dp.check_same("the number of training windows", len(windows_for(None)))
        dp.check_same("the batch size", cfg.batch_size)
        dp.broadcast_generator(generator)  # the same draws on every rank: batches, negatives, subsets
        if resume is not None:  # a state of another world size is not resumed (dropout streams differ)
            resume = copy.copy(resume)
            resume.fingerprint = f"{resume.fingerprint}|world_size={dp.world_size}"
    total = steps_per_epoch * cfg.max_epochs

    if cfg.warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {cfg.warmup_steps}")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, cfg.warmup_steps, cfg.cosine, total))
    st = EpochState(epoch=0, curve=[], best=-math.inf, best_epoch=0, stale=0, finished=False, seconds=0.0,
                    best_state=None, average=None)
    if resume is not None:
        st = resume.load(model, opt, sched, generator) or st
        if caller_resume is not resume:
            caller_resume.resumed_from = resume.resumed_from
    if dp is not None:
        dp.check_same("the resumed epoch (is the resume directory shared by every rank?)", st.epoch)
        dp.broadcast_module(model)
    average = WeightAverage(model, cfg.ema_decay, st.average) if cfg.ema_decay else None  # resumed, or fresh
    start = time.perf_counter() - st.seconds
    for epoch in range(st.epoch + 1, cfg.max_epochs + 1):
        if st.finished:
            break
        model.train()
        t0 = time.perf_counter()
        seqs = windows_for(generator)  # a new cut each epoch when the windows have a random phase
        order = torch.randperm(len(seqs), generator=generator).tolist()
        sums: dict[str, float] = {}
        with dp.rank_rng(next(model.parameters()).device) if dp is not None else contextlib.nullcontext():
            for s in range(0, len(order), cfg.batch_size):
                batch = [seqs[i] for i in order[s:s + cfg.batch_size]]
                with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"), \
                        dp.sharding() if dp is not None else contextlib.nullcontext():
                    loss, parts = loss_fn(batch)
                value = float(loss.detach()) if dp is None else None
                if dp is not None:  # the global loss and parts (every rank raises alike below)
                    value, parts = dp.reduce_parts(loss, parts)
                if not math.isfinite(value):  # stop here: NaN weights would rank every target first (NDCG 1)
                    raise TrainingError(f"{cfg.name}: the loss is {value} at epoch {epoch}, step "
                                        f"{s // cfg.batch_size + 1} (parts {parts}): training diverged; lower the "
                                        f"learning rate, or use precision fp32")
                opt.zero_grad(set_to_none=True)
                if dp is None or loss.requires_grad:
                    loss.backward()
                if dp is not None:
                    dp.sync_gradients(model)
                opt.step()
                sched.step()
                if average is not None:
                    average.update(model)
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
        row = {"epoch": epoch, **{k: v / math.ceil(len(seqs) / cfg.batch_size) for k, v in sums.items()}}
        model.eval()
        metrics: dict[str, float] = {}
        if validate is not None and (dp is None or dp.rank == 0):
            with torch.no_grad(), (average.applied(model) if average is not None else contextlib.nullcontext()):
                metrics = validate()
        if validate is not None and dp is not None:
            metrics = dp.broadcast_object(metrics, next(model.parameters()).device)
        row.update({f"valid_{k}": v for k, v in metrics.items()})
        row["seconds"] = time.perf_counter() - t0
        st.curve.append(row)
        if progress and (dp is None or dp.rank == 0):
            progress(row)
        st.epoch = epoch
        if validate is None:
            st.best_epoch = epoch
        else:
            if (score := metrics[cfg.monitor]) > st.best:  # the weights kept: the best validation epoch
                st.best, st.best_epoch = score, epoch
                st.best_state = copy.deepcopy(average.state if average is not None else model.state_dict())
            st.stale = epochs_since_best([r[f"valid_{cfg.monitor}"] for r in st.curve], cfg.stop_window)
            st.finished = st.stale >= cfg.patience and epoch >= cfg.min_epochs
        if resume is not None:
            st.seconds = time.perf_counter() - start
            st.average = average.state if average is not None else None
            if dp is None or dp.rank == 0:
                resume.save(model, opt, sched, generator, st)
    if st.best_state is not None:
        model.load_state_dict(st.best_state)
    elif average is not None:  # no validation: the average after the last epoch
        model.load_state_dict(average.state)
    best_metrics = {k[len("valid_"):]: v for k, v in st.curve[st.best_epoch - 1].items() if k.startswith("valid_")}
    return FitResult(st.best_epoch, best_metrics, st.curve, time.perf_counter() - start)


@torch.no_grad()
def encode_users(user_fn: Callable[[torch.Tensor], torch.Tensor], histories: list[list[int]], max_len: int,
                 device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """User vectors (last position) for each history, in order; CPU float32. The output is allocated once and
    filled: small per-batch results kept between each batch's large temporaries fragmented glibc's heap, so
    encoding 1e5 users held 2.3 GB it had freed (bench/scale.py)."""
    out: torch.Tensor | None = None
    for s in range(0, len(histories), batch_size):
        seq = pad_left(histories[s:s + batch_size], max_len).to(device)
        vectors = user_fn(seq).float().cpu()
        if out is None:
            out = torch.empty(len(histories), vectors.shape[1])
        out[s:s + len(vectors)] = vectors
    return out if out is not None else torch.zeros(0, 0)


def ranking_metrics(users: torch.Tensor, items: torch.Tensor, histories: list[list[int]], targets: list[int],
                    ks: list[int], mask_history: bool) -> dict[str, float]:
    """Mean full-ranking metrics by exact torch scoring (used for validation during training)."""
    ranks = target_ranks(users, items, histories if mask_history else None, torch.tensor(targets))
    return mean_metrics(per_user_metrics(ranks.numpy(), ks))
