"""processing.process: filtering, k-core, chronological leave-one-out, ids, items and stats.

RawDataset objects are built directly (per the contract in molar_core/data/raw.py) and results are compared
to plain-Python references written here, not to the implementation's own expressions.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict

import numpy as np
import polars as pl
import pytest

from molar_core.data.processing import MIN_SEQUENCE, ProcessConfig, content_hash, k_core, process, render_text
from molar_core.data.raw import RawDataset
from molar_core.errors import DataError

# ------------------------------------------------------------------------------------------------ helpers


def inter_frame(rows: list[tuple]) -> pl.DataFrame:
    """rows: (user, item, timestamp[, rating]); source_row = file line (header on line 1)."""
    users, items, ts, ratings = [], [], [], []
    for r in rows:
        users.append(str(r[0]))
        items.append(str(r[1]))
        ts.append(float(r[2]))
        ratings.append(float(r[3]) if len(r) > 3 and r[3] is not None else None)
    return pl.DataFrame(
        {
            "user": pl.Series(users, dtype=pl.String),
            "item": pl.Series(items, dtype=pl.String),
            "timestamp": pl.Series(ts, dtype=pl.Float64),
            "rating": pl.Series(ratings, dtype=pl.Float64),
            "source_row": pl.Series(range(2, len(rows) + 2), dtype=pl.Int64),
        }
    )


def items_frame(ids, titles=None, images=None, **fields) -> pl.DataFrame:
    ids = [str(i) for i in ids]
    n = len(ids)
    return pl.DataFrame(
        {
            "item": pl.Series(ids, dtype=pl.String),
            "title": pl.Series(titles if titles is not None else [f"T{i}" for i in ids], dtype=pl.String),
            **{k: pl.Series(v, dtype=pl.String) for k, v in fields.items()},
            "image": pl.Series(images if images is not None else [None] * n, dtype=pl.String),
        }
    )


def make_raw(rows, items: pl.DataFrame | None = None, text_fields=()) -> RawDataset:
    raw = RawDataset(
        interactions=inter_frame(rows),
        items=items,
        interactions_file="inter.csv",
        items_file="items.csv" if items is not None else None,
        text_fields=list(text_fields),
        source="test",
    )
    raw.validate()
    return raw


def check_accounting(prep, raw: RawDataset) -> None:
    rows = prep.stats["rows"]
    assert rows["input"] == raw.interactions.height
    assert rows["kept"] == prep.stats["interactions"]
    assert rows["input"] == rows["kept"] + sum(rows["dropped"].values())
    assert all(v >= 0 for v in rows["dropped"].values())
    # every kept interaction appears exactly once across train + valid target + test target
    n_seq = prep.train["items"].list.len().sum() + prep.valid.height + prep.test.height
    assert n_seq == rows["kept"]


def sequences_by_raw(prep) -> dict[str, list[str]]:
    """raw user id -> full chronological list of raw item ids, rebuilt from train + valid + test targets."""
    id2raw = dict(zip(prep.items["item_id"].to_list(), prep.items["raw_item_id"].to_list()))
    valid = {r["raw_user_id"]: r for r in prep.valid.iter_rows(named=True)}
    test = {r["raw_user_id"]: r for r in prep.test.iter_rows(named=True)}
    out = {}
    for r in prep.train.iter_rows(named=True):
        u = r["raw_user_id"]
        seq = list(r["items"]) + [valid[u]["target"], test[u]["target"]]
        out[u] = [id2raw[i] for i in seq]
    assert set(out) == set(valid) == set(test)
    return out


def natural_key(values):
    vals = list(values)
    try:
        return sorted(vals, key=int)
    except ValueError:
        return sorted(vals)


def naive_k_core(rows: list[tuple], user_min: int, item_min: int) -> list[tuple]:
    """Fixpoint: repeatedly drop every row whose user or item has too few rows. rows: (user, item, uid)."""
    while True:
        uc = Counter(r[0] for r in rows)
        ic = Counter(r[1] for r in rows)
        kept = [r for r in rows if uc[r[0]] >= user_min and ic[r[1]] >= item_min]
        if len(kept) == len(rows):
            return kept
        rows = kept


def reference_pipeline(rows, item_ids, cfg: ProcessConfig) -> dict[str, list[str]]:
    """Plain-Python version of the documented steps; returns raw user -> chronological raw items."""
    recs = [
        dict(user=str(r[0]), item=str(r[1]), ts=float(r[2]), rating=r[3] if len(r) > 3 else None, src=n + 2)
        for n, r in enumerate(rows)
    ]
    if cfg.min_rating is not None:
        recs = [x for x in recs if x["rating"] is not None and x["rating"] >= cfg.min_rating]
    if item_ids is not None:
        recs = [x for x in recs if x["item"] in item_ids]
    per_user = defaultdict(list)
    for x in recs:
        per_user[x["user"]].append(x)
    seqs = {}
    for u, xs in per_user.items():
        xs.sort(key=lambda x: (x["ts"], x["src"]))
        seen, dedup = set(), []
        for x in xs:
            if x["item"] not in seen:
                seen.add(x["item"])
                dedup.append(x)
        if cfg.max_seq_len is not None:
            dedup = dedup[-cfg.max_seq_len :]
        seqs[u] = dedup
    flat = [(u, x["item"], x["src"]) for u, xs in seqs.items() for x in xs]
    kept = naive_k_core(flat, max(cfg.k_core_user, MIN_SEQUENCE), cfg.k_core_item)
    keep_src = {r[2] for r in kept}
    out = {}
    for u, xs in seqs.items():
        s = [x["item"] for x in xs if x["src"] in keep_src]
        if s:
            out[u] = s
    return out


def random_rows(seed: int, n: int = 900, users: int = 70, items: int = 80) -> list[tuple]:
    rng = random.Random(seed)
    # skewed popularity so k-core needs several rounds; few distinct timestamps so ties are common
    item_w = [1.0 / (k + 1) ** 0.8 for k in range(items)]
    user_w = [1.0 / (k + 1) ** 0.7 for k in range(users)]
    out = []
    for _ in range(n):
        u = rng.choices(range(users), weights=user_w)[0]
        i = rng.choices(range(1, items + 1), weights=item_w)[0]
        out.append((u, i, rng.randint(0, 12), rng.randint(1, 5)))
    return out


# ------------------------------------------------------------------------------------------------ k-core


@pytest.mark.parametrize("user_min,item_min", [(1, 1), (3, 1), (5, 1), (3, 3), (5, 5), (8, 4), (2, 10)])
def test_k_core_equals_naive_fixpoint(user_min, item_min):
    rows = random_rows(seed=user_min * 100 + item_min)
    df = pl.DataFrame(
        {"user": [str(r[0]) for r in rows], "item": [str(r[1]) for r in rows], "uid": list(range(len(rows)))}
    )
    got, rounds = k_core(df, user_min, item_min)
    want = naive_k_core([(str(r[0]), str(r[1]), n) for n, r in enumerate(rows)], user_min, item_min)
    assert sorted(got["uid"].to_list()) == sorted(r[2] for r in want)
    assert rounds >= 1
    # the result satisfies both thresholds
    if got.height:
        assert got.group_by("user").len()["len"].min() >= user_min
        assert got.group_by("item").len()["len"].min() >= item_min


def test_k_core_needs_several_rounds_on_a_chain():
    # removing user c (1 row) makes item z drop below 2, which then makes user b drop below 2
    df = pl.DataFrame({"user": ["a", "a", "b", "b", "c", "d", "d"], "item": ["x", "y", "x", "z", "z", "x", "y"]})
    got, rounds = k_core(df, 2, 2)
    assert sorted(zip(got["user"], got["item"])) == [("a", "x"), ("a", "y"), ("d", "x"), ("d", "y")]
    assert rounds >= 3


@pytest.mark.parametrize(
    "cfg",
    [
        ProcessConfig(k_core_user=1, k_core_item=1),
        ProcessConfig(k_core_user=5, k_core_item=1),
        ProcessConfig(k_core_user=4, k_core_item=3),
        ProcessConfig(k_core_user=3, k_core_item=5, min_rating=3),
        ProcessConfig(k_core_user=3, k_core_item=2, max_seq_len=6),
        ProcessConfig(k_core_user=4, k_core_item=3, min_rating=2, max_seq_len=10),
    ],
)
def test_process_matches_plain_python_reference(cfg):
    rows = random_rows(seed=7)
    known = {str(i) for i in range(1, 81) if i % 11 != 0}  # some items are unknown to the items table
    raw = make_raw(rows, items_frame(natural_key(known)))
    prep = process(raw, cfg)
    want = reference_pipeline(rows, known, cfg)
    assert sequences_by_raw(prep) == want
    check_accounting(prep, raw)
    # ids follow natural raw-id order
    assert prep.train["raw_user_id"].to_list() == natural_key(want)
    assert prep.items["raw_item_id"].to_list() == natural_key({i for s in want.values() for i in s})
    assert prep.stats["k_core"]["user_min"] == max(cfg.k_core_user, MIN_SEQUENCE)
    assert prep.stats["k_core"]["item_min"] == cfg.k_core_item


# ------------------------------------------------------------------------------------------------ order and split


def test_chronological_order_ties_keep_file_order_and_leave_one_out():
    rows = [
        ("u1", "50", 5.0),  # row 2: latest -> test target
        ("u1", "9", 3.0),  # rows 3-5 share a timestamp: file order 9, 3, 7 must be kept (not id order)
        ("u1", "3", 3.0),
        ("u1", "7", 3.0),
        ("u1", "4", 1.0),  # earliest
        ("u2", "3", 10.0),
        ("u2", "9", 10.0),
        ("u2", "50", 10.0),  # all tied: file order is the order
    ]
    prep = process(make_raw(rows), ProcessConfig(k_core_user=1))
    seqs = sequences_by_raw(prep)
    assert seqs == {"u1": ["4", "9", "3", "7", "50"], "u2": ["3", "9", "50"]}

    raw2id = dict(zip(prep.items["raw_item_id"], prep.items["item_id"]))
    ids = lambda xs: [raw2id[x] for x in xs]  # noqa: E731
    train = {r["raw_user_id"]: r for r in prep.train.iter_rows(named=True)}
    valid = {r["raw_user_id"]: r for r in prep.valid.iter_rows(named=True)}
    test = {r["raw_user_id"]: r for r in prep.test.iter_rows(named=True)}
    assert test["u1"]["target"] == raw2id["50"]
    assert valid["u1"]["target"] == raw2id["7"]
    assert train["u1"]["items"] == ids(["4", "9", "3"])
    assert test["u2"]["target"] == raw2id["50"] and valid["u2"]["target"] == raw2id["9"]
    assert train["u2"]["items"] == ids(["3"])
    for u in ("u1", "u2"):
        assert valid[u]["history"] == train[u]["items"]
        assert test[u]["history"] == train[u]["items"] + [valid[u]["target"]]
        assert train[u]["user_id"] == valid[u]["user_id"] == test[u]["user_id"]


def test_split_invariants_on_random_data():
    rows = random_rows(seed=3)
    raw = make_raw(rows)
    prep = process(raw, ProcessConfig(k_core_user=3))
    assert prep.train["user_id"].to_list() == prep.valid["user_id"].to_list() == prep.test["user_id"].to_list()
    for tr, va, te in zip(prep.train.iter_rows(named=True), prep.valid.iter_rows(named=True),
                          prep.test.iter_rows(named=True)):  # fmt: skip
        assert len(tr["items"]) >= 1
        assert va["history"] == tr["items"]
        assert te["history"] == tr["items"] + [va["target"]]
        seq = te["history"] + [te["target"]]
        assert len(set(seq)) == len(seq)  # duplicates were removed
    check_accounting(prep, raw)


def test_output_schemas():
    prep = process(make_raw([("a", "1", 1), ("a", "2", 2), ("a", "3", 3)]), ProcessConfig(k_core_user=1))
    assert prep.train.schema == pl.Schema({"user_id": pl.Int32, "raw_user_id": pl.String, "items": pl.List(pl.Int32)})
    for df in (prep.valid, prep.test):
        assert df.schema == pl.Schema(
            {"user_id": pl.Int32, "raw_user_id": pl.String, "history": pl.List(pl.Int32), "target": pl.Int32}
        )
    assert prep.items.schema == pl.Schema(
        {"item_id": pl.Int32, "raw_item_id": pl.String, "title": pl.String, "text": pl.String,
         "image_path": pl.String, "has_image": pl.Boolean, "content_hash": pl.String, "cold": pl.Boolean}
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ ids


def test_contiguous_ids_in_natural_numeric_order():
    users = ["10", "2", "1", "33"]
    items = ["10", "2", "100", "1", "9"]
    rows = [(u, i, t) for u in users for t, i in enumerate(items)]
    prep = process(make_raw(rows), ProcessConfig(k_core_user=1))
    assert prep.items["item_id"].to_list() == [1, 2, 3, 4, 5]  # 0 is padding, never used
    assert prep.items["raw_item_id"].to_list() == ["1", "2", "9", "10", "100"]
    assert prep.train["user_id"].to_list() == [0, 1, 2, 3]
    assert prep.train["raw_user_id"].to_list() == ["1", "2", "10", "33"]
    used = set(prep.train["items"].explode().to_list()) | set(prep.valid["target"]) | set(prep.test["target"])
    assert 0 not in used and used == {1, 2, 3, 4, 5}


def test_non_numeric_ids_sort_as_strings():
    rows = [(u, i, t) for u in ["b", "A", "a1"] for t, i in enumerate(["x2", "10", "x10", "B"])]
    prep = process(make_raw(rows), ProcessConfig(k_core_user=1))
    assert prep.items["raw_item_id"].to_list() == sorted(["x2", "10", "x10", "B"])
    assert prep.train["raw_user_id"].to_list() == sorted(["b", "A", "a1"])
    assert prep.items["item_id"].to_list() == [1, 2, 3, 4]


# ------------------------------------------------------------------------------------------------ filters


def test_duplicates_keep_earliest_and_are_counted():
    rows = [
        ("u", "X", 9.0),  # row 2: later duplicate of X (comes first in the file)
        ("u", "A", 2.0),
        ("u", "B", 3.0),
        ("u", "X", 1.0),  # row 5: earliest X -> kept, so X is first in the sequence
        ("u", "C", 4.0),
        ("u", "C", 4.0),  # exact repeat
    ]
    raw = make_raw(rows)
    prep = process(raw, ProcessConfig(k_core_user=1))
    assert sequences_by_raw(prep) == {"u": ["X", "A", "B", "C"]}
    assert prep.stats["rows"]["dropped"]["duplicate"] == 2
    check_accounting(prep, raw)


def test_min_rating_filter_is_counted():
    rows = [("u", i, i, r) for i, r in enumerate([5, 4, 1, 3, 4, 2, 5])]
    raw = make_raw(rows)
    prep = process(raw, ProcessConfig(min_rating=4, k_core_user=1))
    assert sequences_by_raw(prep) == {"u": ["0", "1", "4", "6"]}
    assert prep.stats["rows"]["dropped"]["below_min_rating"] == 3
    check_accounting(prep, raw)


def test_max_seq_len_keeps_most_recent_and_counts_truncated():
    rows = [("u", i, 100 - i) for i in range(8)]  # item 7 is oldest, item 0 newest
    rows += [("v", i, i) for i in range(3)]  # shorter than max_seq_len: untouched
    raw = make_raw(rows)
    prep = process(raw, ProcessConfig(max_seq_len=4, k_core_user=1))
    assert sequences_by_raw(prep) == {"u": ["3", "2", "1", "0"], "v": ["0", "1", "2"]}
    assert prep.stats["rows"]["dropped"]["truncated"] == 4
    check_accounting(prep, raw)


def test_unknown_items_are_counted():
    rows = [("u", "1", 1), ("u", "2", 2), ("u", "zz", 3), ("u", "3", 4), ("v", "zz", 1)]
    raw = make_raw(rows, items_frame(["1", "2", "3", "4"]))
    prep = process(raw, ProcessConfig(k_core_user=1))
    assert sequences_by_raw(prep) == {"u": ["1", "2", "3"]}
    assert prep.stats["rows"]["dropped"]["unknown_item"] == 2
    assert prep.stats["items_table_rows"] == 4
    assert prep.stats["items_without_interactions"] == 1  # item 4
    assert prep.items["raw_item_id"].to_list() == ["1", "2", "3"]
    check_accounting(prep, raw)


def test_short_users_are_dropped_by_k_core_even_with_k_core_user_1():
    rows = [("one", "1", 1), ("two", "1", 1), ("two", "2", 2)] + [("ok", str(i), i) for i in range(3)]
    raw = make_raw(rows)
    prep = process(raw, ProcessConfig(k_core_user=1))
    assert prep.train["raw_user_id"].to_list() == ["ok"]
    assert prep.stats["rows"]["dropped"]["k_core"] == 3
    assert prep.stats["users_dropped"] == 2
    assert prep.stats["k_core"]["user_min"] == MIN_SEQUENCE == 3
    check_accounting(prep, raw)


def test_all_filters_together_account_for_every_row():
    rows = (
        [("a", i, i, 5) for i in range(6)]
        + [("a", 0, 0.5, 5), ("a", 2, 99, 5)]  # duplicates
        + [("a", 7, 7, 1)]  # low rating
        + [("a", "nope", 8, 5)]  # unknown item
        + [("b", 1, 1, 5), ("b", 2, 2, 5)]  # too short
        + [("c", i, i, 4) for i in range(4)]
    )
    raw = make_raw(rows, items_frame([str(i) for i in range(10)]))
    prep = process(raw, ProcessConfig(min_rating=2, max_seq_len=5, k_core_user=3))
    d = prep.stats["rows"]["dropped"]
    assert d == {"below_min_rating": 1, "unknown_item": 1, "duplicate": 2, "truncated": 1, "k_core": 2}
    assert sequences_by_raw(prep) == {"a": ["1", "2", "3", "4", "5"], "c": ["0", "1", "2", "3"]}
    check_accounting(prep, raw)


# ------------------------------------------------------------------------------------------------ errors


def test_duplicated_item_id_in_items_table_names_the_row():
    rows = [("u", i, i) for i in range(3)]
    with pytest.raises(DataError, match="'1' appears more than once") as err:
        process(make_raw(rows, items_frame(["0", "1", "2", "1"])), ProcessConfig())
    assert err.value.row == 4 and err.value.file == "items.csv"


def test_duplicated_item_id_reports_the_first_repeat_not_a_first_occurrence():
    # ids a, b, b, a: the first repeated row is row 3 (the second 'b')
    rows = [("u", i, n) for n, i in enumerate("abc")]
    with pytest.raises(DataError, match="'b' appears more than once") as err:
        process(make_raw(rows, items_frame(["a", "b", "b", "a", "c"])), ProcessConfig())
    assert err.value.row == 3


def test_min_rating_without_ratings_fails():
    rows = [("u", i, i) for i in range(4)]
    with pytest.raises(DataError, match="no ratings") as err:
        process(make_raw(rows), ProcessConfig(min_rating=3))
    assert err.value.column == "rating" and err.value.file == "inter.csv"


@pytest.mark.parametrize(
    "rows,cfg",
    [
        ([("u", i, i) for i in range(4)], ProcessConfig(k_core_user=5)),
        ([("u", i, i, 1) for i in range(6)], ProcessConfig(min_rating=4)),
        ([("u", "1", 1), ("u", "1", 2), ("u", "2", 3), ("v", "3", 1)], ProcessConfig(k_core_user=1)),
        ([(u, i, i) for u in "ab" for i in range(5)], ProcessConfig(k_core_user=3, k_core_item=3)),
    ],
)
def test_everything_filtered_away_names_k_core_user(rows, cfg):
    with pytest.raises(DataError, match="k_core_user"):
        process(make_raw(rows), cfg)


def test_no_interactions_fails():
    with pytest.raises(DataError, match="no interactions"):
        process(make_raw([]), ProcessConfig())


# ------------------------------------------------------------------------------------------------ items


def test_items_without_table_use_raw_id_as_title():
    prep = process(make_raw([("u", i, n) for n, i in enumerate(["b7", "a1", "c2"])]), ProcessConfig(k_core_user=3))
    items = prep.items
    assert items["title"].to_list() == ["a1", "b7", "c2"]
    assert items["text"].to_list() == ["Title: a1", "Title: b7", "Title: c2"]
    assert items["has_image"].to_list() == [False] * 3
    assert items["image_path"].null_count() == 3
    assert prep.stats["items_table_rows"] is None and prep.stats["items_without_interactions"] is None


def test_render_text():
    assert render_text("Toy Story", {}) == "Title: Toy Story"
    fields = {"release_year": "1995", "class": "  Animation, Comedy ", "empty": "  ", "none": None}
    assert render_text("Toy Story", fields) == "Title: Toy Story. Release year: 1995. Class: Animation, Comedy"


def test_items_title_fallback_text_fields_and_images(tmp_path):
    img = tmp_path / "2.jpg"
    img.write_bytes(b"\xff\xd8poster-two")
    table = items_frame(
        ["1", "2", "3"],
        titles=["Toy Story", None, "  "],
        release_year=["1995", None, "1990"],
        class_=["Comedy", "Drama", ""],
    ).rename({"class_": "class"})
    with_images = table.with_columns(pl.Series("image_path", [None, str(img), None], dtype=pl.String))
    raw = make_raw([("u", i, n) for n, i in enumerate(["1", "2", "3"])], table, text_fields=["release_year", "class"])
    prep = process(raw, ProcessConfig(k_core_user=1), with_images)
    rows = prep.items.to_dicts()
    assert [r["title"] for r in rows] == ["Toy Story", "2", "3"]
    assert [r["text"] for r in rows] == [
        "Title: Toy Story. Release year: 1995. Class: Comedy",
        "Title: 2. Class: Drama",
        "Title: 3. Release year: 1990",
    ]
    assert [r["has_image"] for r in rows] == [False, True, False]
    assert [r["image_path"] for r in rows] == [None, str(img), None]
    # content hash = sha256(text, NUL, image bytes), computed independently
    for r in rows:
        h = hashlib.sha256(r["text"].encode() + b"\x00" + (img.read_bytes() if r["image_path"] else b""))
        assert r["content_hash"] == h.hexdigest()


def test_content_hash_tracks_title_and_image_bytes(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"image-A")
    b.write_bytes(b"image-A")
    rows = [("u", i, n) for n, i in enumerate(["1", "2", "3", "4"])]

    def hashes(titles, paths):
        table = items_frame(["1", "2", "3", "4"], titles=titles)
        with_images = table.with_columns(pl.Series("image_path", paths, dtype=pl.String))
        prep = process(make_raw(rows, table), ProcessConfig(k_core_user=1), with_images)
        return prep.items["content_hash"].to_list()

    base = hashes(["X", "X", "Y", "Z"], [str(a), str(b), None, None])
    assert base[0] == base[1]  # same text and same image bytes (different files) -> same hash
    assert len(set(base)) == 3
    assert hashes(["X", "X", "Y", "Z"], [str(a), str(b), None, None]) == base  # deterministic
    renamed = hashes(["X", "X", "Y2", "Z"], [str(a), str(b), None, None])
    assert renamed[2] != base[2] and renamed[:2] + renamed[3:] == base[:2] + base[3:]
    b.write_bytes(b"image-B")
    changed = hashes(["X", "X", "Y", "Z"], [str(a), str(b), None, None])
    assert changed[1] != base[1] and changed[0] == base[0] and changed[2:] == base[2:]
    # an image changes the hash relative to text only
    assert content_hash("Title: X", None) != content_hash("Title: X", str(a))
    assert content_hash("Title: X", None) == hashlib.sha256(b"Title: X\x00").hexdigest()


# ------------------------------------------------------------------------------------------------ stats


def test_stats_against_numpy(tmp_path):
    rows = random_rows(seed=11)
    known = [str(i) for i in range(1, 81)]
    img = tmp_path / "p.jpg"
    img.write_bytes(b"x")
    with_img = {i for i in known if int(i) % 3 == 0}
    table = items_frame(known)
    paths = [str(img) if i in with_img else None for i in known]
    raw = make_raw(rows, table)
    prep = process(raw, ProcessConfig(k_core_user=4, k_core_item=2), table.with_columns(image_path=pl.Series(paths)))
    s = prep.stats
    seqs = sequences_by_raw(prep)
    n_users, n_items = len(seqs), len({i for v in seqs.values() for i in v})
    n_inter = sum(len(v) for v in seqs.values())
    assert (s["users"], s["items"], s["interactions"]) == (n_users, n_items, n_inter)
    assert s["density"] == pytest.approx(n_inter / (n_users * n_items))
    lengths = np.array([len(v) for v in seqs.values()])
    sl = s["sequence_length"]
    assert sl["min"] == lengths.min() and sl["max"] == lengths.max()
    assert sl["mean"] == pytest.approx(lengths.mean())
    assert sl["median"] == pytest.approx(np.median(lengths))
    for key, q in [("p25", 0.25), ("p75", 0.75), ("p90", 0.9)]:
        assert sl[key] == pytest.approx(np.quantile(lengths, q)), key
    assert sl["p25"] <= sl["median"] <= sl["p75"] <= sl["p90"]
    im = s["images"]
    kept_items = {i for v in seqs.values() for i in v}
    assert im["items_with_image"] == len(kept_items & with_img)
    assert im["item_coverage"] == pytest.approx(len(kept_items & with_img) / n_items)
    n_img_inter = sum(1 for v in seqs.values() for i in v if i in with_img)
    assert im["interaction_coverage"] == pytest.approx(n_img_inter / n_inter)
    assert s["items_table_rows"] == 80 and s["items_without_interactions"] == 80 - n_items
    check_accounting(prep, raw)


def test_sequence_length_quantiles_small_case():
    # lengths 3, 4, 5, 8: numpy (linear) p25 = 3.75, median = 4.5, p75 = 5.75, p90 = 7.1
    rows = [(u, i, i) for u, n in [("a", 3), ("b", 4), ("c", 5), ("d", 8)] for i in range(n)]
    sl = process(make_raw(rows), ProcessConfig(k_core_user=1)).stats["sequence_length"]
    assert (sl["min"], sl["max"]) == (3, 8)
    assert [sl["p25"], sl["median"], sl["p75"], sl["p90"]] == pytest.approx([3.75, 4.5, 5.75, 7.1])
    assert sl["mean"] == pytest.approx(5.0)


# ------------------------------------------------------------------------------------------------ sample_users


def test_sample_users_does_not_depend_on_row_order():
    """The draw is made from the users sorted by raw id: shuffling the file changes nothing."""
    rows = [(u, i, u * 100 + i) for u in range(1, 31) for i in range(1, 8)]  # distinct times: one order
    shuffled = list(rows)
    random.Random(1).shuffle(shuffled)
    cfg = ProcessConfig(k_core_user=3, sample_users=11, sample_seed=5)
    a, b = process(make_raw(rows), cfg), process(make_raw(shuffled), cfg)
    assert sequences_by_raw(a) == sequences_by_raw(b) and len(sequences_by_raw(a)) == 11
    assert a.stats["rows"]["dropped"]["not_sampled"] == 19 * 7


def test_sample_users_is_uniform_over_users():
    from molar_core.data.processing import sample_users

    users = [str(u) for u in range(1, 11)]
    inter = pl.DataFrame({"user": users, "item": ["x"] * 10})
    counts = Counter()
    for seed in range(2000):
        got = sample_users(inter, 3, seed, "inter.csv")["user"].to_list()
        assert len(set(got)) == 3
        counts.update(got)
    freq = np.array([counts[u] / 2000 for u in users])
    assert np.all(np.abs(freq - 0.3) < 0.05), freq  # each user is drawn with probability 3/10


def test_sample_users_with_k_core_item_keeps_sequences_and_counts_thin_items():
    rows = random_rows(seed=11)
    cfg = ProcessConfig(k_core_user=4, k_core_item=3)
    full = process(make_raw(rows), cfg)
    raw = make_raw(rows)
    prep = process(raw, ProcessConfig(k_core_user=4, k_core_item=3, sample_users=8, sample_seed=2))
    seqs, seqs_full = sequences_by_raw(prep), sequences_by_raw(full)
    assert len(seqs) == 8 and all(seqs[u] == seqs_full[u] for u in seqs)  # k-core is not re-run
    check_accounting(prep, raw)
    assert prep.items["raw_item_id"].to_list() == natural_key({i for s in seqs.values() for i in s})
    per_item = Counter(i for s in seqs.values() for i in s)
    thin = sum(c < 3 for c in per_item.values())
    assert thin > 0  # the case this test is about: the sample breaks k_core_item
    assert prep.stats["sample"]["items_below_k_core_item"] == thin
    assert prep.stats["sample"]["from_users"] == len(seqs_full)


def test_sample_users_above_the_user_count_fails_naming_the_key():
    rows = [(u, i, i) for u in range(5) for i in range(3)]
    with pytest.raises(DataError, match=r"inter\.csv: prepare\.sample_users=6 is larger than the 5 users"):
        process(make_raw(rows), ProcessConfig(k_core_user=3, sample_users=6))
