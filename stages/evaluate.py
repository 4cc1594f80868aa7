"""DVC stage `evaluate`: full-ranking leave-one-out metrics of every model, ranked exactly (molar_core.ranking, as
validation in training) over all unmasked items: whatever FAISS index serves recommendations, it changes no metric."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from molar_core.io import atomic_path, runtime_info, write_json_atomic, write_parquet_atomic
from molar_core.metrics import bootstrap_ci, mean_metrics, paired_bootstrap, per_user_metrics
from molar_core.popularity import NAME as POPULARITY
from molar_core.popularity import item_counts, popularity_vectors
from molar_core.ranking import sharded_target_ranks, start_ranking_workers, user_chunk
from molar_core.vectors import load_user_vectors
from pipeline import paths
from pipeline.params import EvaluateParams, Params, ProtocolParams
from pipeline.readers import open_trained, read_prepared, read_stats
from stages.common import params_from_argv, run_main, summary

HISTORY_BUCKETS = [0, 10, 20, 50, 100, 200, 10**9]
POPULARITY_BUCKETS = [0, 1, 10, 50, 100, 200, 10**9]  # training interactions of the test item


def write_bucket_plot(path: Path, rows: pl.DataFrame, column: str, edges: list[int], label: str) -> None:
    """Mean test NDCG@10 and user count per model and bucket of `column` (a CSV that `dvc plots` draws)."""
    bucket = pl.lit(None, pl.String)
    for lo, hi in zip(edges[:-1], edges[1:]):
        name = f"{lo}+" if hi == edges[-1] else str(lo) if hi == lo + 1 else f"{lo}-{hi - 1}"
        bucket = pl.when(pl.col(column).is_between(lo, hi - 1)).then(pl.lit(name)).otherwise(bucket)
    table = (rows.with_columns(bucket.alias(label))
             .group_by("model", label).agg(pl.col("ndcg@10").mean(), pl.len().alias("users"),
                                            pl.col(column).min().alias("_lo"))
             .sort("model", "_lo").drop("_lo"))
    with atomic_path(path) as tmp:
        table.write_csv(tmp)


RANKING = "exact inner product over all unmasked items (torch), ties ranked pessimistically"


def evaluate_model(users: torch.Tensor, items: torch.Tensor, table: pl.DataFrame, protocol: ProtocolParams,
                   batch_size: int, workers: int = 1) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Ranks and per-user metrics of one model on one split from its user vectors (one row per row of `table`)
    and item vectors, both in scoring form (their inner product is the model's score): the ranking validation
    did during training."""
    histories = table["history"].to_list() if protocol.masking == "history" else None
    chunk = min(batch_size, user_chunk(items.shape[0], None))
    ranks = sharded_target_ranks(users, items, histories, torch.tensor(table["target"].to_list()), chunk,
                                 workers).numpy()
    return ranks, per_user_metrics(ranks, protocol.ks)


def model_vectors(root: Path, model: str, stats: dict, tables: dict[str, pl.DataFrame]) -> tuple[dict, dict]:
    """(split -> (user vectors, item vectors), what metrics.json records of the model beside its numbers)."""
    if model == POPULARITY:
        return {s: popularity_vectors(t["history"].to_list(), stats["items"]) for s, t in tables.items()}, {
            "scores": "interactions per item in the histories of the split (test: training + validation items)"}
    ckpt = open_trained(root, model, stats)
    items = torch.from_numpy(ckpt.item_vectors())
    vectors = {s: (torch.from_numpy(load_user_vectors(ckpt.path / "user_vectors.safetensors", s,
                                                      t["user_id"].to_numpy().astype(np.int64), rebuild=ckpt.rebuild)),
                   items) for s, t in tables.items()}
    info = {}
    if ckpt.config.get("refit"):  # its validation items were training targets: say so beside its numbers
        info["refit"] = {"epochs": ckpt.config["refit"]["epochs"], "valid": "trained on (not held out)",
                         "early_stopped_valid": ckpt.config["valid"]}
    return vectors, info


def ndcg_ci(per: dict[str, np.ndarray]) -> dict[str, list[float]]:
    return {k: list(bootstrap_ci(v)) for k, v in per.items() if k.startswith("ndcg")}


def warm_cold(per: dict[str, np.ndarray], cold: np.ndarray) -> dict:
    """Test metrics of the users whose target is warm and of those whose target is cold, with intervals."""
    out = {}
    for name, rows in (("warm", ~cold), ("cold", cold)):
        part = {k: v[rows] for k, v in per.items()}
        out[f"test_{name}"] = mean_metrics(part) if rows.any() else None
        out[f"test_{name}_ci95"] = ndcg_ci(part) if rows.any() else None
    return out


