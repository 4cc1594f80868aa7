"""From raw interactions to chronological leave-one-out sequences, accounting for every input row.

Order of steps (each drop is counted under its reason in `stats.json`):
rating threshold -> unknown items -> duplicates (user, item) -> most recent `max_seq_len` per user ->
iterative k-core (users need max(k_core_user, 3) interactions so that train, valid and test are non-empty) ->
optional random subset of `sample_users` users (`not_sampled`) -> optional cold-item holdout (`cold_history`,
`cold_short_user`).
Ties in time are broken by the row order of the source file, so the order is stable and deterministic.

Sampling keeps or removes whole users after k-core and k-core is not applied again: every sampled user keeps
exactly the sequence the unsampled run gives it, so k_core_user (and the 3-item minimum) still holds, and the
sample has exactly `sample_users` users. Items are counted over the filtered data before sampling, so with
k_core_item > 1 an item may have fewer interactions in the sample (`stats["sample"]` counts such items).
Items left without interactions leave the catalogue: ids 1..N are assigned over the sampled interactions.

Cold items (`cold_fraction` > 0) measure what a model does for items nobody interacted with while it trained:
`cold_by: time` holds out the items whose first interaction is among the last `cold_fraction` of all
interactions in time, `random` a uniformly random `cold_fraction` of the items (default_rng(cold_seed)). Their
interactions leave every training and validation sequence and every history; only a user's last interaction,
the test target, may be cold (so test targets split into warm and cold). A user left with fewer than 3 items
(two warm ones before the test target) is removed, and each removed row is counted. Warm items get ids
1..W and cold items W+1..N (each in natural raw-id order), so the training catalogue is the prefix 1..W
(`stats["warm_items"]`; the models' `train_items`) and the test ranks all N items.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from molar_core.data.raw import RawDataset
from molar_core.errors import ArtifactError, DataError

MIN_SEQUENCE = 3  # leave-one-out needs one train, one valid and one test item


@dataclass
class ProcessConfig:
    min_rating: float | None = None
    k_core_user: int = 5
    k_core_item: int = 1
    max_seq_len: int | None = None
    sample_users: int | None = None  # keep a uniformly random subset of this many users after k-core
    sample_seed: int = 0
    cold_fraction: float = 0.0  # hold out this fraction of items (by time or at random) as cold; 0: none
    cold_by: str = "time"  # time: items first seen in the last cold_fraction of interactions | random
    cold_seed: int = 0  # default_rng seed of the `random` draw


@dataclass
class Prepared:
    """Everything the prepare stage writes."""

    items: pl.DataFrame  # item_id (1..N), raw_item_id, title, text, image_path, has_image, content_hash, cold
    train: pl.DataFrame  # user_id, raw_user_id, items (list[i32])
    valid: pl.DataFrame  # user_id, raw_user_id, history (list[i32]), target (i32)
    test: pl.DataFrame  # user_id, raw_user_id, history, target
    stats: dict


PREPARED_SCHEMA = {  # the columns every reader relies on, and their types
    "items": {"item_id": pl.Int32, "text": pl.String, "image_path": pl.String, "content_hash": pl.String},
    "train": {"user_id": pl.Int32, "items": pl.List(pl.Int32)},
    "valid": {"user_id": pl.Int32, "history": pl.List(pl.Int32), "target": pl.Int32},
    "test": {"user_id": pl.Int32, "history": pl.List(pl.Int32), "target": pl.Int32},
}


def check_prepared(name: str, df: pl.DataFrame, num_items: int | None, path: str, rebuild: str,
                   schema: pl.Schema | None = None) -> None:
    """A prepared table as the stages after `prepare` need it: columns and types, item ids 1..N, no nulls where
    an id is expected. A table edited by hand or written by other code fails here, not deep inside training.
    `schema`: the whole file's, when `df` holds only the id column of an items table read lazily."""
    schema = schema if schema is not None else df.schema
    for column, dtype in PREPARED_SCHEMA[name].items():
        if column not in schema:
            raise ArtifactError(path, f"has no column '{column}' (a prepared {name} table has "
                                f"{', '.join(PREPARED_SCHEMA[name])})", rebuild)
        if schema[column] != dtype:
            raise ArtifactError(path, f"column '{column}' is {schema[column]}, expected {dtype}", rebuild)
    if name == "items":
        if not df["item_id"].equals(pl.Series("item_id", range(1, df.height + 1), dtype=pl.Int32)):
            raise ArtifactError(path, "item_id is not 1..N in order", rebuild)
        return
    n = num_items if num_items is not None else 2**31 - 1

    def bad(e: pl.Expr) -> pl.Expr:
        return e.is_null() | (e < 1) | (e > n)

    checks = [pl.col("user_id").is_null()]
    for column, dtype in PREPARED_SCHEMA[name].items():
        if column != "user_id":
            checks.append(pl.col(column).is_null() | pl.col(column).list.eval(bad(pl.element())).list.any()
                          if isinstance(dtype, pl.List) else bad(pl.col(column)))
    rows = df.select(pl.any_horizontal(checks).alias("bad"))["bad"].arg_true()
    if len(rows):
        raise ArtifactError(path, f"row {rows[0] + 1}: a null user id or an item id outside 1..{n}", rebuild)


