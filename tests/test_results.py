"""Using the results: `molar recommend`, `molar inspect index|checkpoint`, the popularity breakdown and `molar report`.

Recommendations are compared with an exact torch ranking of the saved vectors; the report is opened in headless
Chromium (no console errors, every image loads, no network request).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from molar_core.index import build_index, save_index
from molar_core.vectors import load_item_vectors, load_user_vectors
from pipeline.cli import app
from tests.conftest import ML100K_POSTERS

runner = CliRunner()


def _reference_top_k(root, model, k):
    """Exact top-k by torch over the saved `next` user vectors, the whole known sequence excluded."""
    items = torch.from_numpy(load_item_vectors(root / f"artifacts/{model}/item_vectors.safetensors"))
    users = torch.from_numpy(load_user_vectors(root / f"artifacts/{model}/user_vectors.safetensors", "next"))
    test = pl.read_parquet(root / "data/prepared/test.parquet")
    scores = users @ items.T
    for r, (h, t) in enumerate(zip(test["history"].to_list(), test["target"].to_list())):
        scores[r, [i - 1 for i in h + [t]]] = -float("inf")
    top = torch.topk(scores, k)
    return test, top.indices.numpy() + 1, top.values.numpy(), scores.numpy()


@pytest.mark.parametrize("model", ["sasrec", "molar"])
def test_recommend_all_matches_exact_ranking(small_workspace, tmp_path, model):
    out = tmp_path / "recs.parquet"
    res = runner.invoke(app, ["recommend", "--all", "--out", str(out), "-m", model, "-k", "7",
                              "--root", str(small_workspace)])
    assert res.exit_code == 0, res.output
    recs = pl.read_parquet(out)
    test, ref_ids, ref_scores, all_scores = _reference_top_k(small_workspace, model, 7)
    assert recs.height == test.height * 7
    got = recs.sort("user_id", "rank")
    ids, scores = got["item_id"].to_numpy().reshape(-1, 7), got["score"].to_numpy().reshape(-1, 7)
    # the same top-7 scores; each listed item has exactly that score and is unseen (-inf marks seen items)
    assert np.allclose(scores, ref_scores, atol=1e-5)
    assert np.allclose(np.take_along_axis(all_scores, ids - 1, axis=1), scores, atol=1e-5)
    # items differ from the exact ranking only among near-ties (the tiny Molar model's cosines are close)
    assert (ids == ref_ids).mean() > 0.9
    titles = dict(pl.read_parquet(small_workspace / "data/prepared/items.parquet").select("item_id", "title").iter_rows())
    assert got["title"].to_list() == [titles[i] for i in got["item_id"].to_list()]


def test_recommend_csv_and_include_seen(small_workspace, tmp_path):
    out = tmp_path / "recs.csv"
    res = runner.invoke(app, ["recommend", "--all", "--out", str(out), "-m", "sasrec", "-k", "50", "--include-seen",
                              "--root", str(small_workspace)])
    assert res.exit_code == 0, res.output
    recs = pl.read_csv(out, schema_overrides={"raw_user_id": pl.String, "raw_item_id": pl.String})
    test = pl.read_parquet(small_workspace / "data/prepared/test.parquet")
    seen = {u: set(h) | {t} for u, h, t in test.select("user_id", "history", "target").iter_rows()}
    # without masking, some top-50 items are ones the user has seen (SASRec scores them high)
    assert any(i in seen[u] for u, i in recs.select("user_id", "item_id").iter_rows())


def test_recommend_one_user_prints_titles(small_workspace):
    test, ref_ids, _, _ = _reference_top_k(small_workspace, "content", 3)
    user = test["raw_user_id"][4]
    res = runner.invoke(app, ["recommend", "--user", user, "-m", "content", "-k", "3", "--root", str(small_workspace)])
    assert res.exit_code == 0, res.output
    titles = dict(pl.read_parquet(small_workspace / "data/prepared/items.parquet").select("item_id", "title").iter_rows())
    for item in ref_ids[4]:
        assert titles[int(item)][:20] in res.output


def test_recommend_bad_input_says_what_to_do(small_workspace, tmp_path):
    root = str(small_workspace)
    res = runner.invoke(app, ["recommend", "--user", "no-such-user", "--root", root])
    assert res.exit_code == 1 and "unknown user id 'no-such-user'" in res.output and "test.parquet" in res.output
    res = runner.invoke(app, ["recommend", "--user", "1", "-m", "hybrid", "--root", root])
    assert res.exit_code == 1 and "dvc repro train@hybrid" in res.output
    res = runner.invoke(app, ["recommend", "--all", "--root", root])
    assert res.exit_code == 1 and "--out" in res.output
    res = runner.invoke(app, ["recommend", "--user", "1", "--root", str(tmp_path)])  # nothing has run here
    assert res.exit_code == 1 and "dvc repro train@molar" in res.output


def test_recommend_from_a_copied_checkpoint(small_workspace, tmp_path):
    """A model directory copied elsewhere works with the prepared data it was trained on, and only with it."""
    ckpt = tmp_path / "elsewhere" / "molar"
    shutil.copytree(small_workspace / "artifacts/molar", ckpt)
    prepared = small_workspace / "data/prepared"
    out = tmp_path / "recs.parquet"
    res = runner.invoke(app, ["recommend", "--all", "--out", str(out), "--checkpoint", str(ckpt), "--prepared",
                              str(prepared), "--root", str(tmp_path)])
    assert res.exit_code == 0, res.output
    in_place = tmp_path / "in_place.parquet"
    runner.invoke(app, ["recommend", "--all", "--out", str(in_place), "-m", "molar", "--root", str(small_workspace)])
    assert pl.read_parquet(out).equals(pl.read_parquet(in_place))

    res = runner.invoke(app, ["recommend", "--user", "1", "--checkpoint", str(ckpt), "--root", str(tmp_path)])
    assert res.exit_code == 1 and "--prepared" in res.output

    other = tmp_path / "other"
    shutil.copytree(prepared, other)
    items = pl.read_parquet(other / "items.parquet")
    items.with_columns(pl.col("title").str.to_uppercase()).write_parquet(other / "items.parquet")
    res = runner.invoke(app, ["recommend", "--user", "1", "--checkpoint", str(ckpt), "--prepared", str(other)])
    assert res.exit_code == 1 and "another items table" in res.output

    conf = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**conf, "format_version": 1}))
    res = runner.invoke(app, ["recommend", "--user", "1", "--checkpoint", str(ckpt), "--prepared", str(prepared)])
    assert res.exit_code == 1 and "checkpoint format 1" in res.output and "retrain" in res.output


def test_inspect_index_recall_against_exact(small_workspace, tmp_path):
    res = runner.invoke(app, ["inspect", "index", "sasrec", "--root", str(small_workspace)])
    assert res.exit_code == 0, res.output
    assert "IndexFlatIP" in res.output and "1.0000" in res.output
    # an approximate index probing 1 of 64 lists misses part of the exact top-10
    ws = tmp_path / "ws"
    shutil.copytree(small_workspace, ws)
    vecs = load_item_vectors(ws / "artifacts/sasrec/item_vectors.safetensors")
    index, info = build_index(vecs, "IVF64,Flat", nprobe=1)
    save_index(index, ws / "artifacts/index/sasrec.faiss")
    (ws / "artifacts/index/sasrec.json").write_text(json.dumps(info))
    res = runner.invoke(app, ["inspect", "index", "sasrec", "--root", str(ws)])
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if "recall@10" in x)
    assert "IVF64,Flat" in res.output and float(line.split("│")[2].split()[0]) < 0.9


def test_inspect_checkpoint_by_name_and_by_directory(small_workspace):
    res = runner.invoke(app, ["inspect", "checkpoint", "molar", "--root", str(small_workspace)])
    assert res.exit_code == 0, res.output
    conf = json.loads(res.output)
    assert conf["format_version"] == 2 and conf["data"]["num_users"] == 120 and conf["parameters"] > 0
    res = runner.invoke(app, ["inspect", "checkpoint", str(small_workspace / "artifacts/sasrec")])
    assert res.exit_code == 0 and json.loads(res.output)["model"] == "sasrec"


def test_popularity_breakdown_matches_a_recount(small_workspace):
    """plots/evaluate/ndcg_by_popularity.csv against popularity counted here from train.parquet."""
    train = pl.read_parquet(small_workspace / "data/prepared/train.parquet")
    counts = Counter(i for seq in train["items"].to_list() for i in seq)
    test = pl.read_parquet(small_workspace / "data/prepared/test.parquet")
    per_user = pl.read_parquet(small_workspace / "metrics/per_user.parquet").filter(pl.col("split") == "test")
    plot = pl.read_csv(small_workspace / "plots/evaluate/ndcg_by_popularity.csv")
    edges = [(0, 0, "0"), (1, 9, "1-9"), (10, 49, "10-49"), (50, 99, "50-99"), (100, 199, "100-199"), (200, 10**9, "200+")]
    target = dict(zip(test["user_id"].to_list(), test["target"].to_list()))
    for model in ("sasrec", "molar"):
        rows = per_user.filter(pl.col("model") == model)
        for lo, hi, label in edges:
            vals = [n for u, n in zip(rows["user_id"].to_list(), rows["ndcg@10"].to_list())
                    if lo <= counts.get(target[u], 0) <= hi]
            got = plot.filter((pl.col("model") == model) & (pl.col("popularity_bucket") == label))
            if not vals:
                assert got.height == 0
                continue
            assert got["users"][0] == len(vals) and abs(got["ndcg@10"][0] - float(np.mean(vals))) < 1e-9


def test_report_is_self_contained(small_workspace, tmp_path):
    out = tmp_path / "report.html"
    res = runner.invoke(app, ["report", "--out", str(out), "--users", "3", "--root", str(small_workspace)])
    assert res.exit_code == 0, res.output
    page = out.read_text()
    metrics = json.loads((small_workspace / "metrics/metrics.json").read_text())
    for model in ("sasrec", "content", "molar"):
        assert f"{metrics[model]['test']['ndcg@10']:.4f}" in page
    assert page.count('class="user"') == 3 and page.count("<svg") == 4
    if ML100K_POSTERS.is_dir():  # posters inlined; without them (clean clone: text-only items) a placeholder
        assert "data:image/jpeg;base64," in page
    else:
        assert "data:image/" not in page and 'class="noimg"' in page
    for remote in ('src="http', "href=\"http", "<script src", "<link "):
        assert remote not in page


def test_report_before_evaluate_names_the_stage(tmp_path, ml_small):
    from stages import prepare
    from tests.conftest import small_params

    prepare.run(small_params(ml_small).prepare, tmp_path)
    res = runner.invoke(app, ["report", "--root", str(tmp_path)])
    assert res.exit_code == 1 and "metrics.json" in res.output and "dvc repro evaluate" in res.output


def _browser_or_skip():
    from molar_core.errors import MolarError
    from pipeline.browser import chromium_path

    try:
        import playwright  # noqa: F401
        chromium_path()
    except (ImportError, MolarError) as err:
        if os.environ.get("MOLAR_REQUIRE_BROWSER"):
            raise
        pytest.skip(f"no headless browser here ({err}); CI sets MOLAR_REQUIRE_BROWSER=1 and installs one")


def test_report_renders_in_headless_chromium(small_workspace, tmp_path):
    _browser_or_skip()
    from PIL import Image

    from pipeline.browser import render

    out, shot = tmp_path / "report.html", tmp_path / "report.png"
    res = runner.invoke(app, ["report", "--out", str(out), "--users", "2", "--root", str(small_workspace)])
    assert res.exit_code == 0, res.output
    check = render(out, shot)
    assert check.title == "molar report"
    assert check.console_errors == [] and check.failed_requests == []
    assert check.broken_images == []
    assert check.images > 20 if ML100K_POSTERS.is_dir() else check.images == 0  # no posters: text-only items
    with Image.open(shot) as im:
        assert im.width == 1280 and im.height > 1500
