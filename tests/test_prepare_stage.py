"""The prepare stage end to end on the real shared datasets (skipped where ../shared/datasets lacks them), and
on a made-up sample in Amazon-Scientific's layout, which runs everywhere.

Counts are checked against the raw files read here with the csv module, outputs are reloaded from disk,
and a second run must write byte-identical parquet files.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline import paths
from pipeline.params import PrepareParams
from stages.prepare import run
from tests.conftest import AMAZON_SCI as AMAZON  # ../shared/datasets/... (MOLAR_SHARED_DATASETS overrides)
from tests.conftest import ML100K as ML
from tests.conftest import ML100K_POSTERS

SCHEMAS = {
    "items": {"item_id": pl.Int32, "raw_item_id": pl.String, "title": pl.String, "text": pl.String,
              "image_path": pl.String, "has_image": pl.Boolean, "content_hash": pl.String, "cold": pl.Boolean},
    "train": {"user_id": pl.Int32, "raw_user_id": pl.String, "items": pl.List(pl.Int32)},
    "valid": {"user_id": pl.Int32, "raw_user_id": pl.String, "history": pl.List(pl.Int32), "target": pl.Int32},
    "test": {"user_id": pl.Int32, "raw_user_id": pl.String, "history": pl.List(pl.Int32), "target": pl.Int32},
}  # fmt: skip
FILES = {"items": paths.ITEMS, "train": paths.TRAIN, "valid": paths.VALID, "test": paths.TEST}


def reload(root: Path) -> tuple[dict[str, pl.DataFrame], dict]:
    frames = {name: pl.read_parquet(root / rel) for name, rel in FILES.items()}
    for name, df in frames.items():
        assert df.schema == pl.Schema(SCHEMAS[name]), name
    stats = json.loads((root / paths.STATS).read_text())
    return frames, stats


def check_consistency(frames: dict[str, pl.DataFrame], stats: dict) -> None:
    train, valid, test, items = frames["train"], frames["valid"], frames["test"], frames["items"]
    rows = stats["rows"]
    assert rows["input"] == rows["kept"] + sum(rows["dropped"].values())
    assert stats["interactions"] == rows["kept"] == train["items"].list.len().sum() + valid.height + test.height
    assert stats["users"] == train.height == valid.height == test.height
    assert train["user_id"].to_list() == list(range(train.height))
    assert valid["history"].to_list() == train["items"].to_list()
    assert test["history"].to_list() == [h + [t] for h, t in zip(train["items"].to_list(), valid["target"])]
    assert stats["items"] == items.height and items["item_id"].to_list() == list(range(1, items.height + 1))
    used = set(test["history"].explode().to_list()) | set(test["target"].to_list())
    assert used == set(range(1, items.height + 1))  # every item is used, 0 (padding) never
    lengths = (test["history"].list.len() + 1).to_numpy()
    sl = stats["sequence_length"]
    assert (sl["min"], sl["max"]) == (lengths.min(), lengths.max())
    assert sl["median"] == pytest.approx(np.median(lengths)) and sl["mean"] == pytest.approx(lengths.mean())
    assert sl["p90"] == pytest.approx(np.quantile(lengths, 0.9))
    assert stats["density"] == pytest.approx(stats["interactions"] / (stats["users"] * stats["items"]))
    assert items["has_image"].to_list() == items["image_path"].is_not_null().to_list()
    assert stats["images"]["items_with_image"] == int(items["has_image"].sum())


def parquet_bytes(root: Path) -> dict[str, bytes]:
    return {name: (root / rel).read_bytes() for name, rel in FILES.items()}


def run_twice_identical(p: PrepareParams, root: Path) -> tuple[dict, dict]:
    stats = run(p, root)
    first = parquet_bytes(root)
    stats2 = run(p, root)
    assert parquet_bytes(root) == first  # deterministic, byte for byte
    assert {k: v for k, v in stats.items() if k != "runtime"} == {k: v for k, v in stats2.items() if k != "runtime"}
    # the output directory was swapped in whole: no temp or old directories left beside it
    assert sorted(f.name for f in (root / paths.PREPARED).parent.iterdir()) == [paths.PREPARED.name]
    assert sorted(f.name for f in (root / paths.PREPARED).iterdir()) == sorted(
        [rel.name for rel in FILES.values()] + [paths.STATS.name]
    )
    return stats, stats2


@pytest.mark.skipif(not ML100K_POSTERS.is_dir(),
                    reason=f"needs ML-100K with its posters in {ML} (posters only in ../shared/datasets; not on PyPI)")
def test_prepare_ml100k_recbole_atomic_with_posters(tmp_path):
    p = PrepareParams(source="recbole_atomic", path=str(ML), images={"dir": str(ML / "posters")})
    returned, _ = run_twice_identical(p, tmp_path)
    frames, stats = reload(tmp_path)
    assert stats == json.loads(json.dumps(returned))  # what run returned is what it wrote

    # independent reading of the raw files
    with open(ML / "ml-100k.inter", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))[1:]
    posters = {f.stem for f in (ML / "posters").glob("*.jpg") if f.stat().st_size > 0}
    assert len(rows) == 100_000 and len(posters) == 1_658
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1_682, 100_000)
    assert stats["rows"] == {"input": 100_000, "kept": 100_000,
                             "dropped": {"unknown_item": 0, "duplicate": 0, "k_core": 0}}  # fmt: skip
    assert stats["items_table_rows"] == 1_682 and stats["items_without_interactions"] == 0
    img = stats["images"]
    assert img["items_with_image"] == 1_658
    assert img["item_coverage"] == pytest.approx(1_658 / 1_682)
    assert img["interaction_coverage"] == pytest.approx(sum(r[1] in posters for r in rows) / 100_000)
    assert img["missing_by_reason_in_items_table"] == {"no_image": 24}
    assert stats["params"]["images"]["dir"] == str(ML / "posters")

    items, train, test = frames["items"], frames["train"], frames["test"]
    # natural numeric order: raw ids 1..1682 map to item ids 1..1682, raw users 1..943 to 0..942
    assert items["raw_item_id"].cast(pl.Int32).to_list() == items["item_id"].to_list()
    assert train["raw_user_id"].cast(pl.Int32).to_list() == [u + 1 for u in train["user_id"].to_list()]
    toy = items.row(0, named=True)
    assert toy["text"] == "Title: Toy Story. Release year: 1995. Class: Animation, Children's, Comedy"
    assert toy["has_image"] and toy["image_path"] == str((ML / "posters" / "1.jpg").resolve())
    assert set(items.filter(~pl.col("has_image"))["raw_item_id"]) == {str(i) for i in range(1, 1683)} - posters
    # equal content (ML-100K lists some films twice under two ids) gives an equal hash, other content differs
    content = [(t, Path(i).read_bytes() if i else None) for t, i in zip(items["text"], items["image_path"])]
    assert items["content_hash"].n_unique() == len(set(content)) < 1_682
    by_content = dict(zip(content, items["content_hash"]))
    assert all(by_content[c] == h for c, h in zip(content, items["content_hash"]))

    # chronological leave-one-out against the raw file: user 1's last interaction (ties by file line) is the test
    per_user = defaultdict(list)
    for line, (u, i, _, t) in enumerate(rows, start=2):
        per_user[u].append((float(t), line, i))
    want = {u: [i for _, _, i in sorted(v)] for u, v in per_user.items()}
    got_test = dict(zip(test["raw_user_id"], test["target"].cast(pl.String)))
    got_hist = dict(zip(test["raw_user_id"], test["history"].list.len()))
    assert got_test == {u: s[-1] for u, s in want.items()}
    assert got_hist == {u: len(s) - 1 for u, s in want.items()}
    check_consistency(frames, stats)


def check_amazon_table(d: Path, tmp_path: Path) -> tuple[dict, dict]:
    """prepare on Amazon-Scientific's layout (interactions.csv: user_id, item_id, position; items.csv: item_id,
    text) against a plain-Python reference: order by position (then file line), drop repeated items, keep users
    with >= 5 items. Returns (stats, the raw rows' counts)."""
    p = PrepareParams(
        source="table",
        table={"interactions": str(d / "interactions.csv"), "items": str(d / "items.csv"),
               "user_col": "user_id", "item_col": "item_id", "time_col": "position", "text_cols": ["text"],
               "title_col": None},
        k_core_user=5,
    )  # fmt: skip
    run_twice_identical(p, tmp_path)
    frames, stats = reload(tmp_path)

    with open(d / "interactions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    with open(d / "items.csv", newline="") as fh:
        texts = {r["item_id"]: r["text"] for r in csv.DictReader(fh)}
    per_user = defaultdict(list)
    for line, r in enumerate(rows, start=2):
        per_user[r["user_id"]].append((float(r["position"]), line, r["item_id"]))
    seqs = {}
    for u, v in per_user.items():
        seen, seq = set(), []
        for _, _, i in sorted(v):
            if i not in seen:
                seen.add(i)
                seq.append(i)
        seqs[u] = seq
    kept = {u: s for u, s in seqs.items() if len(s) >= 5}
    n_dup = len(rows) - sum(map(len, seqs.values()))

    rows_stats = stats["rows"]
    assert rows_stats["input"] == len(rows)
    assert rows_stats["kept"] + sum(rows_stats["dropped"].values()) == len(rows)
    assert rows_stats["dropped"]["duplicate"] == n_dup and rows_stats["dropped"]["unknown_item"] == 0
    assert rows_stats["kept"] == sum(map(len, kept.values()))
    assert stats["users"] == len(kept)
    assert stats["items"] == len({i for s in kept.values() for i in s})
    assert stats["items_table_rows"] == len(texts)
    assert stats["items_without_interactions"] == len(texts) - stats["items"]
    assert stats["images"]["items_with_image"] == 0 and stats["images"]["item_coverage"] == 0.0
    assert stats["images"]["missing_by_reason_in_items_table"] == {"no_image": len(texts)}

    items, test = frames["items"], frames["test"]
    id2raw = dict(zip(items["item_id"], items["raw_item_id"]))
    histories = test["history"].to_list()
    got = {u: [id2raw[i] for i in h + [t]] for u, h, t in zip(test["raw_user_id"], histories, test["target"])}
    assert got == kept
    assert items["raw_item_id"].to_list() == sorted(items["raw_item_id"].to_list())  # ASINs: string order
    first = items.row(0, named=True)
    assert first["title"] == first["raw_item_id"]  # no title column: the raw id
    assert first["text"] == f"Title: {first['raw_item_id']}. Text: {texts[first['raw_item_id']].strip()}"
    check_consistency(frames, stats)
    return stats, {"rows": len(rows), "items": len(texts)}


def write_amazon_layout_sample(d: Path, users: int = 60, items: int = 90, seed: int = 0) -> Path:
    """A made-up dataset in Amazon-Scientific's layout with what the real file holds: ASIN-like ids, positions
    with ties, repeated items, users left with fewer than 5 items, catalogue items nobody bought, padded text."""
    rng = np.random.default_rng(seed)
    asins = [f"B{n:09d}" for n in rng.choice(10**9, items, replace=False)]
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "items.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["item_id", "text"])
        for a in asins:
            w.writerow([a, f"  A {a[-3:]} kit, with \"quotes\", commas and a\nline break  "])
    with open(d / "interactions.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["user_id", "item_id", "position"])
        for u in range(users):
            n = int(rng.integers(2, 12))
            picks = rng.choice(items - 10, n)  # with repeats; the last 10 items are never bought
            positions = np.sort(rng.integers(0, n, n)).astype(float)  # ties
            for i, pos in zip(picks, positions):
                w.writerow([f"A{u:012d}", asins[i], pos])
    return d


def test_prepare_amazon_layout_table_matches_a_plain_python_reference(tmp_path):
    stats, counts = check_amazon_table(write_amazon_layout_sample(tmp_path / "data"), tmp_path / "out")
    dropped = stats["rows"]["dropped"]
    assert dropped["duplicate"] > 0 and dropped["k_core"] > 0 and stats["items_without_interactions"] >= 10


@pytest.mark.skipif(not AMAZON.exists(), reason=f"needs {AMAZON} (only in ../shared/datasets; not on PyPI)")
def test_prepare_amazon_scientific_table(tmp_path):
    stats, counts = check_amazon_table(AMAZON, tmp_path)
    assert counts == {"rows": 59_384, "items": 4_385}


# ------------------------------------------------------------------------------------------------ sample_users


def sequences(root: Path) -> dict[str, list[str]]:
    """raw user id -> chronological raw item ids, read back from a prepared directory."""
    frames, _ = reload(root)
    id2raw = dict(zip(frames["items"]["item_id"], frames["items"]["raw_item_id"]))
    test = frames["test"]
    return {u: [id2raw[i] for i in h + [t]]
            for u, h, t in zip(test["raw_user_id"], test["history"].to_list(), test["target"])}


def sampled_params(data_dir: Path, **prepare) -> PrepareParams:
    from tests.conftest import small_params

    return PrepareParams(**{**small_params(data_dir).prepare.model_dump(), "images": {}, **prepare})


def test_sample_users_keeps_whole_users_of_the_filtered_data(ml_small, tmp_path):
    full = run(sampled_params(ml_small), tmp_path / "full")
    seqs_full = sequences(tmp_path / "full")
    assert full["sample"] is None and "not_sampled" not in full["rows"]["dropped"]
    assert full["users"] == len(seqs_full) > 40

    stats, again = run_twice_identical(sampled_params(ml_small, sample_users=40, sample_seed=3), tmp_path / "a")
    frames, written = reload(tmp_path / "a")
    assert written == json.loads(json.dumps(stats))
    check_consistency(frames, written)  # item ids 1..N, each used: items of unsampled users left the catalogue
    seqs = sequences(tmp_path / "a")
    assert stats["users"] == len(seqs) == 40 and len(set(seqs)) == 40
    assert all(seqs[u] == seqs_full[u] for u in seqs)  # same items in the same order as without sampling
    assert all(len(s) >= max(5, 3) for s in seqs.values())  # k_core_user still holds
    assert stats["items"] == len({i for s in seqs.values() for i in s}) < full["items"]
    rows = stats["rows"]
    assert rows["input"] == full["rows"]["input"] == rows["kept"] + sum(rows["dropped"].values())
    assert rows["kept"] == sum(map(len, seqs.values()))
    assert rows["dropped"]["not_sampled"] == sum(len(s) for u, s in seqs_full.items() if u not in seqs)
    assert {k: v for k, v in rows["dropped"].items() if k != "not_sampled"} == full["rows"]["dropped"]
    assert stats["sample"] == {"users": 40, "seed": 3, "from_users": full["users"], "from_items": full["items"],
                               "from_interactions": full["interactions"], "k_core_reapplied": False,
                               "items_below_k_core_item": 0}  # fmt: skip
    assert (stats["params"]["sample_users"], stats["params"]["sample_seed"]) == (40, 3)

    other = run(sampled_params(ml_small, sample_users=40, sample_seed=4), tmp_path / "b")
    seqs_other = sequences(tmp_path / "b")
    assert other["users"] == 40 and set(seqs_other) != set(seqs)
    assert all(seqs_other[u] == seqs_full[u] for u in seqs_other)


def test_sample_users_equal_to_the_user_count_is_the_unsampled_data(ml_small, tmp_path):
    full = run(sampled_params(ml_small), tmp_path / "full")
    every = run(sampled_params(ml_small, sample_users=full["users"], sample_seed=9), tmp_path / "every")
    assert parquet_bytes(tmp_path / "every") == parquet_bytes(tmp_path / "full")
    assert every["rows"]["dropped"]["not_sampled"] == 0 and every["interactions"] == full["interactions"]


def test_sample_users_above_the_user_count_names_the_key_and_the_count(ml_small, tmp_path):
    from molar_core.errors import DataError

    n = run(sampled_params(ml_small), tmp_path / "full")["users"]
    with pytest.raises(DataError, match=rf"prepare\.sample_users={n + 1} is larger than the {n} users") as e:
        run(sampled_params(ml_small, sample_users=n + 1), tmp_path / "too_many")
    assert str(ml_small) in str(e.value)  # names the data it counted
    assert not (tmp_path / "too_many" / paths.PREPARED).exists()  # nothing written


@pytest.mark.parametrize(("key", "value"), [("sample_users", 0), ("sample_seed", -1)])
def test_sample_settings_out_of_range_name_the_key(key, value):
    from pipeline.params import ParamsError, parse_params

    with pytest.raises(ParamsError, match=rf"prepare\.{key}"):
        parse_params({"prepare": {key: value}})


# ------------------------------------------------------------------------------------------------ README example


def test_the_readme_own_data_example_prepares(tmp_path, monkeypatch):
    """The README's "Your own data" block, as written: its `prepare` section merged onto params.yaml validates, and
    tables with the columns its comments name, at the paths it gives (relative to the project root), prepare with
    every title, text and image in the items table."""
    import re

    import yaml
    from PIL import Image

    from pipeline.params import load_params

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"\[start:own-data\].*?```yaml\n(.*?)```", readme, re.S).group(1)
    section = yaml.safe_load(block)
    columns = {Path(m[0]).name: [c.strip() for c in m[1].split(",")]
               for m in re.findall(r"(\S+\.csv)\s+# columns ([\w, ]+)", block)}
    assert set(columns) == {"interactions.csv", "items.csv"}
    assert columns["interactions.csv"][:2] == ["user_id", "item_id"]
    monkeypatch.chdir(tmp_path)
    table = section["prepare"]["table"]
    folder = Path(table["items"]).parent
    (folder / "images").mkdir(parents=True)
    items = 12
    with open(table["items"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns["items.csv"])
        for i in range(items):
            Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(folder / "images" / f"{i}.png")
            row = {"item_id": f"sku{i}", "title": f"Widget {i}", "description": f"a widget of size {i}",
                   "image": f"images/{i}.png"}
            w.writerow([row[c] for c in columns["items.csv"]])
    with open(table["interactions"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns["interactions.csv"])
        for u in range(20):
            for t, i in enumerate((u + k) % items for k in range(6)):
                w.writerow([f"u{u}", f"sku{i}", 1_700_000_000 + 60 * t][: len(columns["interactions.csv"])])
    p = load_params(Path(__file__).parents[1] / "params.yaml", overrides=section).prepare
    run(p, tmp_path)
    frames, stats = reload(tmp_path)
    check_consistency(frames, stats)
    got = frames["items"].sort("raw_item_id")
    assert stats["users"] == 20 and got.height == items
    assert all(got["has_image"]) and stats["images"]["item_coverage"] == 1.0
    for raw, title, text in got.select("raw_item_id", "title", "text").iter_rows():
        i = int(raw[3:])
        assert title == f"Widget {i}" and f"a widget of size {i}" in text
