"""Many training configurations over several seeds, in parallel processes, from one embedded workspace: the
post-alignment study (weight, temperature, positions, item alignment, hybrid) and multi-seed tables, on a
machine with many cores or a GPU.

    python bench/sweep.py --workspace W --params bench/amazon_scientific.yaml --set train.patience=15 \
        --seeds 0 1 2 --variants content molar molar_items --jobs 8 --out /tmp/sweep
    python bench/sweep.py --report /tmp/sweep [/tmp/other-sweep ...]

W is a workspace whose `data/prepared` and `artifacts/embeddings` exist (`dvc repro embed`, or bench/pipeline.py's
shared workspace). Each seed gets OUT/seedS with those two folders copied and a params.yaml (PARAMS + --set +
that seed + the variants of VARIANTS), then runs `python -m stages.train_id` and `python -m stages.train NAME`
for every variant, the commands `dvc repro` runs, at most --jobs at a time. Test metrics come from the saved
vectors by exact torch ranking with the history masked (molar_core.ranking, tested equal to the FAISS path that
`evaluate` takes), per user, into OUT/seedS/results/MODEL.json as each model finishes, so the report gives
each model's mean over seeds with a 95% t-interval, its early-stopped run's best validation NDCG@10 (the number
to choose settings by), and its paired bootstrap interval over users (seeds pooled) against SASRec.
`--variants` with no names trains SASRec only. Nothing here needs FAISS, so the script runs where only torch,
polars and pydantic are installed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.stage_process import run_stage  # noqa: E402
from molar_core.checkpoint import open_checkpoint  # noqa: E402
from molar_core.io import read_json, write_json_atomic  # noqa: E402
from molar_core.metrics import paired_bootstrap, per_user_metrics, t_interval  # noqa: E402
from molar_core.ranking import target_ranks  # noqa: E402
from pipeline.params import dotted_overrides, load_params  # noqa: E402
from stages.common import read_prepared  # noqa: E402

VARIANTS = {  # name -> overrides of the `train` section
    "content": {"align_alpha": 0.0},
    "molar": {"align_alpha": 0.5},
    "molar_items": {"align_alpha": 0.5, "align_items": True},
    "alpha_low": {"align_alpha": 0.1},
    "alpha_high": {"align_alpha": 2.0},
    "tau_low": {"align_alpha": 0.5, "align_tau": 0.05},
    "tau_high": {"align_alpha": 0.5, "align_tau": 1.0},
    "positions_all": {"align_alpha": 0.5, "align_positions": "all"},
    "items_alpha_high": {"align_alpha": 2.0, "align_items": True},
    "hybrid": {"align_alpha": 0.0, "hybrid": True},
    "hybrid_molar": {"align_alpha": 0.5, "align_items": True, "hybrid": True},
    "content_post": {"align_alpha": 0.0, "norm": "post"},
    "hybrid_post": {"align_alpha": 0.0, "hybrid": True, "norm": "post"},
    "molar_post": {"align_alpha": 0.5, "norm": "post"},
    "molar_items_post": {"align_alpha": 0.5, "align_items": True, "norm": "post"},
}


def seed_workspace(args, seed: int) -> Path:
    ws = args.out / f"seed{seed}"
    for part in ("data/prepared", "artifacts/embeddings"):
        if not (ws / part).exists():
            shutil.copytree(args.workspace / part, ws / part)
    extra = dotted_overrides(args.set)
    over = {**extra, "train_id": {**extra.get("train_id", {}), "seed": seed},
            "train": {**extra.get("train", {}), "seed": seed},
            "train_variants": {v: VARIANTS[v] for v in [*args.variants, *args.first_seed_variants]}}
    params = load_params(args.params, overrides=over)  # validated here: a bad key fails before any training
    (ws / "params.yaml").write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))
    return ws


def test_ndcg(ws: Path, model: str) -> dict:
    """Per-user test NDCG@10 of a trained model: its saved test user vectors against its item vectors, every
    item ranked, the user's history masked (the default protocol)."""
    ckpt = open_checkpoint(ws / "artifacts" / model)
    test = read_prepared(ws, "test")
    ckpt.check_data(ws / "data/prepared/items.parquet", test.height)
    users = torch.from_numpy(ckpt.user_vectors("test", test["user_id"].to_list()))
    ranks = target_ranks(users, torch.from_numpy(ckpt.item_vectors()), test["history"].to_list(),
                         test["target"].to_torch())
    per = per_user_metrics(ranks.numpy().astype(float), [10])
    metrics = ws / "metrics" / ("train_id.json" if model == "sasrec" else f"train_{model}.json")
    run = read_json(metrics)
    return {"ndcg@10": float(per["ndcg@10"].mean()), "per_user_ndcg@10": per["ndcg@10"].round(6).tolist(),
            "valid_ndcg@10": run["valid"].get("ndcg@10"), "train_s": run.get("train_seconds")}


