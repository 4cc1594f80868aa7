"""What every stage shares: loading params, reading prepared data, printing its one-line summary."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import polars as pl
import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from molar_core.checkpoint import Checkpoint, open_checkpoint
from molar_core.data.processing import check_prepared
from molar_core.data.sequences import EpochWindows, training_windows
from molar_core.errors import ArtifactError, MolarError
from molar_core.io import read_json, sha256_file, write_bytes_atomic
from molar_core.resume import TrainingResume
from molar_core.training import FitConfig, FitResult, fit, seed_everything
from pipeline import paths
from pipeline.params import Params, UserModelParams, load_params

console = Console(stderr=True)
T = TypeVar("T")


def params_from_argv(argv: list[str] | None = None) -> Params:
    """`python -m stages.X [params.yaml]`: validate the whole file before any work starts."""
    argv = sys.argv[1:] if argv is None else argv
    return load_params(argv[0] if argv else "params.yaml")


REBUILD_PREPARED = "dvc repro prepare (or `molar prepare`)"


def _open_parquet(path: Path, read: Callable[[Path], T]) -> T:
    """`read(path)`, or an ArtifactError naming the file and the stage that makes it (missing or unreadable)."""
    if not path.exists():
        raise ArtifactError(str(path), "not found", REBUILD_PREPARED)
    try:
        return read(path)
    except (pl.exceptions.PolarsError, OSError) as err:
        raise ArtifactError(str(path), f"not a readable parquet file ({err})", REBUILD_PREPARED) from None


def read_table(prepared: Path, name: str) -> pl.DataFrame:
    """items, train, valid or test from a prepared-data directory, or an error naming the stage that makes it."""
    path = prepared / f"{name}.parquet"
    df = _open_parquet(path, pl.read_parquet)
    stats = prepared / "stats.json"
    num_items = read_json(stats).get("items") if name != "items" and stats.exists() else None
    check_prepared(name, df, num_items, str(path), REBUILD_PREPARED)
    return df


def scan_items(root: Path) -> pl.LazyFrame:
    """items.parquet as a LazyFrame, checked as read_prepared checks it (columns, types, ids 1..N) while reading
    only its id column: the embed stage then reads the texts a slice at a time."""
    path = root / paths.ITEMS

    def scan(p: Path) -> tuple[pl.LazyFrame, pl.Schema, pl.DataFrame]:
        lazy = pl.scan_parquet(p)
        schema = lazy.collect_schema()
        return lazy, schema, lazy.select("item_id").collect() if "item_id" in schema else pl.DataFrame()

    lazy, schema, ids = _open_parquet(path, scan)
    check_prepared("items", ids, None, str(path), REBUILD_PREPARED, schema=schema)
    return lazy


def read_prepared(root: Path, name: str) -> pl.DataFrame:
    """A prepared table of the workspace at `root`."""
    return read_table(root / paths.PREPARED, name)


def full_sequences(test: pl.DataFrame) -> list[list[int]]:
    """Each user's whole known sequence (test history + test item): what `next` user vectors are computed from."""
    return [h + [t] for h, t in zip(test["history"].to_list(), test["target"].to_list())]


def training_sequences(sequences: list[list[int]], p: UserModelParams) -> list[list[int]] | EpochWindows:
    """A user model's training windows, cut as its params say (one place for both training stages): one fixed
    cut, or with `window_phase: random` a new cut every epoch (EpochWindows, which fit() calls per epoch)."""
    if p.window_phase == "random":
        return EpochWindows(sequences, p.max_len, p.window_overlap, newest_only=p.windows == "newest")
    return training_windows(sequences, p.max_len, p.window_overlap, newest_only=p.windows == "newest")


def fit_config(p: UserModelParams, monitor: str, name: str, max_epochs: int | None = None) -> FitConfig:
    """The training loop's settings from a user model's params section (`max_epochs`: a refit's epochs, which
    are also what a cosine schedule decays over)."""
    return FitConfig(lr=p.lr, weight_decay=p.weight_decay, batch_size=p.batch_size,
                     max_epochs=max_epochs or p.max_epochs, patience=p.patience, min_epochs=p.min_epochs,
                     stop_window=p.stop_window,
                     warmup_steps=p.warmup_steps, cosine=p.lr_schedule == "cosine",
                     precision=p.precision, ema_decay=p.ema_decay, monitor=monitor, name=name)


