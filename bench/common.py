"""What the bench scripts share: timing, markdown tables, interval cells, JSON results and params variants.

Run every script from the repository root as a module (`python -m bench.NAME ...`), so `bench`, `molar_core`,
`pipeline` and `stages` import without editing sys.path. At import this module needs the standard library only
(pyyaml, pydantic and torch are imported when a function needs them), so bench/gpu.py keeps running where only
torch is installed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
CONFIGS = Path(__file__).resolve().parent / "configs"


# timing


def timed(fn: Callable[..., Any], *args: Any, repeats: int = 1) -> tuple[float, Any]:
    """(seconds, result) of `fn(*args)`; with repeats > 1 the best time of that many calls and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - t)
    return best, result


# markdown


def markdown_row(cells: Iterable[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_header(header: Sequence[Any]) -> str:
    """The header line and the `| --- |` line under it."""
    return markdown_row(header) + "\n" + "| --- " * len(header) + "|"


def markdown_table(header: Sequence[Any], rows: Iterable[Iterable[Any]]) -> str:
    """A markdown table of these cells (already formatted, or anything str() writes)."""
    return "\n".join([markdown_header(header), *(markdown_row(r) for r in rows)])


# interval cells (the numbers come from molar_core.metrics: t_interval, bootstrap_ci, paired_bootstrap)


def diff_cell(pb: dict | None) -> str:
    """'+d [+low, +high]' of a paired bootstrap (molar_core.metrics.paired_bootstrap); empty for None."""
    return "" if pb is None else f"{pb['diff']:+.4f} [{pb['ci_low']:+.4f}, {pb['ci_high']:+.4f}]"


def relative_cell(pb: dict | None) -> str:
    """'+r% [+low%, +high%]' of bench.sweep.paired_gain's relative gain; empty where it has none."""
    if pb is None or pb.get("relative") is None:
        return ""
    return f"{pb['relative']:+.1%} [{pb['relative_low']:+.1%}, {pb['relative_high']:+.1%}]"


# JSON results


def trained_at(records: Iterable[dict]) -> list[dict]:
    """The distinct checkouts (commit, dirty) that trained these models, from their result JSONs (each written by
    write_result where the model was trained), so a table made later still says which code made its numbers."""
    seen = {(r.get("commit") or "unknown", bool(r.get("dirty"))) for r in records}
    return [{"commit": c, "dirty": d} for c, d in sorted(seen)]


def trained_line(trained: Sequence[dict]) -> str:
    """'Models trained at commit `abc1234`.' (several commits listed; uncommitted changes said) or ''."""
    if not trained:
        return ""
    names = ", ".join(f"`{t['commit'][:7]}`" + (" with uncommitted changes to tracked files" if t["dirty"] else "")
                      for t in trained)
    return f"Models trained at commit{'s' if len(trained) > 1 else ''} {names}.\n\n"


def write_result(path: str | Path, payload: dict) -> dict:
    """Write `payload` with the machine it ran on, the checkout (commit, dirty) and the UTC date to `path`,
    atomically."""
    from datetime import datetime, timezone

    from bench.machine import checkout, describe
    from molar_core.io import write_json_atomic

    out = {**payload, "machine": describe(), **checkout(),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(path, out)
    return out


def add_json_option(ap: argparse.ArgumentParser, what: str = "the table's numbers") -> None:
    ap.add_argument("--json", type=Path, metavar="PATH",
                    help=f"also write {what} here, with the machine and commit")


# params variants: override files under bench/configs, merged onto the repository's params.yaml


def config_overrides(config: str | Path | None) -> dict:
    """The nested dict an override file holds (only what differs from params.yaml); {} for None."""
    if config is None:
        return {}
    import yaml

    path = Path(config)
    if not path.exists() and (CONFIGS / path).exists():  # `--config amazon_scientific.yaml`
        path = CONFIGS / path
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{config}: an override file is a mapping of params sections")
    return data


def overrides(config: str | Path | None, sets: Sequence[str] = (), extra: dict | None = None) -> dict:
    """The override file's keys, then `section.key=value` settings, then `extra`, merged in that order."""
    from pipeline.params import deep_merge, dotted_overrides

    return deep_merge(deep_merge(config_overrides(config), dotted_overrides(list(sets))), extra or {})


def bench_params(params: str | Path = PARAMS, config: str | Path | None = None, sets: Sequence[str] = (),
                 extra: dict | None = None):
    """`pipeline.params.load_params(params, overrides=...)` with an override file, --set settings and `extra`."""
    from pipeline.params import load_params

    return load_params(params, overrides=overrides(config, sets, extra))


def add_params_options(ap: argparse.ArgumentParser, sets: bool = False) -> None:
    """--params (a full file, default the repository's params.yaml) and --config (an override file merged on top,
    e.g. bench/configs/amazon_scientific.yaml); with sets, --set SECTION.KEY=VALUE ... too."""
    ap.add_argument("--params", type=Path, default=PARAMS,
                    help="a full params file (default: the repository's params.yaml)")
    ap.add_argument("--config", type=Path, metavar="FILE",
                    help="an override file merged onto --params: only the keys that differ, e.g. "
                         "bench/configs/amazon_scientific.yaml")
    if sets:
        ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="more overrides")
