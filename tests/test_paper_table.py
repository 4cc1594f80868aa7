"""bench/paper_table.py and bench/sweep.py's --pairs on hand-built sweep folders: constant per-user differences
make the pooled difference, its relative gain and the verdict computable by hand (a constant difference has a
zero-width bootstrap interval; one alternating around 0 has an interval containing 0)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from bench import paper_table, sweep
from bench.common import CONFIGS, bench_params
from pipeline.params import ParamsError

USERS = 200
SHIFT = {0: 0.02, 1: 0.04}  # molar − content, per seed: pooled over the two seeds (same user count) 0.03


def _write(folder: Path, seed: int, model: str, values: np.ndarray) -> None:
    """One result JSON in the layout bench/sweep.py's train_and_score writes."""
    f = folder / f"seed{seed}" / "results" / f"{model}.json"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({"seed": seed, "model": model, "ndcg@10": float(values.mean()),
                             "per_user_ndcg@10": values.tolist(), "valid_ndcg@10": 0.1, "train_s": 1.0,
                             "machine": {"cpu": "test cpu", "cpus": 2}, "commit": "0" * 40, "dirty": False}))


def _sweep(folder: Path) -> dict[int, dict[str, np.ndarray]]:
    """molar = sasrec − 0.05 (below), molar = content + SHIFT (above), molar_bce − content_bce = ±0.1 alternating
    (straddles 0), molar_direct only in seed 0 (content + 0.01); molar_joint nowhere."""
    made = {}
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        sasrec = rng.uniform(0.3, 0.7, USERS)
        m = {"sasrec": sasrec, "molar": sasrec - 0.05, "content": sasrec - 0.05 - SHIFT[seed],
             "content_bce": rng.uniform(0.2, 0.6, USERS)}
        m["molar_bce"] = m["content_bce"] + np.where(np.arange(USERS) % 2 == 0, 0.1, -0.1)
        if seed == 0:
            m["molar_direct"] = m["content"] + 0.01
        for model, values in m.items():
            _write(folder, seed, model, values)
        made[seed] = m
    (folder / "seed0" / "params.yaml").write_text("train_id:\n  loss: ce\nembed:\n  encoder: sentence\n")
    return made


def _row(rows, claim, a, b):
    [row] = [r for r in rows if r["claim"] == claim and r.get("a") == a and r.get("b") == b]
    return row


def test_sweep_pairs_pool_seeds(tmp_path, capsys):
    made = _sweep(tmp_path / "sw")
    out = sweep.report([tmp_path / "sw"], ["sasrec"], [("molar", "content"), ("molar_direct", "content"),
                                                      ("molar_joint", "content")])
    by = {(r["a"], r["b"]): r for r in out}
    pooled_content = np.concatenate([made[0]["content"], made[1]["content"]]).mean()
    assert by["molar", "content"]["diff"] == pytest.approx(0.03)
    assert by["molar", "content"]["seeds"] == [0, 1] and by["molar", "content"]["users_pooled"] == 2 * USERS
    assert by["molar", "content"]["relative"] == pytest.approx(0.03 / pooled_content)
    assert 0.02 - 1e-9 <= by["molar", "content"]["ci_low"] < by["molar", "content"]["ci_high"] <= 0.04 + 1e-9
    # molar_direct exists for seed 0 only: the pair uses that seed alone
    assert by["molar_direct", "content"]["seeds"] == [0]
    assert by["molar_direct", "content"]["diff"] == pytest.approx(0.01)
    assert ("molar_joint", "content") not in by
    printed = capsys.readouterr().out
    assert "| molar − content | 0 1 |" in printed and "| molar_joint − content | none with both |" in printed


