"""Does a comparison turn on early stopping? Two arms (Molar against content only, by default) under several
stopping rules, each rule a sweep folder (`bench.sweep --out OUT`) trained with it over the same seeds:

    python -m bench.sweep --out OUT1 --seeds 0 1 2 --variants content molar --set ...
    python -m bench.sweep --out OUT2 --seeds 0 1 2 --variants content molar --set ... train.patience=20 \
        train.stop_window=5
    python -m bench.stopping --rule "ML-100K, patience 10=OUT1" "ML-100K, patience 20 on a 5-epoch mean=OUT2" \
        [--a molar --b content] [--json PATH]

For each rule: both arms' test NDCG@10 (mean over seeds ± 95% t), A − B paired over the test users with the
seeds pooled (bench.sweep.paired_gain), and what the rule costs: the epochs both arms ran over all seeds (the
JSON also keeps their training seconds, which depend on what else ran on the machine). The comparison does not turn on the rule where every row's interval has one sign.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bench.common import add_json_option, diff_cell, markdown_table, trained_at, trained_line, write_result
from bench.sweep import compare, load_runs
from molar_core.metrics import t_interval


def measure(label: str, folder: Path, a: str, b: str) -> dict:
    by_seed = load_runs([folder])
    seeds = [s for s, runs in by_seed.items() if a in runs and b in runs]
    if not seeds:
        raise SystemExit(f"{folder}: no seed has both {a} and {b} (run bench.sweep --variants {b} {a} there)")
    arms = {m: [by_seed[s][m] for s in seeds] for m in (a, b)}
    epochs = [r.get("epochs_run") for runs in arms.values() for r in runs]
    return {"rule": label, "folder": str(folder), "seeds": seeds,
            "t_a": t_interval([r["ndcg@10"] for r in arms[a]]), "t_b": t_interval([r["ndcg@10"] for r in arms[b]]),
            "mean_a": float(np.mean([r["ndcg@10"] for r in arms[a]])),
            "mean_b": float(np.mean([r["ndcg@10"] for r in arms[b]])),
            "paired": compare({s: by_seed[s] for s in seeds}, a, b),
            "trained": trained_at(r for s in seeds for r in by_seed[s].values()),
            "epochs_run": None if None in epochs else int(sum(epochs)),
            "train_s": float(sum(r.get("train_s") or 0.0 for runs in arms.values() for r in runs))}


def markdown(result: dict) -> str:
    """The table the script prints and docs/results.md renders from bench/results/stopping.json."""
    a, b = result["a"], result["b"]
    rows = [(r["rule"], " ".join(map(str, r["seeds"])), r["t_b"], r["t_a"], diff_cell(r["paired"]),
             "" if r["epochs_run"] is None else f"{r['epochs_run']:,}") for r in result["rows"]]
    trained = trained_at(t for r in result["rows"] for t in r.get("trained", []))  # every row's, once each
    return trained_line(trained) + markdown_table(
        ["data, stopping rule", "seeds", f"{b} (mean ± 95% t)", f"{a} (mean ± 95% t)",
         f"{a} − {b}, paired bootstrap over users (seeds pooled)", "epochs run (both arms, all seeds)"], rows) + "\n"


def parse_rule(text: str) -> tuple[str, Path]:
    label, sep, folder = text.rpartition("=")
    if not (sep and label and folder):
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=FOLDER")
    return label, Path(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rule", type=parse_rule, nargs="+", required=True, metavar="LABEL=FOLDER",
                    help="a sweep folder trained under one stopping rule, and the row's label")
    ap.add_argument("--a", default="molar", help="the arm whose difference is measured (A − B)")
    ap.add_argument("--b", default="content")
    add_json_option(ap)
    args = ap.parse_args()
    result = {"a": args.a, "b": args.b, "rows": [measure(label, folder, args.a, args.b) for label, folder in args.rule]}
    print(markdown(result), end="")
    if args.json is not None:
        write_result(args.json, result)


if __name__ == "__main__":
    main()
