"""`python -m bench.gpu` must run where only torch, transformers and safetensors exist (the lent GPU machines): here it
runs its CPU column with polars, faiss and dvc made unimportable."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import docs_tables, gpu

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_bench_runs_without_the_rest_of_the_stack(tmp_path):
    code = ("import sys, runpy; [sys.modules.__setitem__(m, None) for m in ('polars', 'faiss', 'dvc', 'typer')]; "
            f"sys.argv = ['bench.gpu', '--steps', '2', '--items', '8', '--json', {str(tmp_path / 'gpu.json')!r}]; "
            "runpy.run_module('bench.gpu', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    for path in ("train fp32", "train bf16", "embed", "rank 1e+05 items", "rank 1e+06 items"):
        assert f"| {path} |" in out.stdout
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert gpu.markdown(result) in out.stdout  # the page renders what the run printed
    assert [r["path"] for r in result["rows"]][:3] == ["train fp32", "train bf16", "embed"]


def test_gpu_tables_render_each_path_and_the_large_encoder_from_the_json():
    result = {"rows": [{"path": "train fp32", "cpu": "16.3", "cuda": "143.1", "speedup": "8.8x", "unit": "steps/s",
                        "check": "OK: first loss 8.0274 vs 8.0274"}],
              "qwen2vl_2b_cuda": [{"shape": "1 visual token", "items_per_s": 390.71, "hours_per_1e6_items": 0.711}]}
    text = docs_tables.renderer("gpu")(result)
    assert "| train fp32 | 16.3 | 143.1 | 8.8x | steps/s | OK: first loss 8.0274 vs 8.0274 |" in text
    assert "| 1 visual token | 390.7 | 0.71 |" in text
    assert "Qwen2-VL-2B" not in gpu.markdown({**result, "qwen2vl_2b_cuda": []})  # a CPU-only run: one table
