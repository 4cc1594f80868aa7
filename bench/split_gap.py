"""Why test NDCG@10 sits below validation on ML-100K: each model's validation and test NDCG@10 over two groups of
users, those whose test item shares its timestamp with their validation item (rated in the same sitting) and
those whose test item came later.

    python -m bench.split_gap --sweep OUT --data ../shared/datasets/ml-100k [--models sasrec content molar]
                              [--json PATH]

OUT is a `bench.sweep` folder; every seed's saved validation and test user vectors are ranked exactly against
the model's item vectors with the history masked (molar_core.ranking, as `evaluate` ranks). The timestamps are
read from the raw RecBole atomic files the way `prepare` orders them (time, then file row), and each user's last
two items there must be the prepared test and validation targets, or the script stops naming the user.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

from bench.common import add_json_option, markdown_table, trained_at, trained_line, write_result
from bench.sweep import split_ndcg
from molar_core.data.recbole_atomic import load_recbole_atomic
from molar_core.io import read_json
from molar_core.metrics import t_interval
from pipeline.readers import read_prepared

GROUPS = ("same timestamp", "later")


def same_sitting(data: Path, ws: Path) -> np.ndarray:
    """Per test user (prepared order): does the test item share its timestamp with the validation item?"""
    inter = load_recbole_atomic(data).interactions.sort(["user", "timestamp", "source_row"])
    last = inter.group_by("user", maintain_order=True).agg(pl.col("item").tail(2), pl.col("timestamp").tail(2))
    items = pl.read_parquet(ws / "data/prepared/items.parquet").select("item_id", "raw_item_id")
    raw_item = dict(zip(items["item_id"].to_list(), items["raw_item_id"].to_list()))
    test, valid = read_prepared(ws, "test"), read_prepared(ws, "valid")
    by_user = {u: (i, t) for u, i, t in zip(last["user"].to_list(), last["item"].to_list(),
                                             last["timestamp"].to_list())}
    out = []
    for user, t_target, v_target in zip(test["raw_user_id"].to_list(), test["target"].to_list(),
                                        valid["target"].to_list()):
        got_items, times = by_user[user]
        if got_items != [raw_item[v_target], raw_item[t_target]]:
            raise SystemExit(f"{data}: user {user}'s last two items are {got_items}, but {ws}/data/prepared "
                             f"has validation {raw_item[v_target]} and test {raw_item[t_target]}")
        out.append(times[0] == times[1])
    return np.array(out)


def measure(sweep: Path, data: Path, models: list[str]) -> dict:
    seeds = sorted(int(p.name[4:]) for p in sweep.glob("seed*") if (p / "data/prepared/test.parquet").exists())
    same = same_sitting(data, sweep / f"seed{seeds[0]}")
    rows = []
    for model in models:
        have = [s for s in seeds if (sweep / f"seed{s}" / "artifacts" / model).exists()]
        cells = {}
        for split in ("valid", "test"):
            per_seed = [split_ndcg(sweep / f"seed{s}", model, split) for s in have]
            for group, mask in zip(GROUPS, (same, ~same)):
                values = [float(v[mask].mean()) for v in per_seed]
                cells[f"{split}/{group}"] = {"seeds": values, "mean": float(np.mean(values)),
                                             "t95": t_interval(values)}
        rows.append({"model": model, "seeds": have, "cells": cells})
    trained = trained_at(read_json(f) for m in models for f in sorted(sweep.glob(f"seed*/results/{m}.json")))
    return {"sweep": str(sweep), "users": {GROUPS[0]: int(same.sum()), GROUPS[1]: int((~same).sum())},
            "trained": trained, "rows": rows}


def markdown(result: dict) -> str:
    """Validation and test NDCG@10 per group (mean over seeds ± 95% t); what docs/results.md renders."""
    n = result["users"]
    header = ["model", "seeds"] + [f"{split} NDCG@10, {g} ({n[g]:,} users)" for split in ("valid", "test")
                                   for g in GROUPS]
    lines = [[r["model"], " ".join(map(str, r["seeds"]))]
             + [r["cells"][f"{split}/{g}"]["t95"] for split in ("valid", "test") for g in GROUPS]
             for r in result["rows"]]
    return trained_line(result.get("trained", [])) + markdown_table(header, lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", type=Path, required=True, help="a bench.sweep folder on ML-100K")
    ap.add_argument("--data", type=Path, required=True, help="the RecBole atomic folder it was prepared from")
    ap.add_argument("--models", nargs="+", default=["sasrec", "content", "molar"])
    add_json_option(ap)
    args = ap.parse_args()
    result = measure(args.sweep, args.data, args.models)
    print(markdown(result), end="")
    if args.json is not None:
        write_result(args.json, result)


if __name__ == "__main__":
    main()
