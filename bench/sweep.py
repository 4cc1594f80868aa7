"""Many training configurations over several seeds, in parallel processes, from one embedded workspace: the
post-alignment study (weight, temperature, positions, item alignment, hybrid), the paper's arms and multi-seed
tables, on a machine with many cores or a GPU.

    python -m bench.sweep --workspace W --config bench/configs/amazon_scientific.yaml --set train.patience=15 \
        --seeds 0 1 2 --variants content molar molar_items --jobs 8 --out /tmp/sweep
    python -m bench.sweep --report /tmp/sweep [/tmp/other-sweep ...] --pairs molar:content molar_bce:content_bce \
        [--json sweep.json]
    python -m bench.sweep --report /tmp/sweep /tmp/pre-ln=pre --pairs content:content@pre  # across two settings

W is a workspace whose `data/prepared` and `artifacts/embeddings` exist (`dvc repro embed`, or bench/pipeline.py's
shared workspace); without --workspace, OUT/base is made first by the prepare and embed stages with the sweep's
params (run from the repo root: relative data paths in PARAMS are read from there). PARAMS is --params (a full
file, default params.yaml) with --config's override file (bench/configs/*.yaml) merged on top. Each seed gets
OUT/seedS with those two folders copied and a params.yaml (PARAMS + --set + that seed + the variants of
VARIANTS), then runs
`python -m stages.train_id` and `python -m stages.train NAME` for every variant, the commands `dvc repro` runs,
at most --jobs at a time. Test metrics come from the saved vectors by exact torch ranking with the history
masked (molar_core.ranking, tested equal to the FAISS path that `evaluate` takes), per user, into
OUT/seedS/results/MODEL.json as each model finishes (with the machine and commit it ran on), so the report gives
each model's mean over seeds with a 95% t-interval, its early-stopped run's best validation NDCG@10 (the number
to choose settings by), its paired bootstrap interval over users (seeds pooled) against SASRec, and with
--pairs A:B the same interval of A − B for each pair, also relative to B's mean (bench/paper_table.py reads it);
--json PATH writes the table's numbers there too.
`--variants` with no names trains SASRec only. Nothing here needs FAISS, so the script runs where only torch,
polars and pydantic are installed (and the embed stage's encoder, to make OUT/base).
"""

from __future__ import annotations

import argparse
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml

from bench.common import (add_json_option, add_params_options, diff_cell, overrides, relative_cell, trained_at,
                          trained_line, write_result)
from bench.stage_process import run_stage
from molar_core.checkpoint import open_checkpoint
from molar_core.io import read_json
from molar_core.metrics import paired_bootstrap, per_user_metrics, t_interval
from molar_core.ranking import target_ranks
from pipeline.params import load_params
from pipeline.readers import read_prepared

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
    # the paper's central claim (bench/paper_table.py): alignment as the paper writes it (no projection head),
    # with SASRec trained jointly, and the paper text's loss (BCE, one negative) with and without alignment
    "molar_direct": {"align_alpha": 0.5, "align_head": False},
    "molar_joint": {"align_alpha": 0.5, "joint": True},
    "content_bce": {"align_alpha": 0.0, "rec_loss": "bce"},
    "molar_bce": {"align_alpha": 0.5, "rec_loss": "bce"},
}
PAPER_PAIRS = ["molar:content", "molar_direct:content", "molar_joint:content", "molar_bce:content_bce"]


def base_workspace(args) -> Path:
    """OUT/base, prepared and embedded once for every seed (neither stage reads the seed); in this process,
    from the current directory, as bench/pipeline.py runs them, so PARAMS' relative data paths keep working.
    A rerun repeats both: prepare is deterministic and embed reuses every cached vector (and completes a cache
    an interrupted run left)."""
    from stages import embed, prepare

    ws = args.out / "base"
    params = load_params(args.params, overrides=overrides(getattr(args, "config", None), args.set))
    prepare.run(params.prepare, ws)
    embed.run(params.embed, ws)
    return ws


