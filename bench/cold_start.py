"""Cold-start table: test NDCG@10 and Recall@10 on warm and on cold targets of popularity, SASRec, the content
model, Molar and the hybrid model, over seeds, on ML-100K and Amazon-Scientific.

    python -m bench.cold_start --dataset ml-100k amazon-scientific --out /tmp/cold --seeds 0 1 2 --jobs 2
    python -m bench.cold_start --dataset ml-100k --out /tmp/cold-ml100k   # one dataset
    python -m bench.cold_start --report /tmp/cold-ml100k /tmp/cold-amazon --json cold_start.json

Run from the repository root (the datasets are read from ../shared/datasets). Each dataset is prepared once with
`prepare.cold_items` (a random 20% of the items by default, the same held-out items for every seed, so the
interval is over training seeds), embedded with the default text encoder, then bench/sweep.py trains SASRec and
the three content variants per seed and `stages.evaluate` ranks every model with the popularity baseline:
metrics.json's test_warm / test_cold are what the table shows, so there is no second evaluation path.
Cells are means over seeds with a 95% t-interval; the last rows give Molar − content and hybrid − content on
cold targets, a paired bootstrap over users with the seeds pooled (what alignment costs or adds for new items).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

from bench import sweep
from bench.common import (PARAMS, ROOT, add_json_option, diff_cell, markdown_header, relative_cell, trained_at,
                          trained_line, write_result)
from molar_core.io import read_json, write_json_atomic
from molar_core.metrics import t_interval
from pipeline.params import EvaluateParams, load_params

DATASETS = {  # name -> (override file merged onto params.yaml or None, more overrides); paths from the repo root
    "ml-100k": (None, ["prepare.source=recbole_atomic", "prepare.path=../shared/datasets/ml-100k"]),
    "amazon-scientific": ("bench/configs/amazon_scientific.yaml", []),
}
VARIANTS = ["content", "molar", "hybrid"]
MODELS = ["popularity", "sasrec", *VARIANTS]
METRICS = ["ndcg@10", "recall@10"]
PAIRS = [("molar", "content"), ("hybrid", "content"), ("content", "sasrec")]


def evaluate_seed(ws: Path) -> dict:
    """metrics.json of one seed's workspace: `stages.evaluate` with the popularity baseline added."""
    from stages import evaluate

    params = load_params(ws / "params.yaml")
    out = ws / "metrics" / "metrics.json"
    if out.exists() and all(m in read_json(out) for m in MODELS):
        return read_json(out)
    return evaluate.run(EvaluateParams(models=MODELS), params.protocol, ws)


def run(dataset: str, out: Path, args) -> None:
    config, sets = DATASETS[dataset]
    ns = argparse.Namespace(out=out, params=PARAMS, config=config and ROOT / config, seeds=args.seeds,
                            variants=VARIANTS,
                            first_seed_variants=[], jobs=args.jobs, workspace=None,
                            set=[*sets, f"prepare.cold_items.fraction={args.fraction}",
                                 f"prepare.cold_items.by={args.by}", *args.set])
    ns.workspace = sweep.base_workspace(ns)
    sweep.run(ns)
    for s in args.seeds:
        evaluate_seed(out / f"seed{s}")
    write_json_atomic(out / "dataset.json", {"dataset": dataset, "params": "params.yaml", "config": config,
                                                  "set": ns.set})


def per_user(ws: Path, model: str, metric: str, cold: bool) -> np.ndarray:
    rows = pl.read_parquet(ws / "metrics" / "per_user.parquet").filter(
        (pl.col("split") == "test") & (pl.col("model") == model) & (pl.col("cold_target") == cold))
    return rows.sort("user_id")[metric].to_numpy()


