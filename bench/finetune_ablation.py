"""What stage 1 and the images add: item encoders feeding the same content and Molar models, same SASRec.

    python -m bench.finetune_ablation --config bench/configs/ml100k_multimodal.yaml \
        --data ../shared/datasets/ml-100k --posters ../shared/datasets/ml-100k/posters --seed 0 --out /tmp/ablation \
        [--arms ...]
    python -m bench.finetune_ablation --out /tmp/ablation --report [--json ablation.json]  # finished arms' tables

Arms (each in its own workspace OUT/seedS/ARM, sharing the prepared data and that seed's SASRec):
  sentence          the packaged MiniLM text encoder (today's default)
  image_stage1      scratch Qwen2-VL, stage 1 on IT+SA+UB, text and image
  text_stage1       the same with embed.use_images false (IT has nothing to draw; SA+UB)
  image_no_stage1   the scratch model untrained (finetune_encoder.max_epochs 0), text and image
  text_no_stage1    untrained, text only
Arms can run in separate processes (pinned to a core each) and be reported together. The report gives each
arm's test NDCG@10 for the content model and Molar (mean over seeds), and paired bootstrap intervals over users
(seeds pooled) for: image vs text (with and without stage 1), stage 1 vs none, and each arm vs `sentence`.
Params: --params (default the repository's params.yaml) with --config's override file merged on top; with
neither given, params.yaml with bench/configs/ml100k_multimodal.yaml (one thread per stage).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl

from bench.common import CONFIGS, PARAMS, ROOT, add_json_option, add_params_options, bench_params, diff_cell, timed, \
    write_result
from molar_core.metrics import paired_bootstrap, t_interval
from stages import embed, evaluate, finetune_encoder, index, prepare, train, train_id

MLLM = {"encoder": "mllm", "model": "artifacts/encoder", "backend": "transformers"}
ARMS = {
    "sentence": ({"init": "none"}, {"encoder": "sentence", "model": None}),
    "image_stage1": ({"init": "scratch"}, {**MLLM, "use_images": True}),
    "text_stage1": ({"init": "scratch"}, {**MLLM, "use_images": False}),
    "image_no_stage1": ({"init": "scratch", "max_epochs": 0}, {**MLLM, "use_images": True}),
    "text_no_stage1": ({"init": "scratch", "max_epochs": 0}, {**MLLM, "use_images": False}),
}
MODELS = ["sasrec", "content", "molar"]


def run_arm(args, arm: str) -> None:
    ft, emb = ARMS[arm]
    over = {"prepare": {"source": "recbole_atomic", "path": args.data, "images": {"dir": args.posters}},
            "finetune_encoder": {**ft, "seed": args.seed}, "embed": emb,
            "train_id": {"seed": args.seed}, "train": {"seed": args.seed},
            "index": {"models": MODELS}, "evaluate": {"models": MODELS}}
    p = bench_params(args.params, args.config, extra=over)
    base = Path(args.out) / f"seed{args.seed}" / "_base"
    if not (base / "artifacts" / "sasrec" / "config.json").exists():  # the first arm of a seed: data and SASRec
        prepare.run(p.prepare, base)
        train_id.run(p.train_id, p.protocol, base)
    root = Path(args.out) / f"seed{args.seed}" / arm
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(base / "data", root / "data")
    shutil.copytree(base / "artifacts" / "sasrec", root / "artifacts" / "sasrec")
    times = {}
    for name, fn in (("finetune_encoder", lambda: finetune_encoder.run(p.finetune_encoder, p.embed, root)),
                     ("embed", lambda: embed.run(p.embed, root)),
                     ("content", lambda: train.run("content", p.train_variant("content"), p.protocol, root)),
                     ("molar", lambda: train.run("molar", p.train_variant("molar"), p.protocol, root)),
                     ("index", lambda: index.run(p.index, root)),
                     ("evaluate", lambda: evaluate.run(p.evaluate, p.protocol, root))):
        times[name] = round(timed(fn)[0], 1)
    (root / "metrics" / "ablation_times.json").write_text(json.dumps(times))


def _per_user(root: Path, model: str) -> np.ndarray:
    pu = pl.read_parquet(root / "metrics" / "per_user.parquet").filter(
        (pl.col("split") == "test") & (pl.col("model") == model))
    return pu.sort("user_id")["ndcg@10"].to_numpy()


def report(out: Path, json_out: Path | None = None) -> None:
    seeds = sorted(d for d in out.glob("seed*") if d.is_dir())
    done = {arm: [s / arm for s in seeds if (s / arm / "metrics" / "metrics.json").exists()] for arm in ARMS}
    done = {arm: ws for arm, ws in done.items() if ws}
    print("| arm | seeds | content test NDCG@10 | Molar test NDCG@10 | SASRec (same seeds) | finetune s | embed s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    arms, comparisons = [], []
    for arm, ws in done.items():
        m = [json.loads((w / "metrics" / "metrics.json").read_text()) for w in ws]
        t = [json.loads((w / "metrics" / "ablation_times.json").read_text()) for w in ws]
        print(f"| {arm} | {len(ws)} | " + " | ".join(
            t_interval([x[k]["test"]["ndcg@10"] for x in m]) for k in ("content", "molar", "sasrec"))
            + f" | {np.mean([x['finetune_encoder'] for x in t]):.0f} | {np.mean([x['embed'] for x in t]):.0f} |")
        arms.append({"arm": arm, "seeds": [w.parent.name for w in ws],
                     **{f"{k}_test_ndcg@10": [x[k]["test"]["ndcg@10"] for x in m]
                        for k in ("content", "molar", "sasrec")},
                     "finetune_s": float(np.mean([x["finetune_encoder"] for x in t])),
                     "embed_s": float(np.mean([x["embed"] for x in t]))})
    pairs = [("image_stage1", "text_stage1"), ("image_no_stage1", "text_no_stage1"),
             ("image_stage1", "image_no_stage1"), ("text_stage1", "text_no_stage1"),
             *((a, "sentence") for a in ARMS if a != "sentence")]
    print("\n| comparison (paired over users, seeds both arms ran, pooled) | content | Molar |")
    print("| --- | --- | --- |")
    for a, b in pairs:
        if a not in done or b not in done:
            continue
        common = [s for s in seeds if (s / a) in done[a] and (s / b) in done[b]]
        cells, pbs = [], {}
        for model in ("content", "molar"):
            pb = paired_bootstrap(np.concatenate([_per_user(s / a, model) for s in common]),
                                  np.concatenate([_per_user(s / b, model) for s in common]))
            cells.append(diff_cell(pb))
            pbs[model] = pb
        print(f"| {a} − {b} ({len(common)} seeds) | " + " | ".join(cells) + " |")
        comparisons.append({"a": a, "b": b, "seeds": [s.name for s in common], **pbs})
    if json_out is not None:
        write_result(json_out, {"folder": str(out), "metric": "test ndcg@10", "arms": arms,
                                "comparisons": comparisons})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_params_options(ap)
    ap.add_argument("--data", default=str(ROOT.parent / "shared/datasets/ml-100k"))
    ap.add_argument("--posters", default=None, help="default: DATA/posters")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--report", action="store_true", help="only print the tables of finished arms")
    add_json_option(ap, "the tables' numbers")
    args = ap.parse_args()
    if args.config is None and args.params == PARAMS:  # a full --params file is taken as it is
        args.config = CONFIGS / "ml100k_multimodal.yaml"
    if not args.report:
        args.posters = args.posters or str(Path(args.data) / "posters")
        for arm in args.arms:
            run_arm(args, arm)
    report(Path(args.out), args.json)


if __name__ == "__main__":
    main()