def test_paper_table_numbers_and_verdicts(tmp_path):
    made = _sweep(tmp_path / "sw")
    res = paper_table.main(["--sweep", f"ML={tmp_path / 'sw'}", "--out", str(tmp_path / "table"),
                            "--min-seeds", "2"])
    rows = res["rows"]
    sasrec = np.concatenate([made[0]["sasrec"], made[1]["sasrec"]]).mean()
    content = np.concatenate([made[0]["content"], made[1]["content"]]).mean()

    above = _row(rows, "alignment", "molar", "content")  # constant +0.02 / +0.04: interval [0.02, 0.04]
    assert above["relative"] == pytest.approx(0.03 / content)
    assert above["relative_low"] > 0 and above["replicates"] == "yes"
    below = _row(rows, "vs_sasrec", "molar", "sasrec")  # constant −0.05: a zero-width interval below 0
    assert below["relative"] == pytest.approx(-0.05 / sasrec)
    assert below["relative_low"] == pytest.approx(-0.05 / sasrec)
    assert below["relative_high"] == pytest.approx(-0.05 / sasrec) and below["replicates"] == "no"
    straddle = _row(rows, "alignment", "molar_bce", "content_bce")  # ±0.1 alternating: mean 0
    assert straddle["diff"] == pytest.approx(0.0, abs=1e-12)
    assert straddle["ci_low"] < 0 < straddle["ci_high"] and straddle["replicates"] == "not resolved"
    assert _row(rows, "content_vs_sasrec", "content", "sasrec")["diff"] == pytest.approx(-0.08)
    assert not [r for r in rows if r.get("a") == "molar_joint"]  # not in the folder: no row
    assert not [r for r in rows if r.get("a") == "molar_direct"]  # one seed of the two asked for: left out, named
    assert res["folders"]["ML"]["fewer_seeds"] == ["molar_direct − content (seeds 0)",
                                                   "molar_direct − sasrec (seeds 0)"]
    for claim in ("image", "stage1"):
        [r] = [r for r in rows if r["claim"] == claim]
        assert r["here"] is None and r["replicates"] == paper_table.NOT_MEASURED

    # the paper's side: relative gains from its NDCG@10 (alignment 0.0197 vs 0.0182 on PixelRec: +8.2%)
    assert above["paper"] == [{"dataset": "PixelRec", "a": 0.0197, "b": 0.0182,
                               "relative": pytest.approx(0.0824, abs=1e-4)}]
    assert [round(p["relative"], 3) for p in below["paper"]] == [0.584, 0.504, 0.303]

    # conditions, and the files beside
    written = json.loads((tmp_path / "table" / "paper_table.json").read_text())
    assert written["rows"] == json.loads(json.dumps(rows))
    assert written["folders"]["ML"]["seeds"] == [0, 1]
    assert written["folders"]["ML"]["settings"]["train_id.loss"] == "ce"
    assert written["folders"]["ML"]["commits"] == ["0" * 40]
    assert len(written["made"]["commit"]) == 40 and written["made"]["date"] and written["made"]["machine"]["cpus"]
    md = (tmp_path / "table" / "paper_table.md").read_text()
    assert "| ML: molar − sasrec | 0 1 | " in md and f"{-0.05 / sasrec:+.1%}" in md and "| no |" in md
    assert "  - left out, fewer than 2 seeds so far: molar_direct − content (seeds 0); molar_direct − sasrec" in md
    short = paper_table.summary(written)  # the README's form of the same rows
    assert short.startswith("| claim | paper: relative NDCG@10 gain | A − B | ML |\n")
    assert (f"| molar − content | {0.03 / content:+.1%} [{above['relative_low']:+.1%}, "
            f"{above['relative_high']:+.1%}], 2 seeds: yes |") in short
    assert ("| Molar vs SASRec | MovieLens-1M +58.4%; PixelRec +50.4%; Amazon clothing +30.3% | molar − sasrec |"
            in short)
    assert f"| text and image vs text only | PixelRec +8.8% | {paper_table.NOT_MEASURED} |  |" in short


