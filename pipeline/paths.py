"""Where each stage writes: one place, so stages, CLI, tests and dvc.yaml agree."""

from __future__ import annotations

from pathlib import Path

PREPARED = Path("data/prepared")
ITEMS = PREPARED / "items.parquet"
TRAIN = PREPARED / "train.parquet"
VALID = PREPARED / "valid.parquet"
TEST = PREPARED / "test.parquet"
STATS = PREPARED / "stats.json"

ARTIFACTS = Path("artifacts")
INDEX_DIR = ARTIFACTS / "index"
ENCODER = ARTIFACTS / "encoder"  # finetune_encoder: a model directory embed can load (or a note that it is off)
EMBEDDINGS = ARTIFACTS / "embeddings"  # embed: shard-*.safetensors + manifest.json (persist)
RESUME_DIR = Path(".molar/resume")  # per-epoch training state of an unfinished run (deleted when it finishes)
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")


def model_dir(model: str) -> Path:
    """Each user model writes model.safetensors, config.json, item_vectors and user_vectors here."""
    return ARTIFACTS / model


# `molar add-items` (no stage: outside every DVC output, so adding items never makes a stage stale)
ADDED_ITEMS = ARTIFACTS / "added-items"  # molar_core.added_items.added_items_dir(model_dir) agrees
ADDED_EMBEDDINGS = ADDED_ITEMS / "embeddings"  # cache of added contents ("embeddings" is no model name)


def added_items_dir(model: str) -> Path:
    """The items added to a content model without retraining: items.parquet, features, item vectors, meta.json."""
    return ADDED_ITEMS / model


REPORT = Path("reports/index.html")


def producer(model: str) -> str:
    """The command that (re)builds a model's directory: SASRec in train_id, every other model in train@NAME."""
    return "dvc repro train_id" if model == "sasrec" else f"dvc repro train@{model}"
