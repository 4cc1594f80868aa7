"""Property-based bad data (hypothesis) through the real prepare stage: whatever the rows, prepare either fails
with a DataError that names the file, or writes stats.json where kept + dropped = input rows, and the prepared
sequences hold exactly the kept interactions. Clean data in every source format always succeeds, dropping nothing.

Generated: unicode and huge ids, duplicate rows, timestamps out of order or unparseable, empty fields, users
with one interaction, items with no interactions, a missing or renamed column.

With MOLAR_CI=1 (set by .ci/run) the examples are derandomized: a CI run tries the same cases every time.
"""

from __future__ import annotations

import csv
import json
import os
import random
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


SETTINGS = settings(max_examples=40, deadline=None, derandomize=os.environ.get("MOLAR_CI") == "1",
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


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
    params, file, n = _write_table(tmp, rows, header)
    _check(_prepare(params, tmp), tmp, file, n)


@SETTINGS
@given(rows=st.lists(row, min_size=12, max_size=80), how=corruption, drop_time=st.booleans())
def test_recbole_atomic_rows(tmp_path_factory, rows, how, drop_time):
    tmp = tmp_path_factory.mktemp("recbole")
    rows = _corrupt(rows, how)
    params, file, n = _write_recbole(tmp, rows, drop_time)
    _check(_prepare(params, tmp), tmp, file, n)


@SETTINGS
@given(rows=st.lists(row, min_size=12, max_size=80), how=corruption, rating=st.integers(1, 5))
def test_movielens_grouplens_rows(tmp_path_factory, rows, how, rating):
    tmp = tmp_path_factory.mktemp("ml")
    rows = _corrupt(rows, how)
    params, file, n = _write_movielens(tmp, rows, rating, unknown_item=True)
    _check(_prepare(params, tmp), tmp, file, n, (file.parent / "u.item",))


@SETTINGS
@given(rows=st.lists(row, min_size=12, max_size=80), how=corruption, broken_line=st.booleans())
def test_amazon_reviews_rows(tmp_path_factory, rows, how, broken_line):
    tmp = tmp_path_factory.mktemp("amazon")
    rows = _corrupt(rows, how)
    params, file, n = _write_amazon(tmp, rows, broken_line)
    _check(_prepare(params, tmp), tmp, file, n)


# clean data: each user a few distinct items at distinct, parseable times; ids without separators of any format
clean_ids = st.one_of(st.sampled_from(["i1", "i2", "i3", "i4", "i5"]), st.integers(0, 10**18).map(str),
                      st.text(st.characters(whitelist_categories=("L",)), min_size=1, max_size=8))
clean_data = st.dictionaries(users, st.lists(clean_ids, min_size=3, max_size=8, unique=True), min_size=1, max_size=6)
WRITERS = {"table": lambda tmp, rows: _write_table(tmp, rows, "user_id,item_id,timestamp"),
           "recbole_atomic": lambda tmp, rows: _write_recbole(tmp, rows, False),
           "movielens": lambda tmp, rows: _write_movielens(tmp, rows, 4, unknown_item=False),
           "amazon2023": lambda tmp, rows: _write_amazon(tmp, rows, False)}


@pytest.mark.parametrize("source", list(WRITERS))
@SETTINGS
@given(data=clean_data, start=st.integers(0, 2**40), seed=st.integers(0, 2**16))
def test_clean_rows_succeed_and_keep_everything(tmp_path_factory, source, data, start, seed):
    """Without the corruptions above, every source format prepares: no error, no row dropped, no user lost."""
    tmp = tmp_path_factory.mktemp(f"clean-{source}")
    rows = [(u, i, str(start + k)) for k, (u, i) in enumerate((u, i) for u, its in data.items() for i in its)]
    random.Random(seed).shuffle(rows)  # file order is not time order
    params, file, n = WRITERS[source](tmp, rows)
    outcome = _prepare(params, tmp)
    assert outcome is None, outcome
    _check(outcome, tmp, file, n)
    stats = json.loads((tmp / "data/prepared/stats.json").read_text())
    assert stats["rows"]["kept"] == len(rows) and not any(stats["rows"]["dropped"].values())
    assert stats["users"] == len(data) and stats["items"] == len({i for its in data.values() for i in its})


def _write_table(tmp: Path, rows: list[tuple], header: str) -> tuple[PrepareParams, Path, int]:
    file = tmp / "interactions.csv"
    with open(file, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header.split(","))
        for r in rows:
            w.writerow(r[: len(header.split(","))])
    params = PrepareParams(source="table", table={"interactions": str(file), "time_col": "timestamp"},
                           k_core_user=1)
    return params, file, len(rows)


def _write_recbole(tmp: Path, rows: list[tuple], drop_time: bool) -> tuple[PrepareParams, Path, int]:
    d = tmp / "bad"
    d.mkdir()
    file = d / "bad.inter"
    head = ["user_id:token", "item_id:token"] + ([] if drop_time else ["timestamp:float"])
    lines = ["\t".join(head)] + ["\t".join(r[: len(head)]) for r in rows]
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return PrepareParams(source="recbole_atomic", path=str(d), k_core_user=1), file, len(rows)


def _write_movielens(tmp: Path, rows: list[tuple], rating: int, unknown_item: bool) -> tuple[PrepareParams, Path, int]:
    d = tmp / "ml"
    d.mkdir()
    file = d / "u.data"
    file.write_bytes("".join(f"{u}\t{i}\t{rating}\t{t}\n" for u, i, t in rows).encode("utf-8"))
    known = sorted({i for _, i, _ in rows if i and "|" not in i and "\n" not in i})
    known = known[:-1] if unknown_item else known  # the last one unknown
    flags = "|".join(["0"] * 19)
    (d / "u.item").write_bytes("".join(f"{i}|Title {k} (1995)|01-Jan-1995||http://x/{k}|{flags}\n"
                                       for k, i in enumerate(known)).encode("utf-8"))
    return PrepareParams(source="movielens", path=str(d), k_core_user=1), file, len(rows)


def _write_amazon(tmp: Path, rows: list[tuple], broken_line: bool) -> tuple[PrepareParams, Path, int]:
    file = tmp / "reviews.jsonl"
    lines = [json.dumps({"user_id": u, "parent_asin": i, "rating": 5.0, "timestamp": t}) for u, i, t in rows]
    if broken_line:
        lines.insert(len(lines) // 2, '{"user_id": "u1", "parent_asin": ')
    file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return PrepareParams(source="amazon2023", amazon={"reviews": str(file)}, k_core_user=1), file, len(lines)