def test_summary_puts_each_folder_in_its_own_column(tmp_path):
    """Two folders: a pair both hold fills both cells of its row; a pair only one holds leaves the other empty."""
    _sweep(tmp_path / "a")
    _sweep(tmp_path / "b")
    for seed in (0, 1):
        (tmp_path / "b" / f"seed{seed}" / "results" / "molar_bce.json").unlink()
    res = paper_table.main(["--sweep", f"A={tmp_path / 'a'}", f"B={tmp_path / 'b'}", "--min-seeds", "1",
                            "--out", str(tmp_path / "table")])
    table = [[c.strip() for c in line.split("|")[1:-1]] for line in paper_table.summary(res).splitlines()]
    rows = {cells[2]: cells[3:] for cells in table}
    assert rows["A − B"] == ["A", "B"]
    [both] = [r for r in res["rows"] if (r["claim"], r.get("a"), r["here"]) == ("alignment", "molar", "A")]
    cell = f"{both['relative']:+.1%} [{both['relative_low']:+.1%}, {both['relative_high']:+.1%}], 2 seeds: yes"
    assert rows["molar − content"] == [cell, cell]
    assert rows["molar_direct − content"][0].endswith(", 1 seed: yes")
    assert rows["molar_bce − content_bce"][0].endswith("2 seeds: not resolved")
    assert rows["molar_bce − content_bce"][1] == ""


def test_ablation_rows(tmp_path):
    """image_stage1 − text_stage1 on the ablation's Molar models, users matched by id (stored in other orders)."""
    _sweep(tmp_path / "sw")
    rng = np.random.default_rng(3)
    text = rng.uniform(0.1, 0.5, 50)
    for arm, values, order in (("text_stage1", text, np.arange(50)),
                               ("image_stage1", text + 0.03, np.arange(50)[::-1])):
        f = tmp_path / "ab" / "seed0" / arm / "metrics" / "per_user.parquet"
        f.parent.mkdir(parents=True)
        pl.DataFrame({"model": ["molar"] * 50 + ["content"] * 50, "split": "test",
                      "user_id": np.concatenate([order, order]) + 1,
                      "ndcg@10": np.concatenate([values[order], np.zeros(50)])}).write_parquet(f)
    res = paper_table.main(["--sweep", f"ML={tmp_path / 'sw'}", "--ablation", f"ML={tmp_path / 'ab'}",
                            "--min-seeds", "1", "--out", str(tmp_path / "table")])
    [img] = [r for r in res["rows"] if r["claim"] == "image"]
    assert img["diff"] == pytest.approx(0.03) and img["relative"] == pytest.approx(0.03 / text.mean())
    assert img["replicates"] == "yes" and img["a"] == "image_stage1/molar"
    [st] = [r for r in res["rows"] if r["claim"] == "stage1"]
    assert st["replicates"] == paper_table.NOT_MEASURED  # no *_no_stage1 arm in the folder


def test_verdict_follows_the_papers_sign():
    assert paper_table.verdict(0.01, 0.02, 1.0) == "yes"
    assert paper_table.verdict(-0.02, -0.01, 1.0) == "no"
    assert paper_table.verdict(-0.02, -0.01, -1.0) == "yes"
    assert paper_table.verdict(0.0, 0.02, 1.0) == "not resolved"


@pytest.mark.parametrize("config", [None, CONFIGS / "amazon_scientific.yaml"])
def test_paper_arms_validate(config):
    """The arms the table reads are valid variants of params.yaml and of its Amazon override (the schema refuses
    some combinations, such as a temperature written for rec_loss bce)."""
    arms = {n: sweep.VARIANTS[n] for n in ("molar_direct", "molar_joint", "content_bce", "molar_bce")}
    got = bench_params(config=config, extra={"train_variants": arms})
    assert not got.train_variant("molar_direct").align_head and got.train_variant("molar_joint").joint
    assert got.train_variant("molar_bce").rec_loss == "bce" and got.train_variant("molar_bce").align_alpha == 0.5
    with pytest.raises(ParamsError, match="temperature"):
        bench_params(config=config, extra={"train_variants": {"bad": {**arms["content_bce"], "temperature": 0.1}}})


