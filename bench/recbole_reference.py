"""Our SASRec under RecBole's protocol (no history masking) against RecBole 1.2.1's reference run.

RecBole's figures were measured on this 2-core CPU (see ../shared/docs/environment.md): SASRec on ML-100K,
leave-one-out by time, full ranking, CE loss, max length 50, 5 epochs, 1,220 s wall, test NDCG@10 0.0544,
Hit@10 0.1135. We run the real stages (prepare -> train_id -> index -> evaluate) on the same data and protocol
and print our wall time and metrics beside them, with the ratios. Also runs the default (masked) protocol.

    python -m bench.recbole_reference [--data ../shared/datasets/ml-100k] [--seeds 0 1 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import PARAMS, ROOT, add_json_option, markdown_header, write_result
from pipeline.params import load_params
from stages import evaluate, index, prepare, train_id

RECBOLE = {"seconds": 1220.0, "ndcg@10": 0.0544, "recall@10": 0.1135}


def run_protocol(data: Path, masking: str, seed: int, extra: dict) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"molar-bench-{masking}-"))
    p = load_params(PARAMS, overrides={
        "prepare": {"source": "recbole_atomic", "path": str(data)},
        "protocol": {"masking": masking},
        "train_id": {"seed": seed, **extra},
        "index": {"models": ["sasrec"]}, "evaluate": {"models": ["sasrec"]},
    })
    t0 = time.perf_counter()
    prepare.run(p.prepare, root)
    cfg = train_id.run(p.train_id, p.protocol, root)
    index.run(p.index, root)
    m = evaluate.run(p.evaluate, p.protocol, root)
    wall = time.perf_counter() - t0
    return {"seconds": wall, "epochs": cfg["epochs_run"], **m["sasrec"]["test"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/datasets/ml-100k"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--protocols", nargs="+", default=["none", "history"])
    add_json_option(ap, "every run's wall time and metrics")
    args = ap.parse_args()
    rows = []
    for masking in args.protocols:
        runs = [run_protocol(Path(args.data), masking, s, {}) for s in args.seeds]
        rows.append((masking, runs))
    print("\n" + markdown_header(["protocol", "system", "wall s (mean)", "epochs", "test NDCG@10", "test Recall@10",
                                  "time ratio vs RecBole"]))
    print(f"| none (RecBole's) | RecBole 1.2.1 SASRec, 5 epochs (reference) | {RECBOLE['seconds']:.0f} | 5 | "
          f"{RECBOLE['ndcg@10']:.4f} | {RECBOLE['recall@10']:.4f} | 1.00 |")
    for masking, runs in rows:
        wall = statistics.mean(r["seconds"] for r in runs)
        nd = [r["ndcg@10"] for r in runs]
        rc = [r["recall@10"] for r in runs]
        sd = f" ± {statistics.stdev(nd):.4f}" if len(nd) > 1 else ""
        print(f"| {masking} | molar SASRec, {len(runs)} seeds | {wall:.0f} | "
              f"{statistics.mean(r['epochs'] for r in runs):.0f} | {statistics.mean(nd):.4f}{sd} | "
              f"{statistics.mean(rc):.4f} | {wall / RECBOLE['seconds']:.3f} |")
    if args.json is not None:
        write_result(args.json, {"recbole": RECBOLE, "data": args.data, "seeds": args.seeds,
                                 "protocols": {masking: runs for masking, runs in rows}})


if __name__ == "__main__":
    main()