def seed_workspace(args, seed: int) -> Path:
    ws = args.out / f"seed{seed}"
    for part in ("data/prepared", "artifacts/embeddings"):
        if not (ws / part).exists():
            shutil.copytree(args.workspace / part, ws / part)
    extra = overrides(getattr(args, "config", None), args.set)
    over = {**extra, "train_id": {**extra.get("train_id", {}), "seed": seed},
            "train": {**extra.get("train", {}), "seed": seed},
            "train_variants": {v: VARIANTS[v] for v in [*args.variants, *args.first_seed_variants]}}
    params = load_params(args.params, overrides=over)  # validated here: a bad key fails before any training
    (ws / "params.yaml").write_text(yaml.safe_dump(params.model_dump(), sort_keys=False))
    return ws


def split_ndcg(ws: Path, model: str, split: str = "test") -> np.ndarray:
    """Per-user NDCG@10 of a trained model on one split (prepared order): its saved user vectors of that split
    against its item vectors, every item ranked, the user's history masked (the default protocol)."""
    ckpt = open_checkpoint(ws / "artifacts" / model)
    rows = read_prepared(ws, split)
    ckpt.check_data(ws / "data/prepared/items.parquet", (rows if split == "test" else read_prepared(ws, "test")).height)
    users = torch.from_numpy(ckpt.user_vectors(split, rows["user_id"].to_list()))
    ranks = target_ranks(users, torch.from_numpy(ckpt.item_vectors()), rows["history"].to_list(),
                         rows["target"].to_torch())
    return per_user_metrics(ranks.numpy().astype(float), [10])["ndcg@10"]


def test_ndcg(ws: Path, model: str) -> dict:
    """A trained model's per-user test NDCG@10 (split_ndcg) with its validation score, time and epochs."""
    ckpt = open_checkpoint(ws / "artifacts" / model)
    ndcg = split_ndcg(ws, model)
    run = read_json(ws / "metrics" / ("train_id.json" if model == "sasrec" else f"train_{model}.json"))
    return {"ndcg@10": float(ndcg.mean()), "per_user_ndcg@10": ndcg.round(6).tolist(),
            "valid_ndcg@10": run["valid"].get("ndcg@10"), "train_s": run.get("train_seconds"),
            "epochs_run": ckpt.config.get("epochs_run"), "best_epoch": ckpt.config.get("best_epoch")}


def train_and_score(ws: Path, seed: int, model: str) -> None:
    """Train one model of one seed (SASRec: train_id) and write its test scores at once, so a sweep cut short
    by a time limit keeps every model that finished."""
    if (ws / "results" / f"{model}.json").exists():  # a rerun adds models; finished ones (and SASRec) stay
        return
    argv = ["stages.train_id"] if model == "sasrec" else ["stages.train", model]
    run_stage(ws, argv, ws / f"{'_'.join(argv)}.log")
    write_result(ws / "results" / f"{model}.json", {"seed": seed, "model": model, **test_ndcg(ws, model)})
    print(f"seed {seed} {model}: test NDCG@10 {read_json(ws / 'results' / f'{model}.json')['ndcg@10']:.4f}",
          flush=True)


def run(args) -> None:
    seeds = {s: seed_workspace(args, s) for s in args.seeds}
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda s: train_and_score(seeds[s], s, "sasrec"), seeds))  # the variants align to it
        jobs = [(s, v) for s in seeds for v in args.variants]
        jobs += [(args.seeds[0], v) for v in args.first_seed_variants if v not in args.variants]
        list(pool.map(lambda j: train_and_score(seeds[j[0]], j[0], j[1]), jobs))


def folder_label(text: str | Path) -> tuple[Path, str]:
    """'OUT' -> (OUT, ''); 'OUT=LABEL' -> (OUT, 'LABEL'): that folder's models are named MODEL@LABEL, so a
    pair can compare the same model trained under two settings (`content:content@pre`)."""
    folder, sep, label = str(text).rpartition("=")
    return (Path(folder), label) if sep and label and "/" not in label else (Path(text), "")


