"""bench/stage_process.run_stage: the peak memory it reports is the stage's own, not the benchmark's."""

from __future__ import annotations

import pytest

from bench.stage_process import run_stage


def test_peak_memory_is_the_stage_s_own_even_when_the_benchmark_is_large(tmp_path):
    """Linux puts the exec-replaced parent image's peak into a child's ru_maxrss; a benchmark holding 400 MB
    once reported 400 MB for a stage that used 10."""
    (tmp_path / "params.yaml").write_text("{}")
    big = bytearray(400 << 20)
    big[::4096] = b"\x01" * len(big[::4096])  # touch every page: resident
    small = run_stage(tmp_path, ["json.tool"], tmp_path / "small.log")  # `python -m json.tool params.yaml`
    assert small["peak_rss_mib"] < 100, small
    (tmp_path / "grow.py").write_text("x = bytearray(300 << 20)\nx[::4096] = b'\\x01' * len(x[::4096])\n")
    grown = run_stage(tmp_path, ["grow"], tmp_path / "grow.log")
    assert 300 < grown["peak_rss_mib"] < 400, grown
    del big


def test_a_failing_stage_names_itself_and_its_log(tmp_path):
    (tmp_path / "params.yaml").write_text("not json")
    with pytest.raises(RuntimeError, match=r"json\.tool failed in .*see .*bad\.log"):
        run_stage(tmp_path, ["json.tool"], tmp_path / "bad.log")
