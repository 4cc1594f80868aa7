"""The results and performance pages' tables, rendered from the JSON results the bench scripts write, so a page
cannot drift from the measurement it quotes.

    python -m bench.docs_tables            # rewrite every generated block in README.md and docs/*.md
    python -m bench.docs_tables --check    # exit 1 naming each block that differs from its JSON (a test runs it)

A page marks a generated block with two comment lines; everything between them is replaced:

    <!-- bench-table: cold_start -->
    <!-- /bench-table -->

The name is a file under bench/results/ (`cold_start` reads bench/results/cold_start.json) and picks the
renderer of the bench script that wrote it (RENDERERS; `sweep_paper_ml100k` is rendered as a sweep, and
`paper_table/summary` renders paper_table.json another way). Each block
opens with the conditions the JSON records: commit (and whether tracked files differed from it), date and
machine. Prose around a block stays hand-written.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

from bench import (cold_start, epoch_curve, gpu, index_scale, limits, masked_search, paper_table, peers, ranking,
                   scale, scaling, split_gap, stopping, sweep, train_step)
from bench.common import ROOT
from bench.machine import hardware_notes

RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
RENDERERS: dict[str, Callable[[dict], str]] = {
    "cold_start": cold_start.markdown,
    "epoch_curve": epoch_curve.markdown,
    "gpu": gpu.markdown,
    "index_scale": index_scale.markdown,
    "index_scale/scanned": lambda r: index_scale.markdown(r, scanned=True),  # the run that searches deep into the lists
    "limits": limits.markdown,
    "masked_search": masked_search.markdown,
    "ranking": ranking.markdown,
    "stopping": stopping.markdown,
    "split_gap": split_gap.markdown,
    "train_step": train_step.markdown,
    "scaling": scaling.markdown,
    "scale": scale.markdown,  # also bench/results/scale_*.json (a setting beside the default, its own --out)
    "paper_table": lambda r: paper_table.markdown(r["rows"], r, title=False),
    "paper_table/summary": paper_table.summary,  # the README's short form of the same JSON
    "peers": peers.markdown,  # also bench/results/peers_*.json
    "sweep": sweep.markdown,  # any bench/results/sweep*.json (`python -m bench.sweep ... --json`)
}
BLOCK = re.compile(r"(?P<open><!-- bench-table: (?P<name>[\w/-]+) -->\n)(?P<body>.*?)(?P<close><!-- /bench-table -->)",
                   re.S)


def conditions(result: dict) -> str:
    """'Measured at commit abc1234 on 2026-11-30, AMD EPYC (2 of 2 CPUs, torch 2.13.0+cpu).' from a result."""
    made = result.get("made", result)  # bench.paper_table keeps them under "made"
    m = made.get("machine", {})
    commit = (made.get("commit") or "unknown")[:7]
    dirty = " with uncommitted changes to tracked files" if made.get("dirty") else ""
    date = f" on {made['date'][:10]}" if made.get("date") else ""
    inside = ", ".join([*hardware_notes(m), f"torch {m.get('torch', '?')}"])
    return f"*Measured at commit `{commit}`{dirty}{date}, {m.get('cpu', 'unknown CPU')} ({inside}).*"


def renderer(name: str) -> Callable[[dict], str] | None:
    """The renderer of bench/results/NAME.json: by name, or by the script prefix (`sweep_ml100k` is a sweep);
    NAME/VIEW picks the script's VIEW renderer (`index_scale_deep/scanned`)."""
    base, _, view = name.partition("/")
    suffix = f"/{view}" if view else ""
    keys = [base, *(k for k in RENDERERS if "/" not in k and base.startswith(f"{k}_"))]
    return next((RENDERERS[k + suffix] for k in keys if k + suffix in RENDERERS), None)


def render(name: str, page: Path) -> str:
    if renderer(name) is None:
        raise SystemExit(f"{page}: unknown bench table {name!r} (known: {', '.join(sorted(RENDERERS))})")
    path = RESULTS / f"{name.split('/')[0]}.json"  # NAME/VIEW: another renderer of NAME.json
    if not path.exists():
        raise SystemExit(f"{page}: bench table {name!r} needs {path}, which does not exist (run the bench with "
                         f"--json {path})")
    result = json.loads(path.read_text())
    return f"{conditions(result)}\n\n{renderer(name)(result).strip()}\n"


def rendered(page: Path) -> str:
    """The page's text with every generated block rendered anew."""
    return BLOCK.sub(lambda m: m["open"] + render(m["name"], page) + m["close"], page.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a page is out of date")
    ap.add_argument("pages", nargs="*", type=Path, help="pages to render (default: README.md and docs/*.md)")
    args = ap.parse_args(argv)
    stale = []
    for page in args.pages or [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = rendered(page)
        if text == page.read_text():
            continue
        if args.check:
            stale += [f"{page}: {m['name']}" for m, new in zip(BLOCK.finditer(page.read_text()), BLOCK.finditer(text))
                      if m["body"] != new["body"]]
        else:
            page.write_text(text)
            print(f"rendered {page}")
    if stale:
        print("out of date with bench/results (run python -m bench.docs_tables):\n  " + "\n  ".join(stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