def collect(folder: Path) -> dict:
    """One dataset's numbers: per model and target kind, the seeds' means and their t-interval; the pairs' paired
    bootstrap on cold targets."""
    seeds = sorted(folder.glob("seed*/metrics/metrics.json"))
    if not seeds:
        raise SystemExit(f"{folder}: no seed*/metrics/metrics.json (run the bench first)")
    runs = {int(p.parent.parent.name[4:]): read_json(p) for p in seeds}
    first = next(iter(runs.values()))
    out = {"dataset": read_json(folder / "dataset.json") if (folder / "dataset.json").exists() else str(folder),
           "seeds": list(runs), "cold_items": first["protocol"]["cold_items"], "models": {}, "pairs": [],
           "trained": trained_at(read_json(p) for p in sorted(folder.glob("seed*/results/*.json")))}
    for model in MODELS:
        cells = {}
        for kind in ("test_warm", "test_cold", "test"):
            for metric in METRICS:
                values = [m[model][kind][metric] for m in runs.values() if model in m and m[model].get(kind)]
                cells[f"{kind}/{metric}"] = {"seeds": values, "mean": float(np.mean(values)) if values else None,
                                             "t95": t_interval(values) if values else ""}
        out["models"][model] = cells
    for a, b in PAIRS:
        xa = {s: per_user(folder / f"seed{s}", a, "ndcg@10", True) for s in runs}
        xb = {s: per_user(folder / f"seed{s}", b, "ndcg@10", True) for s in runs}
        gain = sweep.paired_gain(xa, xb)
        if gain is not None:
            out["pairs"].append({"a": a, "b": b, "targets": "cold", "metric": "ndcg@10", **gain})
    return out


def markdown(result: dict) -> str:
    """The tables of a `{"results": [collect(folder), ...]}` result, one heading line and two tables per dataset
    (what the script prints, and what docs/results.md renders from bench/results/cold_start.json)."""
    lines = []
    for r in result["results"]:
        c = r["cold_items"]
        name = r["dataset"]["dataset"] if isinstance(r["dataset"], dict) else r["dataset"]
        lines += [trained_line(r.get("trained", []))
                  + f"**{name}**: {c['items']:,} cold items ({c['by']}, fraction {c['fraction']}), test users "
                  f"{c['test_users']['warm']:,} with a warm target, {c['test_users']['cold']:,} with a cold one; "
                  f"seeds {' '.join(map(str, r['seeds']))}", "",
                  markdown_header(["model", "warm NDCG@10", "cold NDCG@10", "all NDCG@10", "warm Recall@10",
                                   "cold Recall@10"])]
        for model, cells in r["models"].items():
            lines.append(f"| {model} | " + " | ".join(cells[k]["t95"] for k in (
                "test_warm/ndcg@10", "test_cold/ndcg@10", "test/ndcg@10", "test_warm/recall@10",
                "test_cold/recall@10")) + " |")
        lines += ["", markdown_header(["cold targets, A − B", "NDCG@10, paired bootstrap over users (seeds pooled)",
                                       "relative to B"])]
        lines += [f"| {p['a']} − {p['b']} | {diff_cell(p)} | {relative_cell(p)} |" for p in r["pairs"]]
        lines.append("")
    return "\n".join(lines)


def report(folders: list[Path], json_out: Path | None) -> list[dict]:
    results = [collect(f) for f in folders]
    print(markdown({"results": results}))
    if json_out is not None:
        write_result(json_out, {"results": results})
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", nargs="+", choices=list(DATASETS), help="one or more: each runs in OUT/NAME "
                    "when several are given")
    ap.add_argument("--out", type=Path, help="the bench folder (base/ and seedS/ workspaces; OUT/NAME/ for each "
                    "of several datasets)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=2, help="training processes at a time")
    ap.add_argument("--fraction", type=float, default=0.2, help="prepare.cold_items.fraction")
    ap.add_argument("--by", choices=["random", "time"], default="random", help="prepare.cold_items.by")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="more params overrides")
    ap.add_argument("--report", type=Path, nargs="+", help="only print the tables of these bench folders")
    add_json_option(ap, "the numbers (default after a run: OUT/cold_start.json)")
    args = ap.parse_args()
    if args.report:
        report(args.report, args.json)
        return
    if not (args.dataset and args.out):
        ap.error("--dataset and --out are needed to run")
    outs = [args.out] if len(args.dataset) == 1 else [args.out / name for name in args.dataset]
    for name, out in zip(args.dataset, outs):
        run(name, out, args)
    report(outs, args.json or args.out / "cold_start.json")


if __name__ == "__main__":
    main()