def _natural_order(raw: pl.Series) -> pl.Series:
    """Sort raw ids numerically when all are integers (1, 2, 10), else as strings."""
    as_int = raw.cast(pl.Int64, strict=False)
    if as_int.null_count() == 0:  # equal numbers ("7", "07") are ordered as strings: one order for any input
        return pl.DataFrame({"n": as_int, "raw": raw}).sort(["n", "raw"])["raw"].alias(raw.name)
    return raw.sort()


def sample_users(inter: pl.DataFrame, n: int, seed: int, file: str) -> pl.DataFrame:
    """The rows of `n` users drawn uniformly without replacement by numpy's default_rng(seed) from the users
    sorted by raw id (natural order), so the draw depends on the seed and the set of users, not on row order."""
    users = _natural_order(inter["user"].unique())
    if n > len(users):
        raise DataError(file, f"prepare.sample_users={n} is larger than the {len(users)} users left after "
                              f"filtering (k-core); set it to at most {len(users)}, or null for all users")
    chosen = users.gather(np.sort(np.random.default_rng(seed).choice(len(users), size=n, replace=False)))
    return inter.filter(pl.col("user").is_in(chosen.implode()))


def render_text(title: str, fields: dict[str, str | None]) -> str:
    """The text of an item as encoders read it: "Title: X. Year: 1995. Genres: A, B"."""
    parts = [f"Title: {title}"]
    for name, value in fields.items():
        if value is not None and str(value).strip():
            parts.append(f"{name.replace('_', ' ').capitalize()}: {str(value).strip()}")
    return ". ".join(parts)


def content_hash(text: str, image_path: str | None) -> str:
    """sha256 of the text and the image bytes: the key of the embedding cache."""
    h = hashlib.sha256(text.encode("utf-8"))
    h.update(b"\x00")
    if image_path:
        h.update(Path(image_path).read_bytes())
    return h.hexdigest()


def k_core(df: pl.DataFrame, user_min: int, item_min: int) -> tuple[pl.DataFrame, int]:
    """Iteratively remove users and items below their thresholds; returns (kept, rounds)."""
    rounds = 0
    while True:
        rounds += 1
        n = df.height
        if item_min > 1:
            df = df.filter(pl.len().over("item") >= item_min)
        df = df.filter(pl.len().over("user") >= user_min)
        if df.height == n:
            return df, rounds