def load_runs(dirs: list[Path | str]) -> dict[int, dict[str, dict]]:
    """seed -> model -> its result JSON, from every OUT/seedS/results/MODEL.json of these sweep folders (a later
    folder's run of the same model and seed replaces an earlier one's; a folder given as OUT=LABEL names its
    models MODEL@LABEL)."""
    by_seed: dict[int, dict[str, dict]] = {}
    for d in dirs:
        folder, label = folder_label(d)
        for f in sorted(folder.glob("seed*/results/*.json")):
            r = read_json(f)
            config = f.parents[1] / "artifacts" / r["model"] / "config.json"
            if "epochs_run" not in r and config.exists():  # results written before they recorded the epochs
                c = read_json(config)
                r.update(epochs_run=c.get("epochs_run"), best_epoch=c.get("best_epoch"))
            if label:
                r = {**r, "model": f"{r['model']}@{label}"}
            by_seed.setdefault(r["seed"], {})[r["model"]] = r
    return dict(sorted(by_seed.items()))


def paired_gain(a: dict[int, np.ndarray], b: dict[int, np.ndarray]) -> dict | None:
    """A − B over the same users, the seeds both have pooled: the paired bootstrap interval of the difference,
    and the same divided by B's pooled mean (the relative gain; its interval has the difference's sign, since
    B's mean is taken as fixed). Each seed's two arrays are one value per test user, in the same user order."""
    seeds = [s for s in a if s in b]
    if not seeds:
        return None
    for s in seeds:
        if len(a[s]) != len(b[s]):
            raise ValueError(f"seed {s}: {len(a[s])} users against {len(b[s])}; a paired difference needs the "
                             "same test users")
    xa = np.concatenate([np.asarray(a[s], dtype=np.float64) for s in seeds])
    xb = np.concatenate([np.asarray(b[s], dtype=np.float64) for s in seeds])
    pb = paired_bootstrap(xa, xb)
    base = float(xb.mean())
    rel = {f"relative{end}": pb[key] / base if base > 0 else None
           for end, key in (("", "diff"), ("_low", "ci_low"), ("_high", "ci_high"))}
    means_a, means_b = [float(np.mean(a[s])) for s in seeds], [float(np.mean(b[s])) for s in seeds]
    return {"seeds": seeds, "users_pooled": len(xa), "mean_a": float(xa.mean()), "mean_b": base,
            "seed_means_a": means_a, "seed_means_b": means_b, "t_a": t_interval(means_a),
            "t_b": t_interval(means_b), **pb, **rel}


def compare(by_seed: dict[int, dict[str, dict]], a: str, b: str) -> dict | None:
    """paired_gain of model `a` against model `b` on the per-user test NDCG@10 of the sweep's result JSONs."""
    def per_user(m: str) -> dict[int, np.ndarray]:
        return {s: np.asarray(runs[m]["per_user_ndcg@10"]) for s, runs in by_seed.items() if m in runs}

    return paired_gain(per_user(a), per_user(b))


