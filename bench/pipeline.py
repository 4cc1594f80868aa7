"""The default pipeline over several seeds: wall time of each stage and every model's test metrics.

    python -m bench.pipeline [--params params.yaml] [--config bench/configs/X.yaml] [--data DIR] [--seeds 0 1 2] \
        [--sasrec-only] [--json pipeline.json]
    python -m bench.pipeline --from-workspaces /tmp/molar-bench-0-* /tmp/molar-bench-1-* ...   # tables only

Runs the real stages in one temporary workspace per seed (prepare and embed once: they do not depend on the
seed). `--data` points prepare at a local ML-100K copy (RecBole atomic layout); otherwise the stage acquires it
as `dvc repro` does. Prints markdown tables: per seed, stage times and test NDCG@10; per model, the mean over
seeds with a 95% t-interval, and the difference to SASRec (mean over seeds of the per-user paired difference,
with the seeds' t-interval and the pooled paired-bootstrap interval over users). --config merges an override
file (bench/configs/*.yaml) onto --params; --json writes the tables' numbers with the machine and commit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from bench.common import add_json_option, add_params_options, bench_params, diff_cell, timed, write_result
from molar_core.metrics import paired_bootstrap, t_interval
from stages import embed, evaluate, index, prepare, train, train_id


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_params_options(ap)
    ap.add_argument("--data", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sasrec-only", action="store_true")
    ap.add_argument("--from-workspaces", nargs="+", default=None,
                    help="print the tables of finished workspaces (kept by earlier runs) instead of training")
    add_json_option(ap, "the tables' numbers")
    args = ap.parse_args()
    if args.from_workspaces:
        report(*collect(args.from_workspaces), json_out=args.json)
        return
    base = bench_params(args.params, args.config)
    variants = [] if args.sasrec_only else list(base.train_variants)
    models = ["sasrec", *variants]
    over: dict = {"index": {"models": models}, "evaluate": {"models": models}}
    if args.data:
        over["prepare"] = {"source": "recbole_atomic", "path": args.data}
    shared = Path(tempfile.mkdtemp(prefix="molar-bench-shared-"))
    p = bench_params(args.params, args.config, extra=over)
    t_prepare, _ = timed(prepare.run, p.prepare, shared)
    t_embed = 0.0
    if variants:
        t_embed, _ = timed(embed.run, p.embed, shared)
    rows, per_user = [], {}
    for seed in args.seeds:
        p = bench_params(args.params, args.config,
                         extra={**over, "train_id": {"seed": seed}, "train": {"seed": seed}})
        root = Path(tempfile.mkdtemp(prefix=f"molar-bench-{seed}-"))
        shutil.copytree(shared / "data", root / "data")
        if variants:
            shutil.copytree(shared / "artifacts", root / "artifacts")
        times = {}
        times["train_id"], _ = timed(train_id.run, p.train_id, p.protocol, root)
        for name in variants:
            times[name], _ = timed(train.run, name, p.train_variant(name), p.protocol, root)
        times["index"], _ = timed(index.run, p.index, root)
        times["evaluate"], m = timed(evaluate.run, p.evaluate, p.protocol, root)
        rows.append({"seed": seed, "times": times, "metrics": m})
        pu = pl.read_parquet(root / "metrics" / "per_user.parquet").filter(pl.col("split") == "test")
        for model in models:
            per_user.setdefault(model, []).append(pu.filter(pl.col("model") == model).sort("user_id")["ndcg@10"]
                                                  .to_numpy())

    print(f"\nprepare {t_prepare:.1f} s, embed {t_embed:.1f} s (once)\n")
    report(rows, per_user, models, json_out=args.json, once={"prepare_s": t_prepare, "embed_s": t_embed})


def collect(workspaces: list[str]) -> tuple[list[dict], dict, list[str]]:
    """Rows and per-user test NDCG@10 from finished workspaces (e.g. seeds run in parallel processes)."""
    loaded = [(Path(ws), json.loads((Path(ws) / "metrics" / "metrics.json").read_text())) for ws in workspaces]
    models = [k for k in loaded[0][1] if k not in ("protocol", "runtime")]
    models = [k for k in models if all(k in m for _, m in loaded)]  # the models every workspace evaluated
    rows, per_user = [], {}
    for root, m in loaded:
        times = {}
        for name in models:
            f = root / "metrics" / ("train_id.json" if name == "sasrec" else f"train_{name}.json")
            times[name] = json.loads(f.read_text())["train_seconds"]
        seed = json.loads((root / "artifacts" / "sasrec" / "config.json").read_text())["runtime"]["seed"]
        rows.append({"seed": seed, "times": times, "metrics": m})
        pu = pl.read_parquet(root / "metrics" / "per_user.parquet").filter(pl.col("split") == "test")
        for model in models:
            per_user.setdefault(model, []).append(pu.filter(pl.col("model") == model).sort("user_id")["ndcg@10"]
                                                  .to_numpy())
    return rows, per_user, models


def report(rows: list[dict], per_user: dict, models: list[str], json_out: Path | None = None,
           once: dict | None = None) -> None:
    print("| seed | " + " | ".join(f"{k} s" for k in rows[0]["times"]) + " | "
          + " | ".join(f"{m} NDCG@10" for m in models) + " |")
    print("| --- " * (1 + len(rows[0]["times"]) + len(models)) + "|")
    for r in rows:
        print(f"| {r['seed']} | " + " | ".join(f"{v:.0f}" if v >= 1 else f"{v:.2f}" for v in r["times"].values())
              + " | " + " | ".join(f"{r['metrics'][m]['test']['ndcg@10']:.4f}" for m in models) + " |")
    print(f"\n| model | test NDCG@10 (mean ± 95% t, {len(rows)} seeds) | Recall@10 | NDCG@20 | "
          "NDCG@10 − SASRec (seeds) | paired bootstrap over users, pooled seeds |")
    print("| --- | --- | --- | --- | --- | --- |")
    table = []
    for model in models:
        nd = [r["metrics"][model]["test"]["ndcg@10"] for r in rows]
        rc = [r["metrics"][model]["test"]["recall@10"] for r in rows]
        n20 = [r["metrics"][model]["test"]["ndcg@20"] for r in rows]
        diff, boot, diffs, pb = "", "", None, None
        if model != "sasrec":
            diffs = [a - b for a, b in zip(nd, [r["metrics"]["sasrec"]["test"]["ndcg@10"] for r in rows])]
            diff = t_interval(diffs)
            pb = paired_bootstrap(np.concatenate(per_user[model]), np.concatenate(per_user["sasrec"]))
            boot = diff_cell(pb)
        print(f"| {model} | {t_interval(nd)} | {t_interval(rc)} | {t_interval(n20)} | {diff} | {boot} |")
        table.append({"model": model, "ndcg@10": nd, "recall@10": rc, "ndcg@20": n20, "t95_ndcg@10": t_interval(nd),
                      "t95_recall@10": t_interval(rc), "t95_ndcg@20": t_interval(n20), "seed_diffs_sasrec": diffs,
                      "t95_diff_sasrec": diff, "paired_bootstrap_sasrec": pb})
    if json_out is not None:
        write_result(json_out, {"seeds": [{"seed": r["seed"], "times": r["times"],
                                           "test_ndcg@10": {m: r["metrics"][m]["test"]["ndcg@10"] for m in models}}
                                          for r in rows], "once": once or {}, "models": table})


if __name__ == "__main__":
    main()
