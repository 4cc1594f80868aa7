"""What stage 1 and the images add: item encoders feeding the same content and Molar models, same SASRec.

    python bench/finetune_ablation.py --params bench/ml100k_multimodal.yaml --data ../shared/datasets/ml-100k \
        --posters ../shared/datasets/ml-100k/posters --seed 0 --out /tmp/ablation [--arms ...]
    python bench/finetune_ablation.py --out /tmp/ablation --report      # tables of the finished arms, all seeds

Arms (each in its own workspace OUT/seedS/ARM, sharing the prepared data and that seed's SASRec):
  sentence          the packaged MiniLM text encoder (today's default)
  image_stage1      scratch Qwen2-VL, stage 1 on IT+SA+UB, text and image
  text_stage1       the same with embed.use_images false (IT has nothing to draw; SA+UB)
  image_no_stage1   the scratch model untrained (finetune_encoder.max_epochs 0), text and image
  text_no_stage1    untrained, text only
Arms can run in separate processes (pinned to a core each) and be reported together. The report gives each
arm's test NDCG@10 for the content model and Molar (mean over seeds), and paired bootstrap intervals over users
(seeds pooled) for: image vs text (with and without stage 1), stage 1 vs none, and each arm vs `sentence`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from molar_core.metrics import paired_bootstrap, t_interval  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from stages import embed, evaluate, finetune_encoder, index, prepare, train, train_id  # noqa: E402

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
    p = load_params(args.params, overrides=over)
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
        t = time.perf_counter()
        fn()
        times[name] = round(time.perf_counter() - t, 1)
    (root / "metrics" / "ablation_times.json").write_text(json.dumps(times))


def _per_user(root: Path, model: str) -> np.ndarray:
    pu = pl.read_parquet(root / "metrics" / "per_user.parquet").filter(
        (pl.col("split") == "test") & (pl.col("model") == model))
    return pu.sort("user_id")["ndcg@10"].to_numpy()


def report(out: Path) -> None:
    seeds = sorted(d for d in out.glob("seed*") if d.is_dir())
    done = {arm: [s / arm for s in seeds if (s / arm / "metrics" / "metrics.json").exists()] for arm in ARMS}
    done = {arm: ws for arm, ws in done.items() if ws}
    print("| arm | seeds | content test NDCG@10 | Molar test NDCG@10 | SASRec (same seeds) | finetune s | embed s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for arm, ws in done.items():
        m = [json.loads((w / "metrics" / "metrics.json").read_text()) for w in ws]
        t = [json.loads((w / "metrics" / "ablation_times.json").read_text()) for w in ws]
        print(f"| {arm} | {len(ws)} | " + " | ".join(
            t_interval([x[k]["test"]["ndcg@10"] for x in m]) for k in ("content", "molar", "sasrec"))
            + f" | {np.mean([x['finetune_encoder'] for x in t]):.0f} | {np.mean([x['embed'] for x in t]):.0f} |")
    pairs = [("image_stage1", "text_stage1"), ("image_no_stage1", "text_no_stage1"),
             ("image_stage1", "image_no_stage1"), ("text_stage1", "text_no_stage1"),
             *((a, "sentence") for a in ARMS if a != "sentence")]
    print("\n| comparison (paired over users, seeds both arms ran, pooled) | content | Molar |")
    print("| --- | --- | --- |")
    for a, b in pairs:
        if a not in done or b not in done:
            continue
        common = [s for s in seeds if (s / a) in done[a] and (s / b) in done[b]]
        cells = []
        for model in ("content", "molar"):
            pb = paired_bootstrap(np.concatenate([_per_user(s / a, model) for s in common]),
                                  np.concatenate([_per_user(s / b, model) for s in common]))
            cells.append(f"{pb['diff']:+.4f} [{pb['ci_low']:+.4f}, {pb['ci_high']:+.4f}]")
        print(f"| {a} − {b} ({len(common)} seeds) | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default=str(Path(__file__).resolve().parent / "ml100k_multimodal.yaml"))
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/datasets/ml-100k"))
    ap.add_argument("--posters", default=None, help="default: DATA/posters")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--out", required=True)
    ap.add_argument("--report", action="store_true", help="only print the tables of finished arms")
    args = ap.parse_args()
    if not args.report:
        args.posters = args.posters or str(Path(args.data) / "posters")
        for arm in args.arms:
            run_arm(args, arm)
    report(Path(args.out))


if __name__ == "__main__":
    main()
