"""What every stage shares: loading params, reading prepared data, printing its one-line summary."""

from __future__ import annotations

import sys
from pathlib import Path

import polars as pl
from rich.console import Console

from molar_core.errors import ArtifactError, MolarError
from molar_core.io import read_json
from pipeline import paths
from pipeline.params import Params, load_params

console = Console(stderr=True)


def params_from_argv(argv: list[str] | None = None) -> Params:
    """`python -m stages.X [params.yaml]`: validate the whole file before any work starts."""
    argv = sys.argv[1:] if argv is None else argv
    return load_params(argv[0] if argv else "params.yaml")


def read_prepared(root: Path, name: str) -> pl.DataFrame:
    path = root / {"items": paths.ITEMS, "train": paths.TRAIN, "valid": paths.VALID, "test": paths.TEST}[name]
    if not path.exists():
        raise ArtifactError(str(path), "not found", "dvc repro prepare (or `molar prepare`)")
    return pl.read_parquet(path)


def read_stats(root: Path) -> dict:
    path = root / paths.STATS
    if not path.exists():
        raise ArtifactError(str(path), "not found", "dvc repro prepare (or `molar prepare`)")
    return read_json(path)


def summary(stage: str, text: str) -> None:
    console.print(f"[bold green]{stage}[/]: {text}")


def run_main(fn) -> None:
    """Run a stage's main; a MolarError becomes one clear line and exit code 1 (no traceback)."""
    try:
        fn()
    except MolarError as err:
        console.print(f"[bold red]error[/]: {err}")
        sys.exit(1)