def parse_pair(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(":")
    if not (sep and a and b):
        raise argparse.ArgumentTypeError(f"{text!r}: expected A:B (the models of one comparison, A − B)")
    return a, b


def report(dirs: list[Path], against: list[str], pairs: list[tuple[str, str]] = (),
           json_out: Path | None = None, models: list[str] | None = None) -> list[dict]:
    """Each model's test NDCG@10 per seed, mean with a t-interval over seeds, and its paired bootstrap
    difference over users (seeds pooled) to each model in `against`, over the seeds both have; then each pair
    A:B of `pairs` with A − B, absolute and relative to B. Prints the tables (`markdown`) and returns the pairs'
    numbers; with json_out, writes every number of both tables there (bench.common.write_result). `models`: only
    these rows, in this order (default: SASRec, then every model the folders hold)."""
    by_seed = load_runs(dirs)
    if models:
        missing = [m for m in models if not any(m in runs for runs in by_seed.values())]
        if missing:
            raise SystemExit(f"{', '.join(map(str, dirs))}: no seed has {', '.join(missing)}")
        by_seed = {s: {m: r for m, r in runs.items() if m in models} for s, runs in by_seed.items()}
    seeds = list(by_seed)
    models = models or list(dict.fromkeys(["sasrec", *(m for runs in by_seed.values() for m in runs)]))
    table = []
    for m in models:
        have = [s for s in seeds if m in by_seed[s]]
        scores = [by_seed[s][m]["ndcg@10"] for s in have]
        valid = [by_seed[s][m]["valid_ndcg@10"] for s in have if by_seed[s][m].get("valid_ndcg@10") is not None]
        table.append({"model": m, "seeds": {s: by_seed[s][m]["ndcg@10"] for s in have},
                      "mean": float(np.mean(scores)) if have else None, "t95": t_interval(scores) if have else "",
                      "valid_mean": float(np.mean(valid)) if valid else None,  # the early-stopped runs' best
                      "epochs_run": {s: by_seed[s][m].get("epochs_run") for s in have},
                      "train_s": {s: by_seed[s][m].get("train_s") for s in have},
                      "against": {b: None if m == b else compare(by_seed, m, b) for b in against}})
    out = [{"a": a, "b": b, **pb} for a, b in pairs if (pb := compare(by_seed, a, b)) is not None]
    result = {"folders": [str(d) for d in dirs], "metric": "test ndcg@10", "seeds": seeds, "against": against,
              "trained": trained_at(r for runs in by_seed.values() for r in runs.values()), "models": table,
              "pairs": out, "pairs_asked": [f"{a}:{b}" for a, b in pairs]}
    print(markdown(result), end="")
    if json_out is not None:
        write_result(json_out, result)
    return out


def markdown(result: dict) -> str:
    """The tables of a sweep result (what `report` prints, and what the docs render from its JSON): one row per
    model with its seeds, mean ± 95% t and the paired differences to the `against` models; then the pairs."""
    seeds = [str(s) for s in result["seeds"]]
    against = result.get("against", ["sasrec"])
    lines = [trained_line(result.get("trained", []))
             + "| test NDCG@10 | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± 95% t | valid (mean) | "
             + " | ".join(f"− {b}, paired bootstrap over users (seeds pooled)" for b in against) + " |",
             "| --- " * (len(seeds) + 3 + len(against)) + "|"]
    for row in result["models"]:
        got = {str(s): v for s, v in row["seeds"].items()}
        cells = [f"{got[s]:.4f}" if s in got else "" for s in seeds]
        cells += [row["t95"], "" if row["valid_mean"] is None else f"{row['valid_mean']:.4f}"]
        cells += [diff_cell(row["against"].get(b)) for b in against]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    asked = result.get("pairs_asked", [f"{p['a']}:{p['b']}" for p in result["pairs"]])
    if asked:
        lines += ["", "| A − B | seeds | A: mean ± 95% t | B: mean ± 95% t | A − B, paired bootstrap over users "
                      "(seeds pooled) | relative to B |", "| --- " * 6 + "|"]
    found = {f"{p['a']}:{p['b']}": p for p in result["pairs"]}
    for name in asked:
        a, b = name.split(":")
        if (pb := found.get(name)) is None:
            lines.append(f"| {a} − {b} | none with both | | | | |")
            continue
        lines.append(f"| {a} − {b} | {' '.join(map(str, pb['seeds']))} | {pb['t_a']} | {pb['t_b']} | "
                     f"{diff_cell(pb)} | " + (f"{relative_cell(pb)} |" if pb["relative"] is not None else "|"))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workspace", type=Path,
                    help="holds data/prepared and artifacts/embeddings (default: OUT/base, made here)")
    add_params_options(ap, sets=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="*", default=["content", "molar"], choices=list(VARIANTS),
                    help="content models to train after SASRec (none: SASRec only)")
    ap.add_argument("--first-seed-variants", nargs="*", default=[], choices=list(VARIANTS),
                    help="trained for the first seed only (a wider study at a third of the cost)")
    ap.add_argument("--jobs", type=int, default=2, help="processes at a time")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--report", nargs="+", metavar="OUT[=LABEL]",
                    help="only print the table of these sweep folders (=LABEL: name that folder's models MODEL@LABEL)")
    ap.add_argument("--against", nargs="+", default=["sasrec"], help="models each row is compared with")
    ap.add_argument("--models", nargs="+", help="--report: only these models' rows, in this order")
    ap.add_argument("--pairs", nargs="*", type=parse_pair, default=[], metavar="A:B",
                    help=f"A − B over users, also relative to B (the paper's: {' '.join(PAPER_PAIRS)})")
    add_json_option(ap)
    args = ap.parse_args()
    if args.report:
        report(args.report, args.against, args.pairs, args.json, args.models)
        return
    if not args.out:
        ap.error("--out is needed to run a sweep")
    args.workspace = args.workspace or base_workspace(args)
    run(args)
    report([args.out], args.against, args.pairs, args.json)


if __name__ == "__main__":
    main()