def process(raw: RawDataset, cfg: ProcessConfig, items_with_images: pl.DataFrame | None = None) -> Prepared:
    """Filter, order, id-map and split `raw`. `items_with_images` is raw.items plus `image_path` (or None)."""
    raw.validate()
    inter = raw.interactions
    file = raw.interactions_file
    n_input = inter.height
    if n_input == 0:
        raise DataError(file, "no interactions")
    dropped: dict[str, int] = {}

    def drop(name: str, before: int, after: pl.DataFrame) -> pl.DataFrame:
        dropped[name] = before - after.height
        return after

    if cfg.min_rating is not None:
        if inter["rating"].null_count() == inter.height:
            raise DataError(file, "prepare.min_rating is set but the source has no ratings", column="rating")
        inter = drop("below_min_rating", inter.height, inter.filter(pl.col("rating") >= cfg.min_rating))

    items = items_with_images if items_with_images is not None else raw.items
    if items is not None:
        dup = ~items["item"].is_first_distinct()  # the first row repeating an earlier id
        if dup.any():
            idx = int(dup.arg_true()[0])
            raise DataError(raw.items_file or "items", f"item id {items['item'][idx]!r} appears more than once",
                            row=idx + 1)
        inter = drop("unknown_item", inter.height, inter.filter(pl.col("item").is_in(items["item"].implode())))

    inter = inter.sort(["user", "timestamp", "source_row"])
    inter = drop("duplicate", inter.height, inter.unique(["user", "item"], keep="first", maintain_order=True))

    if cfg.max_seq_len is not None:
        inter = drop("truncated", inter.height,
                     inter.filter(pl.int_range(pl.len()).over("user")
                                  >= pl.len().over("user").cast(pl.Int64) - cfg.max_seq_len))  # len is u32

    user_min = max(cfg.k_core_user, MIN_SEQUENCE)
    n_users_before = raw.interactions["user"].n_unique()
    before = inter.height
    inter, rounds = k_core(inter, user_min, cfg.k_core_item)
    dropped["k_core"] = before - inter.height
    if inter.height == 0:
        raise DataError(file, f"no user has >= {user_min} interactions after filtering "
                              f"(prepare.k_core_user={cfg.k_core_user}, k_core_item={cfg.k_core_item})")
    sample = None
    if cfg.sample_users is not None:
        before, n_users, n_items = inter.height, inter["user"].n_unique(), inter["item"].n_unique()
        inter = drop("not_sampled", before, sample_users(inter, cfg.sample_users, cfg.sample_seed, file))
        item_counts = inter.group_by("item").len()["len"]
        sample = {"users": cfg.sample_users, "seed": cfg.sample_seed, "from_users": n_users,
                  "from_items": n_items, "from_interactions": before, "k_core_reapplied": False,
                  "items_below_k_core_item": int((item_counts < cfg.k_core_item).sum())}

    cold = None
    if cfg.cold_fraction > 0:
        cold = cold_item_set(inter, cfg.cold_fraction, cfg.cold_by, cfg.cold_seed, file)
        catalogue = inter["item"].unique()  # cold items stay candidates even where no test target is theirs
        inter, cold_counts = hold_out_cold(inter, cold, dropped)
    # contiguous ids: items 1..N (0 = padding; warm items first when some are cold), users 0..U-1, both in natural
    # raw-id order
    if cold is None:
        item_order = _natural_order(inter["item"].unique())
    else:
        item_order = pl.concat([_natural_order(catalogue.filter(~catalogue.is_in(cold.implode()))),
                                _natural_order(cold)])
    num_warm = len(item_order) - (len(cold) if cold is not None else 0)
    user_order = _natural_order(inter["user"].unique())
    item_map = pl.DataFrame({"item": item_order, "item_id": pl.int_range(1, len(item_order) + 1, eager=True)
                             .cast(pl.Int32)})
    user_map = pl.DataFrame({"user": user_order, "user_id": pl.int_range(0, len(user_order), eager=True)
                             .cast(pl.Int32)})
    inter = inter.join(item_map, on="item").join(user_map, on="user")
    inter = inter.sort(["user_id", "timestamp", "source_row"])

    seqs = inter.group_by("user_id", maintain_order=True).agg(
        pl.col("user").first().alias("raw_user_id"), pl.col("item_id").alias("seq"))
    train = seqs.select("user_id", "raw_user_id", pl.col("seq").list.slice(0, pl.col("seq").list.len() - 2)
                        .alias("items"))
    valid = seqs.select("user_id", "raw_user_id",
                        pl.col("seq").list.slice(0, pl.col("seq").list.len() - 2).alias("history"),
                        pl.col("seq").list.get(-2).alias("target"))
    test = seqs.select("user_id", "raw_user_id",
                       pl.col("seq").list.slice(0, pl.col("seq").list.len() - 1).alias("history"),
                       pl.col("seq").list.get(-1).alias("target"))

    items_out = _build_items(item_map, items, raw.text_fields, num_warm)
    n_items_table = items.height if items is not None else None

    lengths = seqs["seq"].list.len()
    n_kept = inter.height
    assert n_kept + sum(dropped.values()) == n_input, "row accounting is broken"
    has_img = items_out["has_image"]
    img_inter = inter.join(items_out.select("item_id", "has_image"), on="item_id")["has_image"].sum()
    stats = {
        "source": raw.source,
        "interactions_file": raw.interactions_file,
        "items_file": raw.items_file,
        "users": len(user_order),
        "items": len(item_order),
        "interactions": n_kept,
        "density": n_kept / (len(user_order) * len(item_order)),
        "rows": {"input": n_input, "kept": n_kept, "dropped": dropped},
        "users_dropped": n_users_before - len(user_order),
        "items_table_rows": n_items_table,
        "items_without_interactions": (n_items_table - len(item_order)) if n_items_table is not None else None,
        "k_core": {"user_min": user_min, "item_min": cfg.k_core_item, "rounds": rounds},
        "sample": sample,  # null: all users; else the draw and what it was drawn from (k-core is not re-run)
        "warm_items": num_warm,  # the training catalogue: item ids 1..warm_items (all items unless some are cold)
        "cold_items": None if cold is None else {
            "fraction": cfg.cold_fraction, "by": cfg.cold_by, "seed": cfg.cold_seed if cfg.cold_by == "random" else None,
            "items": len(item_order) - num_warm, "ids": [num_warm + 1, len(item_order)], **cold_counts,
            "test_targets_cold": int((test["target"] > num_warm).sum()),
            "test_targets_warm": int((test["target"] <= num_warm).sum())},
        "sequence_length": {
            "min": int(lengths.min()), "p25": float(lengths.quantile(0.25, "linear")),
            "median": float(lengths.median()),
            "p75": float(lengths.quantile(0.75, "linear")), "p90": float(lengths.quantile(0.9, "linear")),
            "max": int(lengths.max()), "mean": float(lengths.mean()),
        },
        "images": {
            "items_with_image": int(has_img.sum()),
            "item_coverage": float(has_img.mean()),
            "interaction_coverage": float(img_inter / n_kept),
        },
        "split": "leave-one-out: last item test, second-to-last validation, the rest train"
                 + ("; cold items only as test targets" if cold is not None else ""),
        "tie_break": "source row order",
    }
    return Prepared(items=items_out, train=train, valid=valid, test=test, stats=stats)


