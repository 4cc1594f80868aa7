"""Fault injection: SIGKILL every stage at random moments (10 seeded trials each), rerun it, and compare every artifact
with an uninterrupted run: identical (timings aside), nothing half-written, and only unfinished work redone
(embed: the items of shards flushed before the kill are reused, not re-encoded; training: the rerun resumes after
the last epoch saved before the kill).

The moments follow the stage's own progress, not the clock of a reference run (which drifts on a loaded
machine): stages that print progress markers (an `epoch N/M` line per training epoch, an `embed: committed` line
per shard) are killed after a random marker, a random part of the last gap between markers later; the short
stages without markers (prepare, index, evaluate) are killed a random part of a reference run into the run, and
a kill that comes after the stage has ended is tried again sooner, so every trial kills a running stage.
"""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
import yaml
from safetensors import safe_open

from molar_core.io import parse_safetensors_metadata
from pipeline import paths
from tests.conftest import small_params
from tests.test_finetune_encoder import STAGE

REPO = Path(__file__).resolve().parents[1]
TRIALS = 10
pytestmark = pytest.mark.slow

TRAIN_FILES = ("model.safetensors", "item_vectors.safetensors", "user_vectors.safetensors", "config.json")
OUTPUTS = {
    "embed": ["artifacts/embeddings/manifest.json", "artifacts/embeddings/items.safetensors"],  # + every shard
    "train_id": [f"artifacts/sasrec/{f}" for f in TRAIN_FILES] + ["metrics/train_id.json", "plots/train_id/curve.csv"],
    "train": [f"artifacts/content/{f}" for f in TRAIN_FILES] + ["metrics/train_content.json", "plots/train/content.csv"],
    "prepare": ["data/prepared/items.parquet", "data/prepared/train.parquet", "data/prepared/valid.parquet",
                "data/prepared/test.parquet", "data/prepared/stats.json"],
    "index": [f"artifacts/index/{m}.{ext}" for m in ("sasrec", "content", "molar") for ext in ("faiss", "json")],
    "finetune_encoder": [f"artifacts/encoder/{f}" for f in (
        "model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
        "molar_finetune.json")] + ["metrics/finetune_encoder.json", "plots/finetune_encoder/curve.csv"],
    "evaluate": ["metrics/metrics.json", "metrics/per_user.parquet", "plots/evaluate/ndcg_by_history_length.csv",
                 "plots/evaluate/ndcg_by_popularity.csv"],
}
JOURNAL = "artifacts/embeddings/manifest.json"
ARGV = {"train": ["content"]}  # stage arguments before params.yaml
TIMING_KEYS = {"build_seconds", "seconds", "runtime", "train_seconds", "resumed_after_epoch"}
SMALL_SHARDS = {"shard_size": 96, "batch_size": 32}  # several shards, so a kill can land between two flushes


def _strip_timings(obj):
    if isinstance(obj, dict):
        return {k: _strip_timings(v) for k, v in obj.items() if k not in TIMING_KEYS}
    return obj


def _outputs(root: Path, stage: str) -> list[str]:
    shards = sorted(str(p.relative_to(root)) for p in (root / "artifacts/embeddings").glob("shard-*"))
    return OUTPUTS[stage] + (shards if stage == "embed" else [])


def _snapshot(root: Path, stage: str) -> dict[str, object]:
    out = {}
    for rel in _outputs(root, stage):
        path = root / rel
        if not path.exists():
            out[rel] = None
        elif path.suffix == ".json":
            out[rel] = _strip_timings(json.loads(path.read_text()))
        elif path.suffix == ".csv":  # training curves carry per-epoch wall time
            out[rel] = [_strip_timings(row) for row in csv.DictReader(io.StringIO(path.read_text()))]
        else:
            out[rel] = path.read_bytes()
    return out


def _remove_outputs(root: Path, stage: str) -> None:
    for rel in _outputs(root, stage):
        (root / rel).unlink(missing_ok=True)


