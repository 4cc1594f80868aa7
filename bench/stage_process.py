"""Run one pipeline stage the way `dvc repro` does: `python -m stages.X [ARGS] params.yaml` in a workspace, in a
process of its own (so its peak memory is its own), with this checkout importable and its output in a log.

The stage is started by a small launcher process, not by the benchmark itself: Linux counts in a child's
ru_maxrss the peak of the memory image it replaced at exec, which is its parent's. A benchmark that holds 1.5
GB (the 1e6-item synthetic tables) then reported 1.5 GB for every stage it started. The launcher's own image
is a bare interpreter (about 10 MB), which is the floor of what this reports.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# argv: PEAK_FILE COMMAND...; runs COMMAND, writes its ru_maxrss (KiB) to PEAK_FILE, exits with its status
LAUNCHER = ("import os, subprocess, sys\n"
            "p = subprocess.Popen(sys.argv[2:])\n"
            "_, status, usage = os.wait4(p.pid, 0)\n"
            "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
            "sys.exit(os.waitstatus_to_exitcode(status))\n")


def run_stage(ws: Path, argv: list[str], log: Path) -> dict:
    """`argv` is the module and its arguments (["stages.train", "molar"]); returns wall seconds and the peak
    resident memory of that process (os.wait4), or raises naming the stage, the workspace and the log."""
    path = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    with tempfile.TemporaryDirectory() as tmp, open(log, "ab") as out:
        peak = Path(tmp) / "maxrss_kib"
        t = time.perf_counter()
        code = subprocess.call([sys.executable, "-c", LAUNCHER, str(peak), sys.executable, "-m", *argv,
                                "params.yaml"], cwd=ws, stdout=out, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": path})
        seconds = time.perf_counter() - t
        if code != 0:
            raise RuntimeError(f"{' '.join(argv)} failed in {ws}: see {log}")
        return {"seconds": round(seconds, 1), "peak_rss_mib": round(int(peak.read_text()) / 1024, 1)}
