"""The catalogue benches' tables (bench/index_scale.py, bench/scale.py) show what their JSON measured: recall
against exact search computed here another way, and each stage's seconds, memory and growth as recorded."""

from __future__ import annotations

import json

import numpy as np

from bench import index_scale, scale
from molar_core.data.synthetic import catalogue, user_queries
from molar_core.index import build_index, set_search_params


def test_index_scale_rows_hold_the_recall_of_exact_search_and_the_table_shows_each_setting():
    items = np.ascontiguousarray(catalogue(3000, 32, seed=0), np.float32)
    queries = np.ascontiguousarray(user_queries(items, 200, seed=1), np.float32)
    rows = index_scale.run("tiny", items, queries, hnsw=False, fastscan=False)
    exact_top = np.argsort(-(queries @ items.T), axis=1, kind="stable")[:, :index_scale.K]
    assert rows[0]["index"] == "Flat (exact)" and rows[0]["recall"] == 1.0
    ivf = [r for r in rows if r["index"].startswith("IVF")]
    assert {r["setting"] for r in ivf} >= {"nprobe=4", "nprobe=32"}
    for r in ivf:  # the first probes miss some of the exact top 10, the widest probes find almost all
        assert 0.0 < r["recall"] <= 1.0
    best = max(ivf, key=lambda r: r["recall"])
    # recall against the exact top 10 computed with numpy: the index's top 10 at its widest setting
    index, _ = build_index(items, best["index"], use_gpu="never")
    set_search_params(index, nprobe=int(best["setting"].split("=")[1]))
    _, got = index.search(queries, index_scale.K)
    assert abs(np.mean([len(set(t) & set(g)) / 10 for t, g in zip(exact_top, got)]) - best["recall"]) < 0.01
    picks = [{"catalogue": "tiny", "pick": best if best["recall"] >= 0.99 else None}]
    text = index_scale.markdown({"faiss": "x", "threads": 1, "k": 10, "queries": 200, "rows": rows, "picks": picks})
    line = next(x for x in text.splitlines() if f"| {best['index']} (nprobe) |" in x)
    same = [r for r in ivf if r["index"] == best["index"]]
    assert line.count(" at ") == len(same) and f"{best['recall']:.3f} at {best['speedup']:.1f}x" in line
    assert f"{rows[0]['qps']:,.0f}" in line


def test_scale_report_reads_every_size_and_the_growth_is_the_largest_over_the_smallest(tmp_path):
    records = {1000: {"prepare": (2.0, 100.0), "train_id": (10.0, 400.0)},
               10000: {"prepare": (3.0, 150.0), "train_id": (40.0, 1000.0), "evaluate": (5.0, 300.0)}}
    for n, stages in records.items():
        ws = tmp_path / str(n)
        (ws / "data/prepared").mkdir(parents=True)
        (ws / "scale.json").write_text(json.dumps({s: {"seconds": t, "peak_rss_mib": m}
                                                   for s, (t, m) in stages.items()}))
        (ws / "data/prepared/stats.json").write_text(json.dumps({"users": 50, "items": n, "interactions": 9 * n}))
    result = scale.report(tmp_path, tmp_path / "scale_result.json")
    saved = json.loads((tmp_path / "scale_result.json").read_text())
    assert saved["sizes"] == [1000, 10000] and "commit" in saved
    text = scale.markdown(saved)
    assert "| train_id | 10.0 | 400 | 40.0 | 1,000 | 4.0x | 2.5x |" in text
    assert "| prepare | 2.0 | 100 | 3.0 | 150 | 1.5x | 1.5x |" in text
    assert "| evaluate |  |  | 5.0 | 300 |  |  |" in text  # measured at one size only: no growth
    assert "10,000 items: 50 users, 10,000 items, 90,000 interactions" in text
    assert text == scale.markdown(result)


def test_split_gap_groups_hold_evaluate_s_per_user_scores_and_the_raw_file_s_sittings(small_workspace, ml_small,
                                                                                     tmp_path):
    import csv

    import polars as pl

    from bench import split_gap

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "seed0").symlink_to(small_workspace)
    result = split_gap.measure(sweep, ml_small, ["sasrec", "molar"])
    # the sittings, read from the raw file by hand: a user's last two ratings by (time, file row)
    with open(ml_small / "ml-small.inter") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    last_two: dict[str, list[tuple[float, int]]] = {}
    for i, (user, _item, _rating, ts) in enumerate(rows):
        last_two.setdefault(user, []).append((float(ts), i))
    same = {u: sorted(v)[-1][0] == sorted(v)[-2][0] for u, v in last_two.items()}
    test = pl.read_parquet(small_workspace / "data/prepared/test.parquet")
    flags = [same[u] for u in test["raw_user_id"].to_list()]
    assert result["users"] == {"same timestamp": sum(flags), "later": len(flags) - sum(flags)}
    assert 0 < sum(flags) < len(flags)
    # each group's mean is evaluate's per-user NDCG@10 over the same users
    per_user = pl.read_parquet(small_workspace / "metrics/per_user.parquet")
    group = dict(zip(test["user_id"].to_list(), flags))
    for row in result["rows"]:
        for split in ("valid", "test"):
            ev = per_user.filter((pl.col("model") == row["model"]) & (pl.col("split") == split))
            ev = ev.with_columns(pl.col("user_id").replace_strict(group).alias("same"))
            for name, flag in (("same timestamp", True), ("later", False)):
                want = ev.filter(pl.col("same") == flag)["ndcg@10"].mean()
                assert abs(row["cells"][f"{split}/{name}"]["mean"] - want) < 1e-6
    assert "| sasrec | 0 |" in split_gap.markdown(result)