MARKER = re.compile(r"^(epoch \d+/\d+ |embed: committed )")  # the progress lines stages print (stages/common.py,
# stages/embed.py) when their output is not a terminal
MARKED = ("finetune_encoder", "embed", "train_id", "train")
MAX_ATTEMPTS = 6  # per trial: a kill that came after the stage ended is tried again (sooner, where unmarked)


def _start(root: Path, stage: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", f"stages.{stage}", *ARGV.get(stage, []), "params.yaml"], cwd=root,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _marker_times(proc: subprocess.Popen) -> "queue.Queue[float | None]":
    """The arrival time of each progress marker the stage prints, then None at the end of its output."""
    times: queue.Queue[float | None] = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            if MARKER.match(line):
                times.put(time.perf_counter())
        times.put(None)
    threading.Thread(target=read, daemon=True).start()
    return times


def _finish(root: Path, stage: str) -> tuple[float, str, list[float]]:
    """Run the stage to its end: wall time, output, and when each progress marker came (seconds from start)."""
    t = time.perf_counter()
    proc = _start(root, stage)
    lines, markers = [], []
    for line in proc.stdout:
        lines.append(line)
        if MARKER.match(line):
            markers.append(time.perf_counter() - t)
    proc.wait(timeout=300)
    out = "".join(lines)
    assert proc.returncode == 0, out
    return time.perf_counter() - t, out, markers


def _kill_until_it_lands(root: Path, stage: str, wait: Callable[[subprocess.Popen, float, int], None]
                         ) -> subprocess.Popen:
    """Start the stage on fresh outputs and SIGKILL it once `wait(proc, start, attempt)` returns. A kill that came
    after the stage ended is tried again, up to MAX_ATTEMPTS; whether it landed is read from the exit status (-9),
    not from a poll before the kill: the stage may end in between."""
    for attempt in range(MAX_ATTEMPTS):
        _remove_outputs(root, stage)
        start = time.perf_counter()
        proc = _start(root, stage)
        wait(proc, start, attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode == -signal.SIGKILL:
            return proc
    pytest.fail(f"{stage} ended before every one of {MAX_ATTEMPTS} kills")


def _kill_after_marker(root: Path, stage: str, n_markers: int, first_s: float, rng: random.Random
                       ) -> subprocess.Popen:
    """Start the stage and SIGKILL it after marker k (k random below the reference run's count, so more work
    follows), a random part of the gap before that marker later; k = 0 kills before any marker, a random part of
    the reference run's time to its first one. A kill that came after the stage ended (a long pause, a short
    last epoch) is drawn again."""
    def wait(proc: subprocess.Popen, start: float, attempt: int) -> None:
        k, part = rng.randrange(n_markers), rng.uniform(0.0, 1.0)
        times = _marker_times(proc)
        last, seen = start, 0
        while seen < k:
            arrived = times.get(timeout=300)
            assert arrived is not None, f"the stage ended after {seen} of {k} markers"
            gap, last, seen = arrived - last, arrived, seen + 1
        time.sleep(part * (first_s if k == 0 else gap))
    return _kill_until_it_lands(root, stage, wait)


def _kill_within(root: Path, stage: str, duration: float, rng: random.Random) -> subprocess.Popen:
    """Start the stage and SIGKILL it a random part of `duration` in; a kill that came after the stage ended is
    redone at half the delay, so the kill lands in the run however fast the machine is today."""
    delay = rng.uniform(0.2, 1.0) * duration
    return _kill_until_it_lands(root, stage, lambda proc, start, attempt: time.sleep(delay / 2 ** attempt))


def _done_before_kill(root: Path, stage: str) -> int | None:
    """Work a rerun must not redo: contents in flushed shards (embed), the last saved epoch (training)."""
    if stage == "embed":
        manifest = root / "artifacts/embeddings/manifest.json"
        return sum(s["items"] for s in json.loads(manifest.read_text())["shards"]) if manifest.exists() else 0
    if stage in ("train_id", "train", "finetune_encoder"):
        name = {"train_id": "sasrec", "train": "content", "finetune_encoder": "encoder"}[stage]
        state = root / paths.RESUME_DIR / name / "state.safetensors"
        if not state.exists():
            return None
        with safe_open(str(state), "pt") as f:
            return parse_safetensors_metadata(f.metadata())["epoch"]
    return None


def _redone_check(root: Path, stage: str, done: int | None, log: str) -> None:
    if stage == "embed":
        distinct, encoded = (int(re.search(pattern, log).group(1).replace(",", ""))
                             for pattern in (r"([\d,]+) distinct contents", r"([\d,]+) contents encoded"))
        assert encoded == distinct - done, log  # only contents not in a shard flushed before the kill
    elif stage in ("train_id", "train", "finetune_encoder"):
        config = json.loads((root / {"train_id": "artifacts/sasrec/config.json", "train": "artifacts/content/config.json",
                                     "finetune_encoder": "artifacts/encoder/molar_finetune.json"}[stage]).read_text())
        assert config["resumed_after_epoch"] == done  # epochs up to the last saved one were not rerun


@pytest.fixture(scope="module")
def base(small_workspace, ml_small, tmp_path_factory) -> Path:
    """The finished small workspace with the params.yaml its stages were run with."""
    root = tmp_path_factory.mktemp("faults") / "base"
    shutil.copytree(small_workspace, root)
    p = small_params(ml_small, models=("sasrec", "content", "molar")).model_dump()
    p["embed"].update(SMALL_SHARDS)
    p["train_id"].update(max_epochs=6, patience=100)
    p["train"].update(max_epochs=6, patience=100)
    p["finetune_encoder"] = {**STAGE, "max_epochs": 3, "patience": 100}
    (root / "params.yaml").write_text(yaml.safe_dump(p))
    return root


@pytest.mark.parametrize("stage", ["prepare", "finetune_encoder", "embed", "train_id", "train", "index", "evaluate"])
def test_sigkill_at_random_moments_then_rerun_gives_the_same_artifacts(base, tmp_path, stage):
    ref_root = tmp_path / "ref"
    shutil.copytree(base, ref_root)
    _remove_outputs(ref_root, stage)
    if stage == "embed":  # embed reads only items.parquet: 5 shards' worth keep the 10 trials short
        items = ref_root / paths.ITEMS
        pl.read_parquet(items).head(5 * SMALL_SHARDS["shard_size"]).write_parquet(items)
    duration, _, markers = _finish(ref_root, stage)
    if stage in MARKED:
        assert len(markers) >= 3, markers  # enough markers to kill between them
    elif duration < 10:  # a short stage's first run can be slow (cold imports): time a warm one too
        _remove_outputs(ref_root, stage)
        duration = min(duration, _finish(ref_root, stage)[0])
    ref = _snapshot(ref_root, stage)
    assert all(v is not None for v in ref.values())

    rng = random.Random(f"{stage}-faults")
    partial = 0
    for trial in range(TRIALS):
        root = tmp_path / f"t{trial}"
        shutil.copytree(ref_root, root)
        _remove_outputs(root, stage)
        proc = (_kill_after_marker(root, stage, len(markers), markers[0] if markers else 0.0, rng)
                if stage in MARKED else _kill_within(root, stage, duration, rng))
        assert proc.returncode == -signal.SIGKILL, (trial, proc.returncode)  # the kill landed in the run
        for rel, value in _snapshot(root, stage).items():  # after the kill: each output whole or absent
            if rel == JOURNAL:  # embed's manifest is its progress journal: valid, listing only whole shards
                assert value is None or {s["file"] for s in value["shards"]} <= {Path(r).name for r in ref}, trial
            else:
                assert value is None or value == ref.get(rel), (trial, rel)
        done = _done_before_kill(root, stage)
        partial += bool(done) and ref != _snapshot(root, stage)
        _, log, _ = _finish(root, stage)
        _redone_check(root, stage, done, log)
        assert _snapshot(root, stage) == ref, trial
        leftovers = [p for p in root.rglob("*") if ".tmp" in p.name]
        assert not leftovers, leftovers
        shutil.rmtree(root)
    if stage in MARKED:
        assert partial >= 1, partial  # some kills came after part of the work was saved: the resume path ran
