"""Run one pipeline stage the way `dvc repro` does: `python -m stages.X [ARGS] params.yaml` in a workspace, in a
process of its own (so its peak memory is its own), with this checkout importable and its output in a log."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_stage(ws: Path, argv: list[str], log: Path) -> dict:
    """`argv` is the module and its arguments (["stages.train", "molar"]); returns wall seconds and the peak
    resident memory of that process (os.wait4), or raises naming the stage, the workspace and the log."""
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    t = time.perf_counter()
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", *argv, "params.yaml"], cwd=ws, stdout=out,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": path})
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed in {ws}: see {log}")
    return {"seconds": round(seconds, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}