def test_a_sweep_json_renders_in_the_docs_as_the_sweep_printed_it(tmp_path, capsys, monkeypatch):
    from bench import docs_tables

    _sweep(tmp_path / "sw")
    later = tmp_path / "sw" / "seed1" / "results" / "molar.json"  # one model trained by another checkout
    later.write_text(json.dumps({**json.loads(later.read_text()), "commit": "1" * 40, "dirty": True}))
    results = tmp_path / "results"
    sweep.report([tmp_path / "sw"], ["sasrec"], [("molar", "content"), ("molar_joint", "content")],
                 json_out=results / "sweep_test.json")
    printed = capsys.readouterr().out
    monkeypatch.setattr(docs_tables, "RESULTS", results)
    page = tmp_path / "page.md"
    page.write_text("<!-- bench-table: sweep_test -->\n<!-- /bench-table -->\n")
    assert docs_tables.main([str(page)]) == 0
    body = page.read_text()
    assert printed.strip() in body  # the JSON (seed keys now strings) gives back the printed tables
    written = json.loads((results / "sweep_test.json").read_text())
    assert f"commit `{written['commit'][:7]}`" in body and written["date"][:10] in body  # where it was made
    # and which code trained the models, read from each model's own result
    assert ("Models trained at commits `0000000`, `1111111` with uncommitted changes to tracked files." in body)


def test_stopping_rows_pair_the_arms_and_count_the_epochs_from_the_checkpoints(tmp_path):
    """bench/stopping.py: each rule's folder gives molar − content paired over users, and the epochs both arms
    ran; results written before they recorded the epochs take them from the model's config.json."""
    from bench import stopping

    made = _sweep(tmp_path / "sw")
    for seed in (0, 1):
        for model, epochs in (("content", 30 + seed), ("molar", 20)):
            config = tmp_path / "sw" / f"seed{seed}" / "artifacts" / model / "config.json"
            config.parent.mkdir(parents=True)
            config.write_text(json.dumps({"epochs_run": epochs, "best_epoch": epochs - 10}))
    row = stopping.measure("rule", tmp_path / "sw", "molar", "content")
    assert row["seeds"] == [0, 1] and row["epochs_run"] == 30 + 31 + 20 + 20 and row["train_s"] == 4.0
    assert row["paired"]["diff"] == pytest.approx(0.03)
    means = [made[s]["content"].mean() for s in (0, 1)]
    assert row["mean_b"] == pytest.approx(np.mean(means))
    table = stopping.markdown({"a": "molar", "b": "content", "rows": [row]})
    assert "| rule | 0 1 |" in table and table.rstrip().endswith("| 101 |")
    assert table.startswith("Models trained at commit `0000000`.")
    with pytest.raises(SystemExit, match="no seed has both molar_joint and content"):
        stopping.measure("rule", tmp_path / "sw", "molar_joint", "content")


def test_a_report_of_chosen_models_keeps_their_rows_in_that_order_and_names_a_missing_one(tmp_path, capsys):
    _sweep(tmp_path / "sw")
    out = sweep.report([tmp_path / "sw"], ["sasrec"], [("molar", "content")], json_out=tmp_path / "r.json",
                       models=["molar", "sasrec", "content"])
    written = json.loads((tmp_path / "r.json").read_text())
    assert [r["model"] for r in written["models"]] == ["molar", "sasrec", "content"]
    assert out[0]["diff"] == pytest.approx(0.03)  # the pair is unchanged by leaving the other models out
    assert "content_bce" not in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no seed has nosuch"):
        sweep.report([tmp_path / "sw"], ["sasrec"], models=["sasrec", "nosuch"])


def test_a_labelled_folder_pairs_the_same_model_trained_under_another_setting(tmp_path):
    made = _sweep(tmp_path / "post")
    _sweep(tmp_path / "pre")
    for seed in (0, 1):  # the other setting's molar: 0.02 below this one's, user by user
        _write(tmp_path / "pre", seed, "molar", made[seed]["molar"] - 0.02)
    out = sweep.report([tmp_path / "post", f"{tmp_path / 'pre'}=pre"], ["sasrec"],
                       [("molar", "molar@pre"), ("content", "content@pre")], json_out=tmp_path / "r.json")
    by = {(r["a"], r["b"]): r for r in out}
    assert by["molar", "molar@pre"]["diff"] == pytest.approx(0.02) and by["molar", "molar@pre"]["seeds"] == [0, 1]
    assert by["content", "content@pre"]["diff"] == pytest.approx(0.0)  # the same runs in both folders
    rows = {r["model"] for r in json.loads((tmp_path / "r.json").read_text())["models"]}
    assert {"molar", "molar@pre", "sasrec@pre"} <= rows
    assert sweep.folder_label("/a/b=c/d") == (Path("/a/b=c/d"), "")  # an '=' inside a path is not a label
