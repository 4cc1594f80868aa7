"""Wall time of each stage of the default pipeline and the metrics it reaches, over seeds.

    python bench/pipeline.py [--params params.yaml] [--data DIR] [--seeds 0 1 2]

Runs the real stages in a temporary workspace; `--data` points prepare at a local ML-100K copy
(otherwise the stage acquires it as in `dvc repro`). Prints a markdown table: per-seed stage times and test
metrics, and the mean with a 95% interval over seeds (t-distribution) and over users (bootstrap).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.params import load_params  # noqa: E402
from stages import evaluate, index, prepare, train_id  # noqa: E402

T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default=str(Path(__file__).resolve().parents[1] / "params.yaml"))
    ap.add_argument("--data", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--masking", default=None)
    args = ap.parse_args()
    rows = []
    for seed in args.seeds:
        over: dict = {"train_id": {"seed": seed}}
        if args.data:
            over["prepare"] = {"source": "recbole_atomic", "path": args.data}
        if args.masking:
            over["protocol"] = {"masking": args.masking}
        p = load_params(args.params, overrides=over)
        root = Path(tempfile.mkdtemp(prefix="molar-bench-"))
        times = {}
        t = time.perf_counter()
        prepare.run(p.prepare, root)
        times["prepare"] = time.perf_counter() - t
        t = time.perf_counter()
        cfg = train_id.run(p.train_id, p.protocol, root)
        times["train_id"] = time.perf_counter() - t
        t = time.perf_counter()
        index.run(p.index, root)
        times["index"] = time.perf_counter() - t
        t = time.perf_counter()
        m = evaluate.run(p.evaluate, p.protocol, root)
        times["evaluate"] = time.perf_counter() - t
        rows.append({"seed": seed, **times, "epochs": cfg["epochs_run"], **m["sasrec"]["test"],
                     "ci": m["sasrec"]["test_ci95"]["ndcg@10"], "masking": m["protocol"]["masking"]})
    print("\n| seed | prepare s | train_id s (epochs) | index s | evaluate s | total s | test NDCG@10 [95% CI users] "
          "| Recall@10 | NDCG@20 | Recall@20 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        total = r["prepare"] + r["train_id"] + r["index"] + r["evaluate"]
        print(f"| {r['seed']} | {r['prepare']:.1f} | {r['train_id']:.0f} ({r['epochs']}) | {r['index']:.2f} | "
              f"{r['evaluate']:.1f} | {total:.0f} | {r['ndcg@10']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}] | "
              f"{r['recall@10']:.4f} | {r['ndcg@20']:.4f} | {r['recall@20']:.4f} |")
    if len(rows) > 1:
        nd = [r["ndcg@10"] for r in rows]
        half = T95.get(len(nd) - 1, 2.0) * statistics.stdev(nd) / len(nd) ** 0.5
        print(f"\nmasking={rows[0]['masking']}: mean test NDCG@10 over {len(nd)} seeds {statistics.mean(nd):.4f} "
              f"± {half:.4f} (95% t-interval), sd {statistics.stdev(nd):.4f}; "
              f"mean Recall@10 {statistics.mean(r['recall@10'] for r in rows):.4f}")


if __name__ == "__main__":
    main()
