"""What every stage shares: loading params, its training loop plumbing, printing its one-line summary.

The workspace readers (prepared tables, stats, trained models) are pipeline.readers', the params-to-config
functions pipeline.configs'.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from molar_core.data.sequences import EpochWindows, training_windows
from molar_core.errors import MolarError
from molar_core.io import sha256_file, usable_cpus, write_bytes_atomic
from molar_core.resume import TrainingResume
from molar_core.training import FitResult, fit, seed_everything
from pipeline import paths
from pipeline.configs import fit_config
from pipeline.console import console, print_error
from pipeline.params import DistributedParams, Params, UserModelParams, load_params

__all__ = ["console", "data_fingerprint", "epoch_progress", "is_main_process", "params_from_argv", "process_threads",
           "refit", "run_main", "summary", "train_items", "train_processes", "training_resume", "training_sequences",
           "training_summary", "write_curve"]


def params_from_argv(argv: list[str] | None = None) -> Params:
    """`python -m stages.X [params.yaml]`: validate the whole file before any work starts."""
    argv = sys.argv[1:] if argv is None else argv
    return load_params(argv[0] if argv else "params.yaml")


def is_main_process() -> bool:
    """True outside torch.distributed and on rank 0: the process that writes a training stage's outputs."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def process_threads(threads: int) -> int:
    """Torch threads of one training process: `threads` (0: this machine's usable CPUs under torchrun, which
    sets OMP_NUM_THREADS=1, the CPUs Ray reserved under Ray Train, else torch's default) shared among the
    processes of a data-parallel group."""
    import os

    from molar_core.distributed.ray_train import THREADS_ENV

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return threads or torch.get_num_threads()
    if not threads and THREADS_ENV in os.environ:  # a Ray Train process: the CPUs Ray reserved for it
        return int(os.environ[THREADS_ENV])
    return max(1, (threads or usable_cpus()) // world)


def train_processes(module: str, args: list[str], params: Params, d: DistributedParams,
                    work: Callable[[], object]) -> None:
    """Run a training stage's `work` in this process (world_size 1), or in `d.world_size` processes: the stage
    relaunches itself under torchrun (`torch.distributed.run --standalone`, restarting the group up to
    `d.max_restarts` times after a process dies: it resumes from the last finished epoch), with the validated
    params written to a file, and each process joins the group (gloo, or nccl with CUDA) before `work`. With
    `d.launcher: ray` the processes are a Ray Train job on the `runtime` cluster instead, each calling the stage's
    `main` with these params. Rank 0 writes every output, so dvc.yaml does not change."""
    import os
    import subprocess
    import tempfile

    import torch.distributed as dist
    import yaml

    if d.world_size == 1:
        work()
        return
    if dist.is_available() and dist.is_initialized():  # a Ray Train process: the launcher formed the group
        work()
        return
    if d.launcher == "ray":
        train_on_ray_cluster(module, args, params, d)
        return
    if "TORCHELASTIC_RUN_ID" not in os.environ:  # the launching process: start the group, wait for it
        with tempfile.TemporaryDirectory(prefix="molar-ddp-") as tmp:
            path = Path(tmp) / "params.yaml"
            path.write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={d.world_size}",
                   f"--max-restarts={d.max_restarts}", "-m", module, *args, str(path)]
            code_root = str(Path(__file__).resolve().parents[1])  # where `stages` is, wherever the workspace is
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [code_root, os.environ.get("PYTHONPATH")]))}
            code = subprocess.call(cmd, env=env)
        if code != 0:
            raise MolarError(f"{module}: the {d.world_size} training processes failed (exit code {code}; their "
                             "output is above)")
        return
    import threading
    from datetime import timedelta

    backend = d.backend if d.backend != "auto" else ("nccl" if torch.cuda.is_available() else "gloo")
    joined = threading.Event()

    def watchdog() -> None:
        """Gloo's connection setup can wait past its timeout when a peer's connection is lost (seen under load):
        a process that has not joined within timeout_s exits, and torchrun restarts the group."""
        if not joined.wait(d.timeout_s):
            print(f"{module}: rank {os.environ.get('RANK')} did not join the process group within "
                  f"{d.timeout_s} s; exiting so that torchrun restarts the group", file=sys.stderr, flush=True)
            os._exit(1)
    threading.Thread(target=watchdog, daemon=True).start()
    timeout = timedelta(seconds=d.timeout_s)  # bounds every collective too
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's store, shared by restarts
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                          is_master=rank == 0 and not agent_store, timeout=timeout)
    # Each restart joins under its own key prefix: under the bare store, a restarted process read the address a
    # killed process had published before the restart, and every restart failed to connect to it.
    store = dist.PrefixStore(f"molar/restart_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    joined.set()
    try:
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        work()
    finally:
        dist.destroy_process_group()


def run_stage_main(module: str, args: list[str], params: dict) -> None:
    """A training process of a Ray Train job: the stage's `main`, as `molar` calls it, with the driver's params."""
    import importlib

    importlib.import_module(module).main(Params.model_validate(params), *args)


def train_on_ray_cluster(module: str, args: list[str], params: Params, d: DistributedParams) -> None:
    """The stage as a Ray Train job of d.world_size processes on the `runtime` cluster, in this workspace."""
    import functools

    from molar_core.distributed.ray_cluster import RayConnection, connect
    from molar_core.distributed.ray_train import RayTrainJob, train_on_ray

    if not paths.STATS.is_file():
        raise MolarError(f"{module}: {paths.STATS} is missing; run the prepare stage first")
    ray = connect(RayConnection(**params.runtime.model_dump()), log_to_driver=True)  # the processes' progress
    job = RayTrainJob(workers=d.world_size, workdir=str(Path.cwd().resolve()), shared_file=str(paths.STATS),
                      shared_sha256=sha256_file(paths.STATS), cpus_per_worker=d.cpus_per_process,
                      backend=d.backend, max_restarts=d.max_restarts, timeout_s=d.timeout_s)
    try:
        train_on_ray(job, functools.partial(run_stage_main, module, args, params.model_dump()), ray)
    except MolarError as err:
        raise MolarError(f"{module}: {err}") from None


def training_sequences(sequences: list[list[int]], p: UserModelParams) -> list[list[int]] | EpochWindows:
    """A user model's training windows, cut as its params say (one place for both training stages): one fixed
    cut, or with `window_phase: random` a new cut every epoch (EpochWindows, which fit() calls per epoch)."""
    if p.window_phase == "random":
        return EpochWindows(sequences, p.max_len, p.window_overlap, newest_only=p.windows == "newest")
    return training_windows(sequences, p.max_len, p.window_overlap, newest_only=p.windows == "newest")


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
                     progress=lambda row: advance(row["epoch"], f"refit loss {row['loss']:.4f}"), resume=resume)
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


