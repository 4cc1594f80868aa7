"""Scaling efficiency of the stages that run on several workers: E = T1 / (W x TW), where T1 is one worker with
one CPU and TW is W workers with one CPU each, measured in this script on the same inputs.

    python -m bench.scaling --workers 1 2 [--items 4000] [--users 20000] [--catalogue 20000] [--epochs 3] \
        [--data ../shared/datasets/ml-100k] [--stages embed evaluate train] [--json OUT]

- embed: `update_embeddings` with MiniLM on `--items` synthetic item texts, into a fresh cache each time; W = 1
  is the local engine with one torch thread, W > 1 the Ray actor pool (`embed.engine: ray`) with W actors of one
  CPU and one thread. Encoding time only (models loaded before the clock starts, in every actor).
- evaluate: `sharded_target_ranks` of `--users` random users against `--catalogue` items (dimension 64, random
  histories of 20 items masked), this process and W - 1 workers of one thread each (W = 1: this process alone);
  the server the workers fork from is started before the data is made, as the evaluate stage starts it before
  loading its data, so the clock counts forking the workers but not their imports.
- train: the `train_id` stage (SASRec, default params, `--epochs` epochs with dropout 0) on ML-100K (`--data`) with
  `distributed.world_size` W and one thread per process (`threads` W), each run its own process; the time is the
  stage's own `train_seconds` (the epochs and their validations, not the process start or data loading).
Each result also checks the outputs equal W = 1's (cache bytes, ranks; for training the best epoch, and the
validation NDCG@10 within 0.01, since W processes sum gradients in another order and Adam carries the difference
on: the item vectors' largest difference is recorded): a faster wrong answer is not counted.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import polars as pl
import torch

from bench.common import add_json_option, markdown_header, write_result
from molar_core.data.processing import content_hash

WORDS = ("space western comedy drama noir heist romance war musical documentary horror thriller animated sequel "
         "classic silent remake festival indie epic").split()


def item_table(n: int) -> pl.DataFrame:
    g = torch.Generator().manual_seed(0)
    texts = [f"Title: Film {i}. Genres: " + ", ".join(WORDS[j] for j in torch.randint(0, len(WORDS), (12,),
                                                                                       generator=g).tolist())
             for i in range(n)]
    return pl.DataFrame({"item_id": pl.Series(range(1, n + 1), dtype=pl.Int32), "text": texts,
                         "image_path": pl.Series([None] * n, dtype=pl.String),
                         "content_hash": [content_hash(t, None) for t in texts]})


def cache_bytes(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.glob("shard-*"))}


def bench_embed(workers: list[int], n: int) -> list[dict]:
    from molar_core.distributed.ray_cluster import RayConnection, connect
    from molar_core.distributed.ray_embed import ActorPoolConfig, RayPoolEncoder
    from molar_core.encoders import EncoderConfig, build_encoder
    from molar_core.store import update_embeddings

    items = item_table(n)
    cfg = EncoderConfig(threads=1, batch_size=32)
    rows, reference = [], None
    for w in workers:
        torch.set_num_threads(1)
        if w == 1:
            encoder = build_encoder(cfg)
        else:
            connect(RayConnection(num_cpus=max(workers)))
            encoder = RayPoolEncoder(cfg, ActorPoolConfig(actors=w, cpus_per_actor=1))
        store = Path(tempfile.mkdtemp()) / "embeddings"
        try:
            t0 = time.perf_counter()
            update_embeddings(store, items, encoder, shard_size=1024)
            seconds = time.perf_counter() - t0
            got = cache_bytes(store)
        finally:
            if hasattr(encoder, "close"):
                encoder.close()
            shutil.rmtree(store.parent)
        reference = reference or got
        rows.append({"stage": "embed", "workers": w, "seconds": seconds, "items_per_s": n / seconds,
                     "same_output": got == reference})
    return rows


def driver_commit_rate(shards: int = 20, shard_size: int = 4096, dim: int = 1536) -> dict:
    """Items per second the embed driver can commit (shard write with its sha256, manifest rewrite, fsync-free
    atomic renames) for a 2B-class encoder's width: the ceiling of `embed.engine: ray` however many actors
    encode. Vectors are random; only the writing is timed."""
    import numpy as np

    from molar_core.store.cache import EmbeddingCache

    g = torch.Generator().manual_seed(0)
    vec = torch.randn(shard_size, dim, generator=g)
    used = torch.zeros(shard_size, dtype=torch.uint8)
    root = Path(tempfile.mkdtemp()) / "embeddings"
    try:
        with EmbeddingCache(root, {"encoder": "bench", "dim": dim}, shard_size) as cache:
            t0 = time.perf_counter()
            for s in range(shards):
                cache.add(vec, [f"{s:08d}{i:056d}" for i in range(shard_size)], used)
            seconds = time.perf_counter() - t0
    finally:
        shutil.rmtree(root.parent)
    per_shard = np.float64(seconds) / shards
    return {"stage": "embed driver commit", "shards": shards, "shard_size": shard_size, "dim": dim,
            "seconds_per_shard": float(per_shard), "items_per_s": float(shard_size / per_shard)}


def bench_evaluate(workers: list[int], users: int, catalogue: int) -> list[dict]:
    from molar_core.ranking import sharded_target_ranks, start_ranking_workers

    start_ranking_workers()  # as the evaluate stage does first: the workers' server starts while the data is made
    g = torch.Generator().manual_seed(0)
    u, items = torch.randn(users, 64, generator=g), torch.randn(catalogue, 64, generator=g)
    histories = torch.randint(1, catalogue + 1, (users, 20), generator=g).tolist()
    targets = torch.randint(1, catalogue + 1, (users,), generator=g)
    rows, reference = [], None
    for w in workers:
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        ranks = sharded_target_ranks(u, items, histories, targets, chunk=1024, workers=w)
        seconds = time.perf_counter() - t0
        reference = ranks if reference is None else reference
        rows.append({"stage": "evaluate", "workers": w, "seconds": seconds, "users_per_s": users / seconds,
                     "same_output": bool(torch.equal(ranks, reference))})
    return rows


def bench_train(workers: list[int], data: Path, epochs: int) -> list[dict]:
    import json

    import numpy as np
    import yaml

    from bench.stage_process import run_stage
    from molar_core.vectors import load_item_vectors
    from pipeline.params import parse_params
    from stages import prepare

    tmp = Path(tempfile.mkdtemp(prefix="molar-bench-scaling-"))
    try:
        params = parse_params({"prepare": {"source": "recbole_atomic", "path": str(data)}})
        prepare.run(params.prepare, tmp / "base")
        rows, reference = [], None
        for w in workers:
            root = tmp / f"w{w}"
            shutil.copytree(tmp / "base", root)
            p = params.model_dump()
            p["train_id"].update(max_epochs=epochs, patience=epochs, dropout=0.0, threads=w,
                                 distributed={"world_size": w})
            (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
            run_stage(root, ["stages.train_id"], root / "train_id.log")
            metrics = json.loads((root / "metrics/train_id.json").read_text())
            got = {"best_epoch": metrics["best_epoch"], "valid_ndcg@10": metrics["valid"]["ndcg@10"],
                   "items": load_item_vectors(root / "artifacts/sasrec/item_vectors.safetensors")}
            reference = reference or got
            drift = float(np.abs(got["items"] - reference["items"]).max())
            same = (got["best_epoch"] == reference["best_epoch"]
                    and abs(got["valid_ndcg@10"] - reference["valid_ndcg@10"]) <= 0.01)
            rows.append({"stage": "train", "workers": w, "seconds": metrics["train_seconds"], "epochs": epochs,
                         "valid_ndcg@10": got["valid_ndcg@10"], "item_vector_max_diff": drift, "same_output": same})
        return rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--items", type=int, default=4000)
    ap.add_argument("--users", type=int, default=20000)
    ap.add_argument("--catalogue", type=int, default=20000)
    ap.add_argument("--epochs", type=int, default=3, help="train: SASRec epochs")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "datasets" /
                    "ml-100k", help="train: ML-100K in RecBole atomic layout")
    ap.add_argument("--stages", nargs="+", default=["embed", "evaluate", "train"],
                    choices=["embed", "evaluate", "train"])
    add_json_option(ap)
    args = ap.parse_args()
    workers = sorted(set([1, *args.workers]))
    rows = []
    if "embed" in args.stages:
        rows += bench_embed(workers, args.items)
    if "evaluate" in args.stages:
        rows += bench_evaluate(workers, args.users, args.catalogue)
    if "train" in args.stages:
        rows += bench_train(workers, args.data, args.epochs)
    for r in rows:
        t1 = next(x["seconds"] for x in rows if x["stage"] == r["stage"] and x["workers"] == 1)
        r["efficiency"] = t1 / (r["workers"] * r["seconds"])
    if "embed" in args.stages:
        rows.append(driver_commit_rate())
    result = {"rows": rows, "args": {k: v if not isinstance(v, Path) else str(v) for k, v in vars(args).items()}}
    print(markdown(result))
    if args.json:
        write_result(args.json, result)


def markdown(result: dict) -> str:
    """The scaling table of a result (what the script prints, and what docs/performance.md renders from
    bench/results/scaling.json): one row per stage and worker count, then the embed driver's commit ceiling."""
    rows = [r for r in result["rows"] if "workers" in r]
    a = result.get("args", {})
    label = {"embed": f"embed, MiniLM, {a.get('items', 0):,} items (W = 1 the local engine, W > 1 `engine: ray`)",
             "evaluate": f"evaluate, exact ranks of {a.get('users', 0):,} users x {a.get('catalogue', 0):,} items "
                         f"x 64 (`evaluate.workers`)",
             "train": f"train_id, SASRec on ML-100K, {a.get('epochs', 3)} epochs (`distributed.world_size`, torchrun, "
                      "gloo)"}
    lines = [markdown_header(["stage", "workers (1 CPU each)", "seconds", "speed-up vs 1",
                              "efficiency E = T1 / (W x TW)", "same output as 1 worker"])]
    for r in rows:
        t1 = next(x["seconds"] for x in rows if x["stage"] == r["stage"] and x["workers"] == 1)
        lines.append(f"| {label.get(r['stage'], r['stage'])} | {r['workers']} | {r['seconds']:.2f} | "
                     f"{t1 / r['seconds']:.2f}x | "
                     f"{r['efficiency']:.2f} | {'yes' if r['same_output'] else 'NO'} |")
    for c in (r for r in result["rows"] if "seconds_per_shard" in r):
        lines += ["", f"embed driver: {c['seconds_per_shard']:.3f} s to commit a shard of {c['shard_size']:,} "
                      f"x {c['dim']} vectors, a ceiling of {c['items_per_s']:,.0f} items/s whatever the actors"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