def train_and_score(ws: Path, seed: int, model: str) -> None:
    """Train one model of one seed (SASRec: train_id) and write its test scores at once, so a sweep cut short
    by a time limit keeps every model that finished."""
    if (ws / "results" / f"{model}.json").exists():  # a rerun adds models; finished ones (and SASRec) stay
        return
    argv = ["stages.train_id"] if model == "sasrec" else ["stages.train", model]
    run_stage(ws, argv, ws / f"{'_'.join(argv)}.log")
    write_json_atomic(ws / "results" / f"{model}.json", {"seed": seed, "model": model, **test_ndcg(ws, model)})
    print(f"seed {seed} {model}: test NDCG@10 {read_json(ws / 'results' / f'{model}.json')['ndcg@10']:.4f}",
          flush=True)


def run(args) -> None:
    seeds = {s: seed_workspace(args, s) for s in args.seeds}
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda s: train_and_score(seeds[s], s, "sasrec"), seeds))  # the variants align to it
        jobs = [(s, v) for s in seeds for v in args.variants]
        jobs += [(args.seeds[0], v) for v in args.first_seed_variants if v not in args.variants]
        list(pool.map(lambda j: train_and_score(seeds[j[0]], j[0], j[1]), jobs))


def report(dirs: list[Path], against: list[str]) -> None:
    """Each model's test NDCG@10 per seed, mean with a t-interval over seeds, and its paired bootstrap
    difference over users (seeds pooled) to each model in `against`, over the seeds both have."""
    runs = [read_json(f) for d in dirs for f in sorted(d.glob("seed*/results/*.json"))]
    seeds = sorted({r["seed"] for r in runs})
    by_seed: dict[int, dict] = {s: {} for s in seeds}
    for r in runs:
        by_seed[r["seed"]][r["model"]] = r
    models = list(dict.fromkeys(["sasrec", *(r["model"] for r in runs)]))
    print("| test NDCG@10 | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± 95% t | valid (mean) | "
          + " | ".join(f"− {b}, paired bootstrap over users (seeds pooled)" for b in against) + " |")
    print("| --- " * (len(seeds) + 3 + len(against)) + "|")
    for m in models:
        have = [s for s in seeds if m in by_seed[s]]
        cells = [f"{by_seed[s][m]['ndcg@10']:.4f}" if m in by_seed[s] else "" for s in seeds]
        cells.append(t_interval([by_seed[s][m]["ndcg@10"] for s in have]))
        valid = [by_seed[s][m]["valid_ndcg@10"] for s in have if by_seed[s][m].get("valid_ndcg@10") is not None]
        cells.append(f"{np.mean(valid):.4f}" if valid else "")  # the early-stopped run's best (the selection)
        for b in against:
            both = [s for s in have if b in by_seed[s]]
            if m == b or not both:
                cells.append("")
                continue
            pb = paired_bootstrap(np.concatenate([by_seed[s][m]["per_user_ndcg@10"] for s in both]),
                                  np.concatenate([by_seed[s][b]["per_user_ndcg@10"] for s in both]))
            cells.append(f"{pb['diff']:+.4f} [{pb['ci_low']:+.4f}, {pb['ci_high']:+.4f}]")
        print(f"| {m} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workspace", type=Path, help="holds data/prepared and artifacts/embeddings")
    ap.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    ap.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="*", default=["content", "molar"], choices=list(VARIANTS),
                    help="content models to train after SASRec (none: SASRec only)")
    ap.add_argument("--first-seed-variants", nargs="*", default=[], choices=list(VARIANTS),
                    help="trained for the first seed only (a wider study at a third of the cost)")
    ap.add_argument("--jobs", type=int, default=2, help="processes at a time")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--report", type=Path, nargs="+", help="only print the table of these sweep folders")
    ap.add_argument("--against", nargs="+", default=["sasrec"], help="models each row is compared with")
    args = ap.parse_args()
    if args.report:
        return report(args.report, args.against)
    if not (args.workspace and args.out):
        ap.error("--workspace and --out are needed to run a sweep")
    run(args)
    report([args.out], args.against)


if __name__ == "__main__":
    main()