def training_resume(root: Path, name: str, *settings: dict) -> TrainingResume:
    """Per-epoch resume state of training run `name`, valid only for these settings and this prepared data."""
    blob = json.dumps([*settings, sha256_file(root / paths.ITEMS), sha256_file(root / paths.TRAIN)], sort_keys=True)
    return TrainingResume(root / paths.RESUME_DIR / name, hashlib.sha256(blob.encode()).hexdigest())


def train_items(stats: dict) -> int | None:
    """The training catalogue's size when prepare held out cold items (ids past it), else None (every item)."""
    return stats["warm_items"] if stats.get("cold_items") else None


@contextlib.contextmanager
def epoch_progress(total: int) -> Iterator[Callable[[int, str], None]]:
    """A progress bar over epochs (early stopping may end it before `total`); yields advance(epoch, status). In a
    data-parallel group only the first process shows one. Where stderr is not a terminal (a log file, CI, a
    pipe) the bar would print only when it ends, so each epoch prints one line instead: `epoch N/TOTAL STATUS`,
    the marker a log reader (or a test that kills the stage mid-run) can follow."""
    if not is_main_process():
        yield lambda epoch, status: None
        return
    if not console.is_terminal:
        yield lambda epoch, status: console.print(f"epoch {epoch}/{total} {status}", markup=False, highlight=False)
        return
    columns = [TextColumn("[bold]epoch {task.completed}/{task.total}"), BarColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}")]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("", total=total)
        yield lambda epoch, status: bar.update(task, completed=epoch, description=status)


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
        print_error(err)
        sys.exit(1)
