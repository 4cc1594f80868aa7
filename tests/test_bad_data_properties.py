"""Property-based bad data (hypothesis) through the real prepare stage: whatever the rows, prepare either fails
with a DataError that names the file, or writes stats.json where kept + dropped = input rows, and the prepared
sequences hold exactly the kept interactions.

Generated: unicode and huge ids, duplicate rows, timestamps out of order or unparseable, empty fields, users
with one interaction, items with no interactions, a missing or renamed column.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from molar_core.errors import DataError
from pipeline.params import PrepareParams
from stages import prepare

pytestmark = pytest.mark.slow

ids = st.one_of(st.integers(0, 10**18).map(str), st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1,
                                                            max_size=8).filter(lambda s: s.strip() == s))
users = st.sampled_from(["u1", "u2", "ü3", "用户4", "5", "6"])
items = st.one_of(st.sampled_from(["i1", "i2", "i3", "i4", "i5"]), ids)
row = st.tuples(users, items, st.integers(0, 2**40).map(str))  # valid rows; timestamps in any order
# at most one corruption per case, so that most cases get past it and exercise the filters
corruption = st.one_of(st.none(), st.none(), st.none(),
                       st.tuples(st.sampled_from(["stamp", "empty_user", "empty_item"]), st.integers(0, 10**6),
                                 st.sampled_from(["", "not-a-time", "2024-01-01", "1e3", "-5"])))


def _corrupt(rows: list[tuple], how) -> list[tuple]:
    if how is None or not rows:
        return rows
    kind, at, value = how
    i = at % len(rows)
    u, it, t = rows[i]
    rows = list(rows)
    rows[i] = (u, it, value) if kind == "stamp" else ("", it, t) if kind == "empty_user" else (u, "", t)
    return rows


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _check(outcome, tmp: Path, file: Path, n_rows: int, other_files: tuple[Path, ...] = ()) -> None:
    if isinstance(outcome, DataError):  # the error names the dataset file at fault
        assert any(str(f) in str(outcome) for f in (file, *other_files)), outcome
        return
    stats = json.loads((tmp / "data/prepared/stats.json").read_text())
    rows = stats["rows"]
    assert rows["input"] == n_rows
    assert rows["input"] == rows["kept"] + sum(rows["dropped"].values())
    train = pl.read_parquet(tmp / "data/prepared/train.parquet")
    test = pl.read_parquet(tmp / "data/prepared/test.parquet")
    assert sum(len(s) for s in train["items"].to_list()) + 2 * test.height == rows["kept"]


def _prepare(params: PrepareParams, root: Path):
    try:
        prepare.run(params, root)
    except DataError as err:
        return err
    return None


@SETTINGS
@given(rows=st.lists(row, min_size=12, max_size=80), how=corruption,
       header=st.sampled_from(["user_id,item_id,timestamp"] * 4 + ["user_id,item,timestamp", "user_id,item_id"]),
       duplicate=st.booleans())
def test_table_csv_rows(tmp_path_factory, rows, how, header, duplicate):
    tmp = tmp_path_factory.mktemp("table")
    rows = _corrupt(rows + rows[:5] if duplicate else rows, how)
    file = tmp / "interactions.csv"
    with open(file, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header.split(","))
        for r in rows:
            w.writerow(r[: len(header.split(","))])
    params = PrepareParams(source="table", table={"interactions": str(file), "time_col": "timestamp"},
                           k_core_user=1)
    _check(_prepare(params, tmp), tmp, file, len(rows))


@SETTINGS
@given(rows=st.lists(row, min_size=12, max_size=80), how=corruption, drop_time=st.booleans())
def test_recbole_atomic_rows(tmp_path_factory, rows, how, drop_time):
    tmp = tmp_path_factory.mktemp("recbole")
    rows = _corrupt(rows, how)
    d = tmp / "bad"
    d.mkdir()
    file = d / "bad.inter"
    head = ["user_id:token", "item_id:token"] + ([] if drop_time else ["timestamp:float"])
    lines = ["\t".join(head)] + ["\t".join(r[: len(head)]) for r in rows]
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    params = PrepareParams(source="recbole_atomic", path=str(d), k_core_user=1)
    _check(_prepare(params, tmp), tmp, file, len(rows))


@SETTINGS
@given(rows=st.lists(row, min_size=12, max_size=80), how=corruption, rating=st.integers(1, 5))
def test_movielens_grouplens_rows(tmp_path_factory, rows, how, rating):
    tmp = tmp_path_factory.mktemp("ml")
    d = tmp / "ml"
    d.mkdir()
    rows = _corrupt(rows, how)
    file = d / "u.data"
    file.write_bytes("".join(f"{u}\t{i}\t{rating}\t{t}\n" for u, i, t in rows).encode("utf-8"))
    known = sorted({i for _, i, _ in rows if i and "|" not in i and "\n" not in i})[:-1]  # the last one unknown
    flags = "|".join(["0"] * 19)
    (d / "u.item").write_bytes("".join(f"{i}|Title {k} (1995)|01-Jan-1995||http://x/{k}|{flags}\n"
                                       for k, i in enumerate(known)).encode("utf-8"))
    params = PrepareParams(source="movielens", path=str(d), k_core_user=1)
    _check(_prepare(params, tmp), tmp, file, len(rows), (d / "u.item",))


@SETTINGS
@given(rows=st.lists(row, min_size=12, max_size=80), how=corruption, broken_line=st.booleans())
def test_amazon_reviews_rows(tmp_path_factory, rows, how, broken_line):
    tmp = tmp_path_factory.mktemp("amazon")
    rows = _corrupt(rows, how)
    file = tmp / "reviews.jsonl"
    lines = [json.dumps({"user_id": u, "parent_asin": i, "rating": 5.0, "timestamp": t}) for u, i, t in rows]
    if broken_line:
        lines.insert(len(lines) // 2, '{"user_id": "u1", "parent_asin": ')
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    params = PrepareParams(source="amazon2023", amazon={"reviews": str(file)}, k_core_user=1)
    _check(_prepare(params, tmp), tmp, file, len(lines))
