"""Our SASRec against RecBole 1.2.1's SASRec on the same ML-100K data and protocol, both run here, now.

    python -m bench.peers [--recbole-python .venv-recbole/bin/python] [--epochs 5] [--threads 1] \
        [--set train_id.norm=post] [--json PATH]

README's 20x row: `--set train_id.batch_size=32` (76 optimizer steps an epoch instead of 19).

RecBole lives in its own environment (it needs `numpy<2 pandas<3 setuptools<81`):

    python3 -m venv .venv-recbole && .venv-recbole/bin/pip install -c constraints-cpu.txt torch \
        "recbole==1.2.1" "numpy<2" "pandas<3" "setuptools<81"

Both read the same file: our prepared sequences written back with each user's positions as timestamps, so the
two leave-one-out splits hold out the same items. Protocol (RecBole's): leave-one-out by time, full ranking over all items, seen items not masked, CE loss over all
items, max length 50, validation NDCG@10 after every epoch. RecBole trains `--epochs` epochs (about 4 minutes
each on one core) with its defaults (lr 0.001, dim 64, 2 layers) and batches of 512 augmented prefixes, as
measured in ../shared/docs/environment.md; we run the real stages (`prepare`, `train_id` with
`protocol.masking: none`, `index`, `evaluate`) with the default params.
Each system runs in its own process so its peak resident memory is its own. Printed: time per epoch, the
wall time each needs to reach RecBole's best validation NDCG@10, peak memory, and test NDCG@10 / Hit@10.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets"
# The workers run this module (`python -m bench.peers --worker ROLE`, REPO on PYTHONPATH, in a temporary
# directory): the RecBole worker imports nothing else of this checkout, so nothing of it at module level.


def recbole_worker(data_root: Path, epochs: int, threads: int, out: Path) -> None:
    """Runs inside the RecBole environment: train epoch by epoch, validate after each, test the best state."""
    import copy
    import resource

    import torch
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    torch.set_num_threads(threads)
    work = Path(tempfile.mkdtemp(prefix="molar-recbole-"))
    config = Config(model="SASRec", dataset="ml-100k", config_dict={
        "data_path": str(data_root), "checkpoint_dir": str(work), "device": "cpu", "use_gpu": False,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]}, "train_batch_size": 512,
        "eval_batch_size": 4096, "loss_type": "CE", "train_neg_sample_args": None, "MAX_ITEM_LIST_LENGTH": 50,
        "epochs": epochs,
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"},
        "metrics": ["NDCG", "Hit"], "topk": [10], "valid_metric": "NDCG@10", "seed": 0, "reproducibility": True,
        "show_progress": False, "log_wandb": False, "worker": 0})
    init_seed(config["seed"], config["reproducibility"])
    t0 = time.perf_counter()
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = SASRec(config, train_data.dataset)
    trainer = Trainer(config, model)
    curve, best, best_state = [], -1.0, None
    setup = time.perf_counter() - t0
    for epoch in range(epochs):
        t = time.perf_counter()
        trainer._train_epoch(train_data, epoch, show_progress=False)
        train_s = time.perf_counter() - t
        score, _ = trainer._valid_epoch(valid_data, show_progress=False)
        curve.append({"epoch": epoch + 1, "train_s": train_s, "seconds": time.perf_counter() - t,
                      "valid_ndcg@10": float(score)})
        if score > best:
            best, best_state = float(score), copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    out.write_text(json.dumps({
        "setup_s": setup, "curve": curve, "test_ndcg@10": float(test["ndcg@10"]), "test_hit@10": float(test["hit@10"]),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_sequences": len(train_data.dataset)}))


def molar_worker(data_root: Path, threads: int, out: Path, settings: list[str]) -> None:
    """Runs in our environment: the real stages under RecBole's protocol."""
    import resource

    from pipeline.params import dotted_overrides, load_params
    from stages import evaluate, index, prepare, train_id

    root = Path(tempfile.mkdtemp(prefix="molar-peer-"))
    extra = dotted_overrides(settings)
    p = load_params(REPO / "params.yaml", overrides={
        **extra, "prepare": {"source": "recbole_atomic", "path": str(data_root / "ml-100k")},
        "protocol": {"masking": "none"}, "train_id": {**extra.get("train_id", {}), "threads": threads},
        "index": {"models": ["sasrec"]}, "evaluate": {"models": ["sasrec"]}})
    t0 = time.perf_counter()
    prepare.run(p.prepare, root)
    setup = time.perf_counter() - t0
    cfg = train_id.run(p.train_id, p.protocol, root)
    index.run(p.index, root)
    m = evaluate.run(p.evaluate, p.protocol, root)
    with open(root / "plots" / "train_id" / "curve.csv") as f:
        curve = [{"epoch": int(r["epoch"]), "seconds": float(r["seconds"]), "valid_ndcg@10": float(r["valid_ndcg@10"])}
                 for r in csv.DictReader(f)]
    out.write_text(json.dumps({
        "setup_s": setup, "curve": curve, "best_epoch": cfg["best_epoch"], "wall_s": time.perf_counter() - t0,
        "test_ndcg@10": m["sasrec"]["test"]["ndcg@10"], "test_hit@10": m["sasrec"]["test"]["recall@10"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def shared_split(source: Path) -> Path:
    """Our prepared ML-100K sequences written back as a RecBole atomic file whose timestamps are each user's
    positions 1..n: RecBole's leave-one-out then holds out exactly our validation and test items (the raw
    timestamps tie for many users' last two ratings, and the two libraries order ties differently)."""
    import polars as pl

    from pipeline.params import PrepareParams
    from stages import prepare

    root = Path(tempfile.mkdtemp(prefix="molar-peers-split-"))
    prepare.run(PrepareParams(source="recbole_atomic", path=str(source)), root)
    test = pl.read_parquet(root / "data/prepared/test.parquet")
    raw_item = pl.read_parquet(root / "data/prepared/items.parquet")["raw_item_id"].to_list()
    rows = [(u, raw_item[i - 1], pos) for u, h, t in zip(test["raw_user_id"], test["history"], test["target"])
            for pos, i in enumerate([*h, t], start=1)]
    out = root / "ml-100k"
    out.mkdir()
    pl.DataFrame(rows, schema=["user_id:token", "item_id:token", "timestamp:float"], orient="row").with_columns(
        pl.lit(1.0).alias("rating:float")).write_csv(out / "ml-100k.inter", separator="\t")
    return root


def time_to_reach(curve: list[dict], target: float) -> tuple[float, int] | None:
    """Cumulative seconds (training + validation) until the first epoch whose validation NDCG@10 >= target."""
    total = 0.0
    for row in curve:
        total += row["seconds"]
        if row["valid_ndcg@10"] >= target:
            return total, row["epoch"]
    return None


def spawn(python: str, role: str, args: argparse.Namespace) -> dict:
    out = Path(tempfile.mkdtemp(prefix="molar-peers-")) / f"{role}.json"
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    # as a module: run as a script, bench/ would head sys.path and bench/pipeline.py would shadow the package
    cmd = [python, "-m", "bench.peers", "--worker", role, "--epochs", str(args.epochs), "--threads", str(args.threads),
           "--data", str(args.data), "--out", str(out), *[f"--set={s}" for s in args.set]]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=out.parent)  # RecBole writes log/ into its working directory
    result = json.loads(out.read_text())
    result["process_wall_s"] = time.perf_counter() - t
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recbole-python", default=str(REPO / ".venv-recbole" / "bin" / "python"))
    ap.add_argument("--epochs", type=int, default=5, help="RecBole epochs (about 4 minutes each on one core)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", type=Path, default=DATA, help="directory holding ml-100k/ml-100k.inter (the raw data)")
    ap.add_argument("--worker", choices=["recbole", "molar"], default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--recbole-json", type=Path, default=None, help="reuse a finished RecBole worker's output")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override our params, e.g. --set train_id.norm=post")
    ap.add_argument("--json", type=Path, metavar="PATH",
                    help="also write the table's numbers here, with the machine and commit")
    args = ap.parse_args()
    if args.worker == "recbole":
        return recbole_worker(args.data, args.epochs, args.threads, args.out)
    if args.worker == "molar":
        return molar_worker(args.data, args.threads, args.out, args.set)

    args.data = shared_split(args.data / "ml-100k")
    print(f"shared split: {args.data / 'ml-100k' / 'ml-100k.inter'}")
    from bench.common import write_result

    rec = json.loads(args.recbole_json.read_text()) if args.recbole_json else spawn(args.recbole_python, "recbole", args)
    ours = spawn(sys.executable, "molar", args)
    target = max(r["valid_ndcg@10"] for r in rec["curve"])
    rec_reach, ours_reach = time_to_reach(rec["curve"], target), time_to_reach(ours["curve"], target)
    table = []
    ours_name = "molar SASRec (train_id" + "".join(f", {s}" for s in args.set) + ")"
    for name, r, reach in (("RecBole 1.2.1 SASRec", rec, rec_reach), (ours_name, ours, ours_reach)):
        table.append({"system": name, "s_per_epoch": sum(c["seconds"] for c in r["curve"]) / len(r["curve"]),
                      "epochs": len(r["curve"]), "reach_s": reach[0] if reach else None,
                      "reach_epoch": reach[1] if reach else None, "peak_rss_mib": r["peak_rss_mib"],
                      "test_ndcg@10": r["test_ndcg@10"], "test_hit@10": r["test_hit@10"], "run": r})
    result = {"threads": args.threads, "set": args.set, "target_valid_ndcg@10": target,
              "speedup_to_target": rec_reach[0] / ours_reach[0] if rec_reach and ours_reach else None,
              "rows": table}
    print(markdown(result))
    if args.json is not None:
        write_result(args.json, result)


def markdown(result: dict) -> str:
    """The table the script prints and docs/performance.md renders from bench/results/peers*.json."""
    from bench.common import markdown_table

    rows = []
    for r in result["rows"]:
        best = max(c["valid_ndcg@10"] for c in r["run"]["curve"])
        rows.append((r["system"], f"{r['s_per_epoch']:.1f}", r["epochs"],
                     f"{r['reach_s']:,.1f} s (epoch {r['reach_epoch']})" if r["reach_s"] is not None else "not reached",
                     f"{best:.4f}", f"{r['peak_rss_mib']:.0f}", f"{r['test_ndcg@10']:.4f}", f"{r['test_hit@10']:.4f}"))
    speed = result["speedup_to_target"]
    return (f"ML-100K, RecBole's protocol, {result['threads']} thread(s); target: RecBole's best validation "
            f"NDCG@10, {result['target_valid_ndcg@10']:.4f}\n\n"
            + markdown_table(["system", "s per epoch", "epochs", "time to reach the target", "best validation NDCG@10",
                              "peak RSS MiB", "test NDCG@10", "test Hit@10"], rows)
            + ("" if speed is None else f"\n\ntime to RecBole's best validation quality: {speed:.1f}x faster") + "\n")


if __name__ == "__main__":
    main()