def cold_item_set(inter: pl.DataFrame, fraction: float, by: str, seed: int, file: str) -> pl.Series:
    """The raw ids of the items held out as cold. `time`: the items whose first interaction is among the last
    `fraction` of interactions (ordered by time, then source row); `random`: round(fraction x items) items drawn
    by default_rng(seed) from the items in natural order (so the draw does not depend on row order)."""
    if not 0 < fraction < 1:
        raise ValueError(f"prepare.cold_items.fraction must be in (0, 1), got {fraction}")
    if by == "time":
        ordered = inter.sort(["timestamp", "source_row"]).with_row_index("position")
        cutoff = ordered.height - round(fraction * ordered.height)
        first = ordered.group_by("item").agg(pl.col("position").min())
        chosen = first.filter(pl.col("position") >= cutoff)["item"]
    elif by == "random":
        items = _natural_order(inter["item"].unique())
        n = round(fraction * len(items))
        chosen = items.gather(np.sort(np.random.default_rng(seed).choice(len(items), size=n, replace=False)))
    else:
        raise ValueError(f"prepare.cold_items.by must be time or random, got {by!r}")
    if len(chosen) == 0:
        raise DataError(file, f"prepare.cold_items (fraction {fraction}, by {by}) selects no item: raise the fraction")
    return chosen.alias("item")


def hold_out_cold(inter: pl.DataFrame, cold: pl.Series, dropped: dict[str, int]) -> tuple[pl.DataFrame, dict]:
    """`inter` (sorted by user, time) without the cold items' interactions, except each user's last one (the test
    target); then without the users left with fewer than MIN_SEQUENCE items. Both removals are counted in
    `dropped` (cold_history, cold_short_user)."""
    is_cold = pl.col("item").is_in(cold.implode())
    last = pl.int_range(pl.len()).over("user") == pl.len().over("user") - 1
    before = inter.height
    kept = inter.filter(~is_cold | last)
    dropped["cold_history"] = before - kept.height
    users_before = kept["user"].n_unique()
    before = kept.height
    kept = kept.filter(pl.len().over("user") >= MIN_SEQUENCE)
    dropped["cold_short_user"] = before - kept.height
    return kept, {"users_removed": users_before - kept["user"].n_unique()}


def _build_items(item_map: pl.DataFrame, items: pl.DataFrame | None, text_fields: list[str],
                 num_warm: int) -> pl.DataFrame:
    if items is None:
        table = item_map.with_columns(pl.col("item").alias("title"), pl.lit(None, pl.String).alias("image_path"))
        text_fields = []
    else:
        if "image_path" not in items.columns:
            items = items.with_columns(pl.lit(None, pl.String).alias("image_path"))
        table = item_map.join(items, on="item", how="left").sort("item_id")
    titles = [t if t is not None and str(t).strip() else raw for t, raw in zip(table["title"], table["item"])]
    fields = [table[c].cast(pl.String).to_list() for c in text_fields]
    texts = [render_text(title, {c: fields[j][i] for j, c in enumerate(text_fields)})
             for i, title in enumerate(titles)]
    return items_table(table["item_id"], table["item"], titles, texts, table["image_path"].to_list(),
                       (table["item_id"] > num_warm).to_list())


def items_table(item_ids, raw_ids: pl.Series, titles: list[str], texts: list[str],
                images: list[str | None], cold: list[bool]) -> pl.DataFrame:
    """items.parquet's columns, with each item's content hash (the key of the embedding cache): one writer for
    prepared items and for items added to a trained model later. `cold`: the item had no interaction in
    training (held out by prepare.cold_items, or added to a trained model)."""
    return pl.DataFrame({
        "item_id": pl.Series(item_ids).cast(pl.Int32),
        "raw_item_id": raw_ids,
        "title": pl.Series(titles, dtype=pl.String),
        "text": pl.Series(texts, dtype=pl.String),
        "image_path": pl.Series(images, dtype=pl.String),
        "has_image": pl.Series([p is not None for p in images], dtype=pl.Boolean),
        "content_hash": pl.Series([content_hash(t, p) for t, p in zip(texts, images)], dtype=pl.String),
        "cold": pl.Series(cold, dtype=pl.Boolean),
    })
