"""This machine and checkout: what a result records about where it was measured (`describe`, `checkout`), and
the machine's ceilings, measured in the calling script: matmul FLOP/s and memory bandwidth.

Every bench that reports a fraction of the hardware measures the ceiling in the same process, with the same
thread count, right before its workload, so load from other work skews both alike.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from molar_core.io import usable_cpus

ROOT = Path(__file__).resolve().parents[1]


def describe() -> dict:
    """CPU model and counts, torch's CPU kernels, OS, Python, torch and the GPU torch sees: the conditions a results
    table carries. The kernels (AVX2, AVX512, ...) set speed and float summation order alike: the same seed trains
    to other numbers on a CPU whose kernels differ."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    usable = usable_cpus()
    info = {"cpu": cpu, "cpus": os.cpu_count(), "cpus_usable": usable, "os": platform.platform(),
            "cpu_kernels": torch.backends.cpu.get_cpu_capability(), "python": sys.version.split()[0],
            "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def hardware_notes(machine: dict) -> list[str]:
    """['2 of 2 CPUs', 'AVX2 kernels', 'NVIDIA H200']: what a table's heading says of a recorded machine (results
    recorded before the kernels were leave them out)."""
    notes = [f"{machine.get('cpus_usable', '?')} of {machine.get('cpus', '?')} CPUs"]
    if machine.get("cpu_kernels"):
        notes.append(f"{machine['cpu_kernels']} kernels")
    if "gpu" in machine:
        notes.append(machine["gpu"])
    return notes


def checkout() -> dict:
    """The commit this code is, and whether tracked files differ from it (then the numbers are not that commit's).
    Results and pages (bench/results, *.md) are outputs, not code: a bench run after another one is still clean."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results",
                 ":(exclude)*.md")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def best_seconds(fn, reps: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 3) -> float:
    """Best GFLOP/s of an n x n x n matmul with the current torch thread count."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n ** 3 / best_seconds(lambda: a @ b, reps) / 1e9


def memory_bandwidth(mib: int = 1024, reps: int = 3) -> float:
    """Best GB/s of copying a `mib` MiB fp32 buffer into another (bytes read + bytes written)."""
    a = torch.ones(mib << 18)
    b = torch.empty_like(a)
    return 2 * a.numel() * 4 / best_seconds(lambda: b.copy_(a), reps) / 1e9