def refit(build: Callable[[torch.Generator], tuple[nn.Module, Callable]], test: pl.DataFrame, p: UserModelParams,
          epochs: int, root: Path, name: str, stage: str, *settings: dict) -> tuple[nn.Module, dict, TrainingResume]:
    """`refit: true`: a fresh model from `build(generator)` -> (model, loss_fn), seeded as the early-stopped run
    was, trained for `epochs` epochs (that run's best) on every user's training items plus the validation item,
    without validation, since its targets are now training data; the model is left in its last state. Resumable
    under `name`-refit for these settings; returns the model, what config.json records of the refit, and the
    resume state to clear once the artifacts are written."""
    generator = seed_everything(p.seed)
    model, loss_fn = build(generator)
    resume = training_resume(root, f"{name}-refit", *settings, {"epochs": epochs})
    seqs = training_sequences(test["history"].to_list(), p)  # test history = training items + validation item
    with epoch_progress(epochs) as advance:
        result = fit(model, seqs, loss_fn, None, fit_config(p, "", f"{stage} refit", max_epochs=epochs), generator,
                     progress=lambda row: advance(f"refit loss {row['loss']:.4f}"), resume=resume)
    info = {"epochs": epochs, "training_windows": len(seqs), "train_seconds": round(result.seconds, 1),
            "resumed_after_epoch": resume.resumed_from,
            "data": "each user's training items + validation item (validation metrics in metrics.json are then "
                    "measured on trained targets; `valid` here is the early-stopped run's)",
            "loss": [round(row["loss"], 5) for row in result.curve]}
    return model, info, resume


def training_summary(result: FitResult, refit_info: dict | None, monitor: str) -> tuple[dict, str]:
    """metrics/train_*.json's content and the stage's one-line summary of a training run (and its refit)."""
    metrics = {"best_epoch": result.best_epoch, "valid": result.best_metrics, "train_seconds": round(result.seconds, 1)}
    line = (f"best epoch {result.best_epoch}/{len(result.curve)}, valid {monitor} {result.best_metrics[monitor]:.4f}, "
            f"{result.seconds:.0f}s")
    if refit_info:
        metrics["refit_seconds"] = refit_info["train_seconds"]
        line += f"; refit on training + validation items, {refit_info['epochs']} epochs, {refit_info['train_seconds']:.0f}s"
    return metrics, line


def data_fingerprint(root: Path, stats: dict) -> dict:
    """What a checkpoint was trained on, so a copy used elsewhere can check its data (see molar_core.checkpoint)."""
    return {"items_sha256": sha256_file(root / paths.ITEMS), "num_items": stats["items"], "num_users": stats["users"]}


def open_trained(root: Path, model: str, stats: dict) -> Checkpoint:
    """A model directory of this workspace, refused (naming the stage that rebuilds it) when it was trained on
    other prepared data than the workspace's: a stale checkpoint would otherwise index and score the wrong items."""
    ckpt = open_checkpoint(root / paths.model_dir(model), paths.producer(model))
    ckpt.check_data(root / paths.ITEMS, stats["users"])
    return ckpt


def index_paths(root: Path, model: str) -> tuple[Path, Path]:
    """A model's FAISS index and the JSON beside it that records what it was built from."""
    faiss_path = root / paths.INDEX_DIR / f"{model}.faiss"
    return faiss_path, faiss_path.with_suffix(".json")


def index_is_current(root: Path, ckpt: Checkpoint) -> bool:
    """Whether the workspace's index of this model was built from the checkpoint's item vectors as they are now."""
    faiss_path, info_path = index_paths(root, ckpt.name)
    if not (faiss_path.exists() and info_path.exists()):
        return False
    return read_json(info_path).get("item_vectors_sha256") == sha256_file(ckpt.path / "item_vectors.safetensors")


def training_resume(root: Path, name: str, *settings: dict) -> TrainingResume:
    """Per-epoch resume state of training run `name`, valid only for these settings and this prepared data."""
    blob = json.dumps([*settings, sha256_file(root / paths.ITEMS), sha256_file(root / paths.TRAIN)], sort_keys=True)
    return TrainingResume(root / paths.RESUME_DIR / name, hashlib.sha256(blob.encode()).hexdigest())


def train_items(stats: dict) -> int | None:
    """The training catalogue's size when prepare held out cold items (ids past it), else None (every item)."""
    return stats["warm_items"] if stats.get("cold_items") else None


def read_stats(root: Path) -> dict:
    path = root / paths.STATS
    if not path.exists():
        raise ArtifactError(str(path), "not found", REBUILD_PREPARED)
    return read_json(path)


@contextlib.contextmanager
def epoch_progress(total: int) -> Iterator[Callable[[str], None]]:
    """A progress bar over epochs (early stopping may end it before `total`); yields advance(status)."""
    columns = [TextColumn("[bold]epoch {task.completed}/{task.total}"), BarColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}")]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("", total=total)
        yield lambda status: bar.update(task, advance=1, description=status)


def write_curve(path: Path, curve: list[dict]) -> None:
    """Training curve (one row per epoch) as CSV, the format `dvc plots` reads."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(curve[0].keys()))
    writer.writeheader()
    writer.writerows(curve)
    write_bytes_atomic(path, buf.getvalue().encode())


def summary(stage: str, text: str) -> None:
    console.print(f"[bold green]{stage}[/]: {text}")


def run_main(fn) -> None:
    """Run a stage's main; a MolarError becomes one clear line and exit code 1 (no traceback)."""
    try:
        fn()
    except MolarError as err:
        console.print(f"[bold red]error[/]: {escape(str(err))}", soft_wrap=True)
        sys.exit(1)
