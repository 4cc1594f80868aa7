"""`molar recommend --items-file FILE`: only the items the file lists are ranked.

The reference is computed two other ways: the unrestricted ranking of the same command (every item, `-k N`)
filtered to the file's ids, and a numpy ranking of the saved `next` user vectors over the saved item vectors with
every other item left out. A bad file is refused naming the file and its row.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

import molar_core
from molar_core.vectors import load_item_vectors, load_user_vectors
from pipeline.cli import app
from tests.test_recommender import assert_top_k, brute_force

runner = CliRunner()


def _candidates(root, step: int = 4) -> list[int]:
    """Every `step`-th item, in a shuffled order (the file's order must not matter)."""
    n = pl.read_parquet(root / "data/prepared/items.parquet").height
    ids = list(range(3, n + 1, step))
    return [int(i) for i in np.random.default_rng(0).permutation(ids)]


def _restricted(scores: np.ndarray, candidates: list[int]) -> np.ndarray:
    """Reference scores with every item outside `candidates` at -inf."""
    out = np.full_like(scores, -np.inf)
    keep = np.asarray(candidates) - 1
    out[keep] = scores[keep]
    return out


def _run(*args: str) -> str:
    res = runner.invoke(app, ["recommend", *args])
    assert res.exit_code == 0, res.output
    return res.output


def _ranked(path) -> list[tuple[int, float]]:
    table = pl.read_parquet(path).sort("rank")
    return list(zip(table["item_id"].to_list(), table["score"].to_list()))


@pytest.mark.parametrize("model", ["sasrec", "molar"])
def test_one_user_ranks_only_the_files_items(small_workspace, tmp_path, model):
    root = small_workspace
    cands = _candidates(root)
    listed = tmp_path / "candidates.txt"
    listed.write_text("\n".join(map(str, cands[:40])) + "\n\n" + "\n".join(map(str, cands[40:])) + "\n")
    test = pl.read_parquet(root / "data/prepared/test.parquet")
    users = load_user_vectors(root / f"artifacts/{model}/user_vectors.safetensors", "next")
    items = load_item_vectors(root / f"artifacts/{model}/item_vectors.safetensors")
    n = items.shape[0]
    for r in (2, 50):
        row = test.row(r, named=True)
        seq = row["history"] + [row["target"]]
        only, every = tmp_path / f"only-{r}.parquet", tmp_path / f"every-{r}.parquet"
        out = _run("--user", row["raw_user_id"], "-m", model, "-k", "8", "--items-file", str(listed), "--out",
                   str(only), "--root", str(root))
        assert f"over the {len(cands):,} items of {listed}" in " ".join(out.split())
        _run("--user", row["raw_user_id"], "-m", model, "-k", str(n), "--out", str(every), "--root", str(root))
        got = _ranked(only)
        assert len(got) == 8 and {i for i, _ in got} <= set(cands) and not {i for i, _ in got} & set(seq)
        # the unrestricted ranking of every item, filtered to the file's ids: the same items and scores
        assert got == [(i, s) for i, s in _ranked(every) if i in set(cands)][:8]
        assert_top_k(got, _restricted(brute_force(users[r], items, seq), cands), 8)


def test_every_user_and_a_history_rank_only_the_files_items(small_workspace, tmp_path):
    root, model = small_workspace, "content"
    cands = _candidates(root, step=3)
    table = tmp_path / "candidates.parquet"
    pl.DataFrame({"title": [f"x{i}" for i in cands], "item_id": cands}).write_parquet(table)
    out = tmp_path / "recs.parquet"
    _run("--all", "--out", str(out), "-m", model, "-k", "6", "--items-file", str(table), "--root", str(root))
    recs = pl.read_parquet(out)
    test = pl.read_parquet(root / "data/prepared/test.parquet")
    assert recs.height == test.height * 6 and set(recs["item_id"].to_list()) <= set(cands)
    users = load_user_vectors(root / f"artifacts/{model}/user_vectors.safetensors", "next")
    items = load_item_vectors(root / f"artifacts/{model}/item_vectors.safetensors")
    for r, row in enumerate(test.iter_rows(named=True)):
        got = recs.filter(pl.col("user_id") == row["user_id"]).sort("rank")
        assert_top_k(list(zip(got["item_id"].to_list(), got["score"].to_list())),
                     _restricted(brute_force(users[r], items, row["history"] + [row["target"]]), cands), 6)

    # a csv file for an ad-hoc history; items of the history and items outside the file are never listed
    listed = tmp_path / "candidates.csv"
    listed.write_text("item_id\n" + "\n".join(map(str, [12, 55, 301, 12, 7, 40])) + "\n")
    hist = tmp_path / "history.parquet"
    _run("--history", "12,55,9", "-m", model, "-k", "10", "--items-file", str(listed), "--out", str(hist), "--root",
         str(root))
    expected = molar_core.load(root / f"artifacts/{model}").recommend([12, 55, 9], k=10, candidates=[301, 7, 40])
    assert _ranked(hist) == [(i, pytest.approx(s, abs=1e-6)) for i, s in expected]
    assert sorted(i for i, _ in _ranked(hist)) == [7, 40, 301]  # fewer than k: every unseen candidate


def test_a_bad_items_file_is_refused_naming_the_file_and_row(small_workspace, tmp_path):
    root = str(small_workspace)
    n = pl.read_parquet(small_workspace / "data/prepared/items.parquet").height

    def fails(name: str, content: str | pl.DataFrame, *args: str) -> str:
        path = tmp_path / name
        if isinstance(content, pl.DataFrame):
            content.write_parquet(path)
        else:
            path.write_text(content)
        res = runner.invoke(app, ["recommend", *(args or ("--user", "1")), "-m", "molar", "--items-file", str(path),
                                  "--root", root])
        assert res.exit_code == 1, res.output
        return " ".join(res.output.split())

    catalogue = f"not in the catalogue of molar (prepared ids are 1..{n})"
    assert f"unknown.txt, row 4: item id {n + 1} is {catalogue}" in fails("unknown.txt", f"1\n2\n\n{n + 1}\n")
    assert f"zero.txt, row 2: item id 0 is {catalogue}" in fails("zero.txt", "5\n0\n", "--history", "3,4")
    assert "word.txt, row 2: 'abc' is not an item id" in fails("word.txt", "1\nabc\n")
    assert (f"unknown.csv, row 3, column 'item_id': item id {n + 7} is {catalogue}"
            in fails("unknown.csv", f"item_id,note\n4,a\n{n + 7},b\n", "--all", "--out", str(tmp_path / "o.csv")))
    assert "blank.csv, row 3, column 'item_id': a missing value is not an item id" in fails(
        "blank.csv", "item_id,note\n4,a\n,b\n")
    assert "float.csv, row 2, column 'item_id': '4.5' is not an item id" in fails("float.csv", "item_id\n4.5\n")
    assert (f"unknown.parquet, row 3, column 'item_id': item id -2 is {catalogue}"
            in fails("unknown.parquet", pl.DataFrame({"item_id": [1, 2, -2]})))
    assert "nocol.csv, column 'item_id': no column 'item_id' (columns present: id)" in fails("nocol.csv", "id\n4\n")
    assert "empty.txt: file is empty" in fails("empty.txt", "\n\n")
    assert "header.csv: file has a header but no rows" in fails("header.csv", "item_id\n")
    assert "list.json: use a .txt file" in fails("list.json", "[1, 2]")
    res = runner.invoke(app, ["recommend", "--user", "1", "--items-file", str(tmp_path / "missing.txt"), "--root",
                              root])
    assert res.exit_code == 1 and "missing.txt: file not found" in res.output
