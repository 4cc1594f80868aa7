"""Dataset adapters: values parsed as the fixture wrote them, every row kept, and bad input named precisely."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import polars as pl
import pytest

from molar_core.data.amazon2023 import load_amazon2023
from molar_core.data.movielens import GENRES, load_movielens
from molar_core.data.recbole_atomic import load_recbole_atomic
from molar_core.data.table import TableMapping, load_table
from molar_core.errors import DataError
from tests.conftest import AMAZON_SCI


def write(path: Path, text: str | bytes, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode(encoding))
    return path


def jsonl(path: Path, *records: dict | str) -> Path:
    """Write records (dicts as JSON, strings verbatim) one per line."""
    return write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))


# ---------------------------------------------------------------- GroupLens ML-100K layout

U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t377\t1\t878887116\n"


def u_item_line(item: int, title: str, date: str, genres: list[str]) -> str:
    flags = "|".join("1" if g in genres else "0" for g in GENRES)
    return f"{item}|{title}|{date}||http://imdb/{item}|{flags}\n"


U_ITEM = (
    u_item_line(242, "Kolya (1996)", "24-Jan-1997", ["Comedy"])
    + u_item_line(302, "Misérables, Les (1995)", "01-Jan-1995", ["Drama", "Musical"])
    + u_item_line(377, "Scream of Stone (Schrei aus Stein) (1991)", "08-Mar-1996", [])
    + u_item_line(267, "unknown", "", ["unknown"])
)


def movielens_dir(tmp_path: Path, data: str | bytes = U_DATA, item: str | bytes = U_ITEM) -> Path:
    write(tmp_path / "ml" / "u.data", data, "latin-1")
    write(tmp_path / "ml" / "u.item", item, "latin-1")
    return tmp_path / "ml"


def test_movielens_parses_interactions_and_items(tmp_path):
    raw = load_movielens(movielens_dir(tmp_path))
    assert raw.interactions.rows() == [
        ("196", "242", 881250949.0, 3.0, 1),
        ("186", "302", 891717742.0, 3.0, 2),
        ("196", "377", 878887116.0, 1.0, 3),
    ]
    assert raw.text_fields == ["year", "genres"]
    items = {r["item"]: r for r in raw.items.to_dicts()}
    assert items["242"] == {"item": "242", "title": "Kolya", "year": "1996", "genres": "Comedy", "image": None}
    assert items["302"]["title"] == "Misérables, Les"  # latin-1 decoded
    assert items["302"]["genres"] == "Drama, Musical"
    assert items["377"]["title"] == "Scream of Stone (Schrei aus Stein)"  # only the trailing year is cut
    assert items["377"]["genres"] is None
    assert (items["267"]["title"], items["267"]["year"], items["267"]["genres"]) == ("unknown", None, "unknown")


def test_movielens_missing_field_names_file_and_line(tmp_path):
    d = movielens_dir(tmp_path, data=U_DATA + "1\t2\t3\n")
    with pytest.raises(DataError, match="has 3 fields, expected 4") as err:
        load_movielens(d)
    assert (err.value.file, err.value.row) == (str(d / "u.data"), 4)


def test_movielens_bad_timestamp_names_line_and_column(tmp_path):
    d = movielens_dir(tmp_path, data=U_DATA.replace("891717742", "yesterday"))
    with pytest.raises(DataError, match="'yesterday'") as err:
        load_movielens(d)
    assert (err.value.file, err.value.row, err.value.column) == (str(d / "u.data"), 2, "timestamp")


def test_movielens_empty_file(tmp_path):
    d = movielens_dir(tmp_path, item="")
    with pytest.raises(DataError, match="empty") as err:
        load_movielens(d)
    assert err.value.file == str(d / "u.item")


def test_movielens_undecodable_bytes_name_file_and_line(tmp_path):
    d = movielens_dir(tmp_path)  # u.item holds latin-1 'é' on its line 2
    with pytest.raises(DataError, match="utf-8") as err:
        load_movielens(d, encoding="utf-8")
    assert (err.value.file, err.value.row) == (str(d / "u.item"), 2)


def test_movielens_bad_genre_flag(tmp_path):
    d = movielens_dir(tmp_path, item=U_ITEM.replace("|http://imdb/302|0|", "|http://imdb/302|x|"))
    with pytest.raises(DataError, match="genre flag") as err:
        load_movielens(d)
    assert (err.value.row, err.value.column) == (2, "unknown")


# ---------------------------------------------------------------- RecBole atomic files

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\nu1\ti1\t4\t100\nu2\ti2\t5\t50\nu1\ti2\t3.5\t200\n"
ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "i1\tToy Story\t1995\tAnimation Children's Comedy\n"
    "i2\tHeat\t\tAction\n"
)


def recbole_dir(tmp_path: Path, inter: str | bytes = INTER, item: str | bytes | None = ITEM, name: str = "toy") -> Path:
    write(tmp_path / name / f"{name}.inter", inter)
    if item is not None:
        write(tmp_path / name / f"{name}.item", item)
    return tmp_path / name


def test_recbole_parses_typed_header_and_items(tmp_path):
    raw = load_recbole_atomic(recbole_dir(tmp_path))  # name defaults to the directory's
    assert raw.interactions.rows() == [
        ("u1", "i1", 100.0, 4.0, 2),
        ("u2", "i2", 50.0, 5.0, 3),
        ("u1", "i2", 200.0, 3.5, 4),
    ]
    assert raw.text_fields == ["release_year", "class"]
    assert raw.items.to_dicts() == [
        {"item": "i1", "title": "Toy Story", "release_year": "1995", "class": "Animation, Children's, Comedy",
         "image": None},
        {"item": "i2", "title": "Heat", "release_year": None, "class": "Action", "image": None},
    ]  # fmt: skip


def test_recbole_without_time_rating_or_item_file(tmp_path):
    inter = "user_id:token\titem_id:token\nu1\ti1\nu2\ti1\nu1\ti2\nu1\ti3\n"
    raw = load_recbole_atomic(recbole_dir(tmp_path, inter=inter, item=None, name="x"), name="x")
    assert raw.interactions["timestamp"].to_list() == [0.0, 0.0, 1.0, 2.0]  # position within the user's rows
    assert raw.interactions["rating"].null_count() == 4
    assert raw.items is None and raw.items_file is None


def test_recbole_title_falls_back_to_title_then_id(tmp_path):
    item = "item_id:token\ttitle:token_seq\tprice:float\ni1\tA lamp\t9.5\ni2\t\t3\n"
    raw = load_recbole_atomic(recbole_dir(tmp_path, item=item))
    assert raw.items["title"].to_list() == ["A lamp", "i2"]
    assert raw.text_fields == ["price"]
    item = "item_id:token\tbrand:token\ni1\tAcme\ni2\tZeta\n"
    raw = load_recbole_atomic(recbole_dir(tmp_path, item=item))
    assert raw.items["title"].to_list() == ["i1", "i2"]


def test_recbole_missing_column(tmp_path):
    d = recbole_dir(tmp_path, inter="user:token\titem_id:token\nu1\ti1\n")
    with pytest.raises(DataError, match="missing column 'user_id'") as err:
        load_recbole_atomic(d)
    assert (err.value.file, err.value.column) == (str(d / "toy.inter"), "user_id")


def test_recbole_bad_timestamp_names_line(tmp_path):
    d = recbole_dir(tmp_path, inter=INTER.replace("\t50\n", "\tsoon\n"))
    with pytest.raises(DataError, match="'soon'") as err:
        load_recbole_atomic(d)
    assert (err.value.file, err.value.row, err.value.column) == (str(d / "toy.inter"), 3, "timestamp")


def test_recbole_empty_file(tmp_path):
    d = recbole_dir(tmp_path, inter="")
    with pytest.raises(DataError, match="empty") as err:
        load_recbole_atomic(d)
    assert err.value.file == str(d / "toy.inter")


def test_recbole_non_utf8_bytes(tmp_path):
    d = recbole_dir(tmp_path, item=ITEM.replace("Heat", "Mis\xe9rables").encode("latin-1"))
    with pytest.raises(DataError, match="utf-8") as err:
        load_recbole_atomic(d)
    assert (err.value.file, err.value.row) == (str(d / "toy.item"), 3)


def test_recbole_duplicate_item_id(tmp_path):
    d = recbole_dir(tmp_path, item=ITEM + "i1\tAgain\t2000\tDrama\n")
    with pytest.raises(DataError, match="second time") as err:
        load_recbole_atomic(d)
    assert err.value.row == 4


def test_recbole_real_ml100k(ml100k):
    raw = load_recbole_atomic(ml100k)
    inter = raw.interactions
    assert (inter.height, inter["user"].n_unique(), raw.items.height) == (100_000, 943, 1_682)
    assert inter.row(0) == ("196", "242", 881250949.0, 3.0, 2)
    assert inter["source_row"].to_list()[-1] == 100_001
    toy = raw.items.filter(pl.col("item") == "1").row(0, named=True)
    assert toy == {"item": "1", "title": "Toy Story", "release_year": "1995",
                   "class": "Animation, Children's, Comedy", "image": None}  # fmt: skip


# ---------------------------------------------------------------- Amazon Reviews 2023


def review(user: str, item: str | None, rating=5.0, ts=1_600_000_000_123, **extra) -> dict:
    r = {"rating": rating, "title": "ok", "text": "nice", "asin": f"{item}-v", "user_id": user, "timestamp": ts}
    if item is not None:
        r["parent_asin"] = item
    return {**r, **extra}


META = [
    {"parent_asin": "P1", "title": "Lamp", "main_category": "Tools", "categories": ["Tools", "Lighting"],
     "store": "Acme", "features": ["bright", "cheap"], "description": ["A lamp.", "Really."], "details": {"a": 1},
     "images": [{"thumb": "t0", "large": "l0", "hi_res": None, "variant": "PT01"},
                {"thumb": "t1", "large": "l1", "hi_res": "h1", "variant": "MAIN"}]},
    {"parent_asin": "P2", "title": "Glue", "main_category": None, "categories": [], "store": None,
     "features": [], "description": [], "details": {},
     "images": [{"thumb": "t2", "large": None, "hi_res": "h2", "variant": "PT01"}]},
    {"parent_asin": "P3", "title": None, "images": []},
]  # fmt: skip


def test_amazon_parses_reviews_and_meta(tmp_path):
    reviews = jsonl(tmp_path / "r.jsonl", review("U1", "P1"), "", review("U2", None, rating=3, ts=1000))
    meta = jsonl(tmp_path / "m.jsonl", *META)
    raw = load_amazon2023(reviews, meta)
    assert raw.interactions.rows() == [
        ("U1", "P1", 1_600_000_000.123, 5.0, 1),
        ("U2", "None-v", 1.0, 3.0, 3),  # no parent_asin: the asin; the blank line 2 is no record
    ]
    assert raw.text_fields == ["category", "store", "features", "description"]
    items = {r["item"]: r for r in raw.items.to_dicts()}
    assert items["P1"] == {"item": "P1", "title": "Lamp", "category": "Tools, Lighting", "store": "Acme",
                           "features": "bright; cheap", "description": "A lamp. Really.", "image": "l1"}  # fmt: skip
    assert items["P2"]["image"] == "h2"  # no MAIN: the first image; no large: hi_res
    assert (items["P2"]["category"], items["P2"]["store"], items["P2"]["features"]) == (None, None, None)
    assert (items["P3"]["title"], items["P3"]["image"]) == ("P3", None)


def test_amazon_without_meta(tmp_path):
    raw = load_amazon2023(jsonl(tmp_path / "r.jsonl", review("U1", "P1")), None)
    assert raw.items is None and raw.interactions.height == 1


def test_amazon_reads_gzip(tmp_path):
    path = tmp_path / "r.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps(review("U1", "P1")) + "\n").encode()))
    assert load_amazon2023(path).interactions["item"].to_list() == ["P1"]


def test_amazon_missing_key_names_file_line_and_key(tmp_path):
    bad = review("U2", "P2")
    del bad["timestamp"]
    reviews = jsonl(tmp_path / "r.jsonl", review("U1", "P1"), bad)
    with pytest.raises(DataError, match="missing key 'timestamp'") as err:
        load_amazon2023(reviews)
    assert (err.value.file, err.value.row, err.value.column) == (str(reviews), 2, "timestamp")


def test_amazon_missing_item_id(tmp_path):
    bad = review("U1", None)
    del bad["asin"]
    reviews = jsonl(tmp_path / "r.jsonl", bad)
    with pytest.raises(DataError, match="'parent_asin' or 'asin'") as err:
        load_amazon2023(reviews)
    assert err.value.row == 1


def test_amazon_bad_timestamp(tmp_path):
    reviews = jsonl(tmp_path / "r.jsonl", review("U1", "P1"), review("U1", "P2"), review("U1", "P3", ts="noon"))
    with pytest.raises(DataError, match="'noon'") as err:
        load_amazon2023(reviews)
    assert (err.value.row, err.value.column) == (3, "timestamp")


def test_amazon_invalid_json_line(tmp_path):
    meta = jsonl(tmp_path / "m.jsonl", META[0], '{"parent_asin": "P2", "title": ')
    with pytest.raises(DataError, match="not valid JSON") as err:
        load_amazon2023(jsonl(tmp_path / "r.jsonl", review("U1", "P1")), meta)
    assert (err.value.file, err.value.row) == (str(meta), 2)


def test_amazon_empty_and_non_utf8(tmp_path):
    empty = write(tmp_path / "e.jsonl", "\n")
    with pytest.raises(DataError, match="empty") as err:
        load_amazon2023(empty)
    assert err.value.file == str(empty)
    latin = write(
        tmp_path / "l.jsonl", (json.dumps(review("U1", "P1")) + "\n" + '{"user_id": "\xe9"}\n').encode("latin-1")
    )
    with pytest.raises(DataError, match="utf-8") as err:
        load_amazon2023(latin)
    assert (err.value.file, err.value.row) == (str(latin), 2)


def test_amazon_duplicate_meta(tmp_path):
    meta = jsonl(tmp_path / "m.jsonl", META[0], META[1], META[0])
    with pytest.raises(DataError, match="second time") as err:
        load_amazon2023(jsonl(tmp_path / "r.jsonl", review("U1", "P1")), meta)
    assert err.value.row == 3


# ---------------------------------------------------------------- generic table

MAPPING = TableMapping("uid", "iid", time_col="when", rating_col="stars", item_key_col="id", title_col="name",
                       text_cols=["desc", "tags"], image_col="img")  # fmt: skip
ROWS = [("a", "x", "10", "4"), ("b", "y", "5", "3"), ("a", "y", "20", "5")]


def csv_text(sep: str, rows=ROWS, header=("uid", "iid", "when", "stars")) -> str:
    return "".join(sep.join(r) + "\n" for r in [header, *rows])


ITEMS_CSV = 'id,name,desc,tags,img\nx,Lamp,"A lamp, bright",t1,x.jpg\ny,,Glue,,\n'
EXPECTED_ITEMS = [
    {"item": "x", "title": "Lamp", "desc": "A lamp, bright", "tags": "t1", "image": "x.jpg"},
    {"item": "y", "title": "y", "desc": "Glue", "tags": None, "image": None},
]
EXPECTED_INTER = [("a", "x", 10.0, 4.0, 2), ("b", "y", 5.0, 3.0, 3), ("a", "y", 20.0, 5.0, 4)]


@pytest.mark.parametrize("ext,sep", [(".csv", ","), (".tsv", "\t")])
def test_table_delimited(tmp_path, ext, sep):
    inter = write(tmp_path / f"i{ext}", csv_text(sep))
    items = write(tmp_path / "items.csv", ITEMS_CSV)
    raw = load_table(inter, items, MAPPING)
    assert raw.interactions.rows() == EXPECTED_INTER
    assert raw.text_fields == ["desc", "tags"]
    assert raw.items.to_dicts() == EXPECTED_ITEMS


def test_table_jsonl_keeps_line_numbers(tmp_path):
    recs = [{"uid": u, "iid": i, "when": int(t), "stars": float(s)} for u, i, t, s in ROWS]
    inter = jsonl(tmp_path / "i.ndjson", recs[0], "", recs[1], recs[2])
    items = jsonl(tmp_path / "items.jsonl",
                  {"id": "x", "name": "Lamp", "desc": "A lamp, bright", "tags": ["t1"], "img": "x.jpg"},
                  {"id": "y", "name": None, "desc": "Glue", "tags": []})  # fmt: skip
    raw = load_table(inter, items, MAPPING)
    assert raw.interactions["source_row"].to_list() == [1, 3, 4]
    assert raw.interactions.drop("source_row").rows() == [r[:4] for r in EXPECTED_INTER]
    assert raw.items.to_dicts() == EXPECTED_ITEMS


def test_table_parquet_native_types(tmp_path):
    inter = tmp_path / "i.parquet"
    pl.DataFrame({"uid": [1, 2, 1], "iid": [7, 8, 8], "when": [10, 5, 20], "stars": [4, 3, 5]}).write_parquet(inter)
    items = tmp_path / "items.parquet"
    pl.DataFrame({"id": [7, 8], "name": ["Lamp", None], "desc": ["d", "e"], "tags": [["a", "b"], []],
                  "img": ["x.jpg", None]}).write_parquet(items)  # fmt: skip
    raw = load_table(inter, items, MAPPING)
    assert raw.interactions.rows() == [("1", "7", 10.0, 4.0, 1), ("2", "8", 5.0, 3.0, 2), ("1", "8", 20.0, 5.0, 3)]
    assert raw.items.to_dicts() == [
        {"item": "7", "title": "Lamp", "desc": "d", "tags": "a, b", "image": "x.jpg"},
        {"item": "8", "title": "8", "desc": "e", "tags": None, "image": None},
    ]


def test_table_iso_dates_and_datetime_column(tmp_path):
    rows = [("a", "x", "2020-01-01T00:00:00", "1"), ("a", "y", "2020-01-02", "1")]
    raw = load_table(write(tmp_path / "i.csv", csv_text(",", rows)), None, MAPPING)
    assert raw.interactions["timestamp"].to_list() == [1577836800.0, 1577923200.0]
    inter = tmp_path / "i.parquet"
    pl.DataFrame({"uid": ["a"], "iid": ["x"], "when": pl.Series([1577836800_500000], dtype=pl.Datetime("us")),
                  "stars": [1.0]}).write_parquet(inter)  # fmt: skip
    assert load_table(inter, None, MAPPING).interactions["timestamp"].to_list() == [1577836800.5]


def test_table_without_time_uses_position_within_user(tmp_path):
    inter = write(tmp_path / "i.csv", csv_text(","))
    raw = load_table(inter, None, TableMapping("uid", "iid"))
    assert raw.interactions["timestamp"].to_list() == [0.0, 0.0, 1.0]
    assert raw.interactions["rating"].null_count() == 3
    assert raw.items is None


def test_table_missing_column(tmp_path):
    inter = write(tmp_path / "i.csv", csv_text(",", header=("uid", "item", "when", "stars")))
    with pytest.raises(DataError, match="missing column 'iid'") as err:
        load_table(inter, None, MAPPING)
    assert (err.value.file, err.value.column) == (str(inter), "iid")
    items = jsonl(tmp_path / "items.jsonl", {"id": "x", "name": "n", "desc": "d", "img": "i"})
    with pytest.raises(DataError, match="missing key 'tags'") as err:
        load_table(write(tmp_path / "ok.csv", csv_text(",")), items, MAPPING)
    assert (err.value.file, err.value.column) == (str(items), "tags")


def test_table_parquet_missing_column_and_corrupt_file(tmp_path):
    inter = tmp_path / "i.parquet"
    pl.DataFrame({"uid": [1], "when": [3]}).write_parquet(inter)
    with pytest.raises(DataError, match="missing column 'iid'") as err:
        load_table(inter, None, MAPPING)
    assert (err.value.file, err.value.column) == (str(inter), "iid")
    corrupt = write(tmp_path / "c.parquet", b"PAR1 not really")
    with pytest.raises(DataError, match="cannot read as parquet") as err:
        load_table(corrupt, None, MAPPING)
    assert err.value.file == str(corrupt)


@pytest.mark.parametrize("value", ["abc", "", "2020-13-45"])
def test_table_bad_timestamp_names_file_row_column(tmp_path, value):
    rows = [ROWS[0], ("b", "y", value, "3"), ROWS[2]]
    inter = write(tmp_path / "i.csv", csv_text(",", rows))
    with pytest.raises(DataError) as err:
        load_table(inter, None, MAPPING)
    assert (err.value.file, err.value.row, err.value.column) == (str(inter), 3, "when")


def test_table_bad_date_among_dates(tmp_path):
    rows = [("a", "x", "2020-01-01", "1"), ("a", "y", "2020-01-02", "1"), ("a", "z", "later", "1")]
    inter = write(tmp_path / "i.csv", csv_text(",", rows))
    with pytest.raises(DataError, match="'later'") as err:
        load_table(inter, None, MAPPING)
    assert (err.value.row, err.value.column) == (4, "when")


def test_table_empty_non_utf8_invalid_json_and_unknown_format(tmp_path):
    empty = write(tmp_path / "i.csv", "")
    with pytest.raises(DataError, match="empty") as err:
        load_table(empty, None, MAPPING)
    assert err.value.file == str(empty)
    latin = write(tmp_path / "l.csv", (csv_text(",") + "\xe9,x,1,1\n").encode("latin-1"))
    with pytest.raises(DataError, match="utf-8") as err:
        load_table(latin, None, MAPPING)
    assert (err.value.file, err.value.row) == (str(latin), 5)
    broken = jsonl(tmp_path / "i.jsonl", {"uid": "a", "iid": "x", "when": 1, "stars": 1}, "{nope")
    with pytest.raises(DataError, match="not valid JSON") as err:
        load_table(broken, None, MAPPING)
    assert (err.value.file, err.value.row) == (str(broken), 2)
    with pytest.raises(DataError, match="unknown table format"):
        load_table(write(tmp_path / "i.xlsx", "x"), None, MAPPING)


def test_table_missing_id_value_and_duplicate_item(tmp_path):
    inter = write(tmp_path / "i.csv", csv_text(",", [ROWS[0], (" ", "y", "5", "3")]))
    with pytest.raises(DataError, match="missing") as err:
        load_table(inter, None, MAPPING)
    assert (err.value.row, err.value.column) == (3, "uid")
    items = write(tmp_path / "items.csv", ITEMS_CSV + "x,Again,d,t,\n")
    with pytest.raises(DataError, match="second time") as err:
        load_table(write(tmp_path / "ok.csv", csv_text(",")), items, MAPPING)
    assert (err.value.file, err.value.row) == (str(items), 4)


@pytest.mark.skipif(not AMAZON_SCI.exists(), reason=f"needs {AMAZON_SCI} (only in ../shared/datasets; not on PyPI)")
def test_table_real_amazon_scientific():
    d = AMAZON_SCI
    mapping = TableMapping("user_id", "item_id", time_col="position", text_cols=["text"])
    raw = load_table(d / "interactions.csv", d / "items.csv", mapping)
    inter = raw.interactions
    assert (inter.height, inter["user"].n_unique(), inter["item"].n_unique()) == (59_384, 8_442, 4_385)
    assert raw.items.height == 4_385
    assert inter.row(0) == ("ABW8NXS7SV55K", "B00TNNWMXI", 0.0, None, 2)
    assert raw.items["text"].null_count() == 0
