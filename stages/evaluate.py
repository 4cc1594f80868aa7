"""DVC stage `evaluate`: full-ranking leave-one-out metrics of every model through its FAISS index."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl

from molar_core.errors import ArtifactError
from molar_core.index import load_index, search_masked
from molar_core.io import atomic_path, runtime_info, write_json_atomic, write_parquet_atomic
from molar_core.metrics import bootstrap_ci, mean_metrics, paired_bootstrap, per_user_metrics, ranks_from_lists
from molar_core.vectors import load_user_vectors
from pipeline import paths
from pipeline.params import EvaluateParams, ProtocolParams
from stages.common import params_from_argv, read_prepared, read_stats, run_main, summary

HISTORY_BUCKETS = [0, 10, 20, 50, 100, 200, 10**9]


def evaluate_model(model: str, index, split: str, table: pl.DataFrame, root: Path, protocol: ProtocolParams,
                   batch_size: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Ranks and per-user metrics of one model (through its loaded index) on one split."""
    users = load_user_vectors(root / paths.model_dir(model) / "user_vectors.safetensors", split,
                              table["user_id"].to_numpy().astype(np.int64), rebuild=f"dvc repro train_{model}")
    histories = table["history"].to_list() if protocol.masking == "history" else None
    lists = search_masked(index, users, histories, max(protocol.ks), batch_size)
    ranks = ranks_from_lists(lists, table["target"].to_numpy())
    return ranks, per_user_metrics(ranks, protocol.ks)


def run(p: EvaluateParams, protocol: ProtocolParams, root: Path = Path(".")) -> dict:
    stats = read_stats(root)
    tables = {s: read_prepared(root, s) for s in ("valid", "test")}
    t0 = time.perf_counter()
    metrics: dict = {"protocol": {
        "split": "leave-one-out (last item test, second-to-last validation)",
        "masking": protocol.masking, "candidates": "all items", "num_items": stats["items"],
        "num_users": stats["users"], "ks": protocol.ks,
        "ci": "95% percentile bootstrap over users (1000 resamples)"}}
    rows, per_test = [], {}
    for model in p.models:
        metrics[model] = {}
        index_path = root / paths.INDEX_DIR / f"{model}.faiss"
        if not index_path.exists():
            raise ArtifactError(str(index_path), "not found", "dvc repro index")
        index = load_index(index_path)
        for split, table in tables.items():
            ranks, per = evaluate_model(model, index, split, table, root, protocol, p.batch_size)
            m = mean_metrics(per)
            metrics[model][split] = m
            if split == "test":
                per_test[model] = per
                metrics[model]["test_ci95"] = {k: list(bootstrap_ci(v)) for k, v in per.items() if k.startswith("ndcg")}
            rows.append(pl.DataFrame({
                "model": model, "split": split, "user_id": table["user_id"],
                "history_len": table["history"].list.len(),
                "rank": pl.Series([None if np.isinf(r) else int(r) for r in ranks], dtype=pl.Int64),
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
    bucket = pl.lit(None, pl.String)
    for lo, hi in zip(HISTORY_BUCKETS[:-1], HISTORY_BUCKETS[1:]):
        label = f"{lo}+" if hi == HISTORY_BUCKETS[-1] else f"{lo}-{hi - 1}"
        bucket = pl.when(pl.col("history_len").is_between(lo, hi - 1)).then(pl.lit(label)).otherwise(bucket)
    by_len = (per_user.filter(pl.col("split") == "test").with_columns(bucket.alias("history_bucket"))
              .group_by("model", "history_bucket").agg(pl.col("ndcg@10").mean(), pl.len().alias("users"),
                                                       pl.col("history_len").min().alias("min_len"))
              .sort("model", "min_len").drop("min_len"))
    plot = root / paths.PLOTS_DIR / "evaluate" / "ndcg_by_history_length.csv"
    with atomic_path(plot) as tmp:
        by_len.write_csv(tmp)
    for model in p.models:
        t = metrics[model]["test"]
        summary("evaluate", f"{model} test NDCG@10 {t['ndcg@10']:.4f} Recall@10 {t['recall@10']:.4f} "
                f"(valid NDCG@10 {metrics[model]['valid']['ndcg@10']:.4f}; masking={protocol.masking})")
    return metrics


def main() -> None:
    params = params_from_argv()
    run(params.evaluate, params.protocol)


if __name__ == "__main__":
    run_main(main)
