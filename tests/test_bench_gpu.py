"""`python -m bench.gpu` must run where only torch, transformers and safetensors exist (the lent GPU machines): here it
runs its CPU column with polars, faiss and dvc made unimportable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_runs_without_the_rest_of_the_stack():
    code = ("import sys, runpy; [sys.modules.__setitem__(m, None) for m in ('polars', 'faiss', 'dvc', 'typer')]; "
            "sys.argv = ['bench.gpu', '--steps', '2', '--items', '8']; runpy.run_module('bench.gpu', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for path in ("train fp32", "train bf16", "embed", "rank 1e+05 items", "rank 1e+06 items"):
        assert f"| {path} |" in out.stdout