def run(p: EvaluateParams, protocol: ProtocolParams, root: Path = Path(".")) -> dict:
    if p.workers > 1:
        start_ranking_workers()  # their server imports torch while the data and vectors load
    stats = read_stats(root)
    tables = {s: read_prepared(root, s) for s in ("valid", "test")}
    t0 = time.perf_counter()
    cold_info = stats.get("cold_items")
    cold = (tables["test"]["target"] > stats["warm_items"]).to_numpy() if cold_info else np.zeros(
        tables["test"].height, dtype=bool)
    metrics: dict = {"protocol": {
        "split": "leave-one-out (last item test, second-to-last validation)",
        "masking": protocol.masking, "candidates": "all items", "ranking": RANKING, "num_items": stats["items"],
        "num_users": stats["users"], "ks": protocol.ks,
        "ci": "95% percentile bootstrap over users (1000 resamples)",
        "cold_items": cold_info and {**cold_info, "test_users": {"warm": int((~cold).sum()), "cold": int(cold.sum())},
                                     "metrics": "test_warm / test_cold: the users whose test target is warm / cold; "
                                                "test ranks all items, valid the warm ones (as in training)"}}}
    rows, per_test = [], {}
    popularity = item_counts(read_prepared(root, "train")["items"].to_list(), stats["items"])
    for model in p.models:
        vectors, info = model_vectors(root, model, stats, tables)
        metrics[model] = dict(info)
        for split, table in tables.items():
            users, items = vectors[split]
            if split == "valid":  # as validation in training: cold items are not known before the test
                items = items[:stats.get("warm_items", stats["items"])]
            ranks, per = evaluate_model(users, items, table, protocol, p.batch_size, p.workers)
            metrics[model][split] = mean_metrics(per)
            if split == "test":
                per_test[model] = per
                metrics[model]["test_ci95"] = ndcg_ci(per)
                if cold_info:
                    metrics[model].update(warm_cold(per, cold))
            rows.append(pl.DataFrame({
                "model": model, "split": split, "user_id": table["user_id"],
                "history_len": table["history"].list.len(), "target": table["target"],
                "target_popularity": popularity[table["target"].to_numpy()],
                "cold_target": cold if split == "test" else np.zeros(table.height, dtype=bool),
                "rank": pl.Series(ranks, dtype=pl.Int64),
                **{k: v for k, v in per.items()}}))
    if "sasrec" in per_test:
        for model, per in per_test.items():
            if model != "sasrec":
                metrics[model]["test_vs_sasrec"] = {k: paired_bootstrap(per[k], per_test["sasrec"][k])
                                                    for k in per if k.startswith("ndcg")}
    metrics["runtime"] = {"seconds": round(time.perf_counter() - t0, 2), **runtime_info()}
    per_user = pl.concat(rows)
    out = root / paths.METRICS_DIR
    write_json_atomic(out / "metrics.json", metrics)
    write_parquet_atomic(out / "per_user.parquet", per_user)
    test_rows = per_user.filter(pl.col("split") == "test")
    write_bucket_plot(root / paths.PLOTS_DIR / "evaluate" / "ndcg_by_history_length.csv", test_rows, "history_len",
                      HISTORY_BUCKETS, "history_bucket")
    write_bucket_plot(root / paths.PLOTS_DIR / "evaluate" / "ndcg_by_popularity.csv", test_rows, "target_popularity",
                      POPULARITY_BUCKETS, "popularity_bucket")
    for model in p.models:
        m = metrics[model]
        t = m["test"]
        split = "".join(f"; {w} targets {m[f'test_{w}']['ndcg@10']:.4f}" for w in ("warm", "cold")
                        if m.get(f"test_{w}"))
        summary("evaluate", f"{model} test NDCG@10 {t['ndcg@10']:.4f} Recall@10 {t['recall@10']:.4f} "
                f"(valid NDCG@10 {m['valid']['ndcg@10']:.4f}; masking={protocol.masking}{split})")
    return metrics


def main(params: Params | None = None) -> None:
    """`python -m stages.evaluate [params.yaml]`, or `molar` with params it has already validated."""
    params = params or params_from_argv()
    run(params.evaluate, params.protocol)


if __name__ == "__main__":
    run_main(main)
