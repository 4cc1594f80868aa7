"""This machine's ceilings, measured in the calling script: matmul FLOP/s and memory bandwidth.

Every bench that reports a fraction of the hardware measures the ceiling in the same process, with the same
thread count, right before its workload, so load from other work skews both alike.
"""

from __future__ import annotations

import time

import torch


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
