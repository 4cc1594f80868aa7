"""Trained models reloaded as recommenders (molar_core.load) for any history, and `molar recommend --history`.

The reference is what the training stages saved: a reloaded model must reproduce the saved user vectors of every
split from the histories the stage encoded and the saved item vectors, and its rankings must equal a numpy brute
force over those saved vectors. A model directory is refused, naming the file, with another embedding store, another
format or a missing file.
"""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import polars as pl
import pytest
import torch
from typer.testing import CliRunner

import molar_core
from molar_core.errors import ArtifactError
from molar_core.store import EmbeddingCache, load_item_embeddings, read_catalogue
from molar_core.vectors import load_item_vectors, load_user_vectors
from pipeline.cli import app
from pipeline.params import parse_params
from tests.conftest import small_params

KINDS = ["sasrec", "content", "molar", "hybrid"]
TIE = 1e-5  # scores closer than this may be ordered either way by float32 torch and float64 numpy


@pytest.fixture(scope="module")
def workspaces(small_workspace, ml_small, tmp_path_factory, one_torch_thread) -> dict:
    """Each model kind's workspace: the shared one, and for `hybrid` (item-id embedding, dot-product `ce`
    scoring: no normalisation) a copy of its prepared data and embedding store with that variant trained in it."""
    from stages import train

    root = tmp_path_factory.mktemp("hybrid")
    for part in ("data/prepared", "artifacts/embeddings"):
        shutil.copytree(small_workspace / part, root / part)
    p = small_params(ml_small)
    hybrid = {"hybrid": True, "rec_loss": "ce", "align_alpha": 0.0}
    p = parse_params({**p.model_dump(), "train_variants": {"hybrid": hybrid}})
    train.run("hybrid", p.train_variant("hybrid"), p.protocol, root)
    return {"sasrec": small_workspace, "content": small_workspace, "molar": small_workspace, "hybrid": root}


def stage_histories(root) -> dict[str, list[list[int]]]:
    """The histories the training stages encoded into each saved split."""
    valid = pl.read_parquet(root / "data/prepared/valid.parquet")
    test = pl.read_parquet(root / "data/prepared/test.parquet")
    full = [h + [t] for h, t in zip(test["history"].to_list(), test["target"].to_list())]
    return {"valid": valid["history"].to_list(), "test": test["history"].to_list(), "next": full}


def brute_force(user: np.ndarray, items: np.ndarray, seen: list[int] | None) -> np.ndarray:
    """Scores of items 1..N for one user vector, in float64, seen items at -inf."""
    scores = items.astype(np.float64) @ user.astype(np.float64)
    if seen:
        scores[np.asarray(seen) - 1] = -np.inf
    return scores


def assert_top_k(got: list[tuple[int, float]], scores: np.ndarray, k: int) -> None:
    """`got` is the top-k of the reference scores: the same score at every rank, each item scored as listed and
    unseen, and the reference's item at every rank whose neighbours in the full ranking are not near-ties."""
    ids, vals = np.array([i for i, _ in got]), np.array([s for _, s in got])
    ranked = np.argsort(-scores, kind="stable")[:int(np.isfinite(scores).sum())]  # every unseen item, best first
    m = min(k, len(ranked))
    assert len(got) == m and len(set(ids.tolist())) == m
    assert np.allclose(vals, scores[ranked[:m]], atol=TIE) and np.allclose(scores[ids - 1], vals, atol=TIE)
    gaps = -np.diff(scores[ranked])
    clear = (np.concatenate([[np.inf], gaps])[:m] > TIE) & (np.concatenate([gaps, [np.inf]])[:m] > TIE)
    assert clear.mean() > 0.5  # the comparison below checks most ranks
    assert np.array_equal(ids[clear], ranked[:m][clear] + 1)


@pytest.mark.parametrize("kind", KINDS)
def test_reloaded_model_reproduces_the_saved_vectors(workspaces, kind):
    root = workspaces[kind]
    rec = molar_core.load(root / f"artifacts/{kind}")
    saved_items = load_item_vectors(root / f"artifacts/{kind}/item_vectors.safetensors")
    assert np.abs(rec.item_vectors().numpy() - saved_items).max() <= 1e-6
    for split, histories in stage_histories(root).items():
        saved = load_user_vectors(root / f"artifacts/{kind}/user_vectors.safetensors", split)
        one_by_one = torch.stack([rec.user_vector(h) for h in histories]).numpy()
        assert np.abs(one_by_one - saved).max() <= 1e-6, split
        assert np.abs(rec.user_vectors(histories).numpy() - saved).max() <= 1e-6, split
    norms = np.linalg.norm(saved_items, axis=1)
    infonce = kind in ("content", "molar")  # scoring form: L2-normalised for InfoNCE models only
    assert np.allclose(norms, 1.0, atol=1e-5) == infonce


@pytest.mark.parametrize("kind", KINDS)
def test_recommend_equals_a_brute_force_ranking_of_the_saved_vectors(workspaces, kind):
    root = workspaces[kind]
    rec = molar_core.load(root / f"artifacts/{kind}")
    items = load_item_vectors(root / f"artifacts/{kind}/item_vectors.safetensors")
    histories = stage_histories(root)
    for split in ("valid", "next"):
        users = load_user_vectors(root / f"artifacts/{kind}/user_vectors.safetensors", split)
        many = rec.recommend_many(histories[split], k=10)
        for u in range(0, len(users), 7):
            h = histories[split][u]
            assert_top_k(many[u], brute_force(users[u], items, h), 10)
            assert [i for i, _ in rec.recommend(h, k=10)] == [i for i, _ in many[u]]
    # seen items kept: the whole catalogue competes (SASRec ranks some seen items on top)
    users = load_user_vectors(root / f"artifacts/{kind}/user_vectors.safetensors", "next")
    for u in range(0, len(users), 15):
        assert_top_k(rec.recommend(histories["next"][u], k=50, exclude_seen=False),
                     brute_force(users[u], items, None), 50)
    # fewer items than k remain: all of them, best first
    n = rec.num_items
    rest = rec.recommend(list(range(1, n - 2)), k=10)
    assert sorted(i for i, _ in rest) == [n - 2, n - 1, n]
    assert_top_k(rest, brute_force(rec.user_vector(list(range(1, n - 2))).numpy(), items,
                                   list(range(1, n - 2))), 10)


def test_unknown_item_ids_are_refused_naming_them(small_workspace):
    rec = molar_core.load(small_workspace / "artifacts/molar")
    n = rec.num_items
    for bad in (0, -3, n + 1):
        with pytest.raises(ValueError, match=rf"item id {bad} \(history, position 1\).* 1\.\.{n}"):
            rec.recommend([12, bad, 301])
    with pytest.raises(ValueError, match=rf"item id {n + 5} \(history 1, position 0\)"):
        rec.recommend_many([[12], [n + 5]])
    with pytest.raises(ValueError, match="empty"):
        rec.user_vector([])
    assert len(rec.recommend([1, n], k=3)) == 3  # both ends of the catalogue are items


def _write_store(store, ids: list[int], hashes: list[str], vectors: torch.Tensor) -> None:
    """An embedding store holding `vectors` (one row per item) for the given catalogue."""
    first: dict[str, int] = {}
    for row, h in enumerate(hashes):
        first.setdefault(h, row)
    settings = {"encoder": "other", "model_fingerprint": "0" * 64, "pooling": "mean", "dim": vectors.shape[1]}
    with EmbeddingCache(store, settings, shard_size=4096) as cache:
        cache.add(vectors[list(first.values())], list(first), torch.zeros(len(first), dtype=torch.uint8))
        cache.finish(ids, hashes)


def test_a_copied_model_refuses_another_embedding_store(small_workspace, tmp_path):
    """A content model reads the store of its config.json relative to the workspace holding it: elsewhere, a
    store with other items, another width or other vectors is refused naming it; the right one, given, works."""
    real = small_workspace / "artifacts/embeddings"
    copy = tmp_path / "ws" / "artifacts" / "content"
    shutil.copytree(small_workspace / "artifacts/content", copy)
    store = tmp_path / "ws" / "artifacts" / "embeddings"
    with pytest.raises(ArtifactError, match=rf"{re.escape(str(store))}.*manifest.json.*dvc repro embed"):
        molar_core.load(copy)

    ids, hashes = read_catalogue(real)
    _, feats = load_item_embeddings(real)
    cases = {"fewer": (ids[:-5], hashes[:-5], feats[:-5]), "narrower": (ids, hashes, feats[:, :-1]),
             "other vectors": (ids, hashes, feats.roll(1, dims=0))}
    for case, (i, h, v) in cases.items():
        shutil.rmtree(store, ignore_errors=True)
        _write_store(store, i, h, v)
        with pytest.raises(ArtifactError, match=rf"^{re.escape(str(store))}: .*dvc repro train@content") as err:
            molar_core.load(copy)
        expected = "item_vectors.safetensors" if case == "other vectors" else f"trained on {len(ids)} items"
        assert expected in str(err.value), case

    rec = molar_core.load(copy, embeddings_dir=real)
    saved = load_item_vectors(small_workspace / "artifacts/content/item_vectors.safetensors")
    assert np.abs(rec.item_vectors().numpy() - saved).max() <= 1e-6


def test_another_format_or_a_missing_file_is_refused(small_workspace, tmp_path):
    for kind in ("sasrec", "molar"):
        copy = tmp_path / "artifacts" / kind
        shutil.copytree(small_workspace / f"artifacts/{kind}", copy)
        conf = json.loads((copy / "config.json").read_text())
        (copy / "config.json").write_text(json.dumps({**conf, "format_version": 1}))
        hint = "train_id" if kind == "sasrec" else "train@molar"
        config = re.escape(str(copy / "config.json"))
        with pytest.raises(ArtifactError, match=rf"{config}: checkpoint format 1.*{hint}"):
            molar_core.load(copy)
        (copy / "config.json").write_text(json.dumps(conf))
        (copy / "model.safetensors").unlink()
        with pytest.raises(ArtifactError, match=rf"{re.escape(str(copy / 'model.safetensors'))}: not found.*{hint}"):
            molar_core.load(copy, embeddings_dir=small_workspace / "artifacts/embeddings")
        (copy / "user_vectors.safetensors").unlink()
        with pytest.raises(ArtifactError, match=rf"{re.escape(str(copy))}: incomplete model directory.*user_vectors"):
            molar_core.load(copy)


def _printed_ids(output: str) -> list[int]:
    """Item ids of the table `molar recommend` prints (a wrapped title continues on rows with no rank)."""
    cells = [line.split("│") for line in output.splitlines() if line.startswith("│")]
    return [int(c[2]) for c in cells if c[1].strip().isdigit()]


@pytest.mark.parametrize("model", ["sasrec", "content"])
def test_cli_history_prints_the_recommender_ranking(small_workspace, model):
    runner = CliRunner()
    res = runner.invoke(app, ["recommend", "--history", "12,55,301", "--model", model, "--k", "8",
                              "--root", str(small_workspace)])
    assert res.exit_code == 0, res.output
    expected = [i for i, _ in molar_core.load(small_workspace / f"artifacts/{model}").recommend([12, 55, 301], k=8)]
    assert _printed_ids(res.output) == expected
    items = pl.read_parquet(small_workspace / "data/prepared/items.parquet")
    titles = dict(items.select("item_id", "title").iter_rows())
    assert all(titles[i][:12] in res.output for i in expected)
    assert "(3 seen items excluded)" in " ".join(res.output.split())  # the table title may wrap

    res = runner.invoke(app, ["recommend", "--history", f"12,{10 ** 6}", "--model", model, "--root",
                              str(small_workspace)])
    assert res.exit_code == 1 and f"item id {10 ** 6}" in res.output
    res = runner.invoke(app, ["recommend", "--history", "12,x", "--root", str(small_workspace)])
    assert res.exit_code == 1 and "'x' is not an id" in res.output
    res = runner.invoke(app, ["recommend", "--history", "12", "--user", "1", "--root", str(small_workspace)])
    assert res.exit_code == 1 and "exactly one of" in res.output


@pytest.mark.parametrize("model", ["sasrec", "molar"])
def test_cli_user_ranks_the_whole_sequence_as_history_and_the_saved_next_vector_do(small_workspace, tmp_path, model):
    """`--user X` encodes X's whole known sequence with the reloaded model: the very ranking `--history` gives for
    that sequence, and (reference computed another way) a numpy ranking of the saved `next` user vector over the
    saved item vectors, to 1e-5 in score. `--all`, the serving-index path, ranks those users alike."""
    runner = CliRunner()
    root = small_workspace
    test = pl.read_parquet(root / "data/prepared/test.parquet")
    users = load_user_vectors(root / f"artifacts/{model}/user_vectors.safetensors", "next")
    items = load_item_vectors(root / f"artifacts/{model}/item_vectors.safetensors")
    every = tmp_path / "all.parquet"
    res = runner.invoke(app, ["recommend", "--all", "--out", str(every), "-m", model, "-k", "10", "--root", str(root)])
    assert res.exit_code == 0, res.output
    every = pl.read_parquet(every)
    for r in (0, 37, test.height - 1):
        row = test.row(r, named=True)
        seq = row["history"] + [row["target"]]
        by_user, by_history = tmp_path / f"user-{r}.parquet", tmp_path / f"history-{r}.parquet"
        res = runner.invoke(app, ["recommend", "--user", row["raw_user_id"], "-m", model, "-k", "10", "--out",
                                  str(by_user), "--root", str(root)])
        assert res.exit_code == 0, res.output
        assert "exact ranking of the reloaded model" in res.output
        res = runner.invoke(app, ["recommend", "--history", ",".join(map(str, seq)), "-m", model, "-k", "10",
                                  "--out", str(by_history), "--root", str(root)])
        assert res.exit_code == 0, res.output
        got, ref = pl.read_parquet(by_user), pl.read_parquet(by_history)
        assert got["user_id"].unique().to_list() == [row["user_id"]] and got["rank"].to_list() == list(range(1, 11))
        assert got["item_id"].to_list() == ref["item_id"].to_list()
        assert got["score"].to_list() == ref["score"].to_list()
        assert got["title"].to_list() == ref["title"].to_list()
        top = list(zip(got["item_id"].to_list(), got["score"].to_list()))
        assert_top_k(top, brute_force(users[r], items, seq), 10)
        batch = every.filter(pl.col("user_id") == row["user_id"]).sort("rank")
        assert_top_k(list(zip(batch["item_id"].to_list(), batch["score"].to_list())),
                     brute_force(users[r], items, seq), 10)


def test_cli_copied_content_model_reads_the_store_of_its_prepared_data_or_embeddings(small_workspace, tmp_path):
    """A copied content model directory reads the embedding store of the workspace holding the prepared data it is
    given (as `dvc repro` lays them out), else the one --embeddings names; with neither the command stops naming
    --embeddings, and with the store given it ranks as the model in its workspace does."""
    runner = CliRunner()
    ckpt = tmp_path / "elsewhere" / "molar"
    shutil.copytree(small_workspace / "artifacts/molar", ckpt)
    bare = tmp_path / "bare" / "prepared"  # prepared data outside any workspace: no store beside it
    shutil.copytree(small_workspace / "data/prepared", bare)
    res = runner.invoke(app, ["recommend", "--user", "1", "--checkpoint", str(ckpt), "--prepared", str(bare)])
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and f"not at {(tmp_path / 'artifacts/embeddings').resolve()}" in out, res.output
    assert "give it as --embeddings STORE" in out
    got, ref = tmp_path / "copy.parquet", tmp_path / "in_place.parquet"
    res = runner.invoke(app, ["recommend", "--user", "1", "--checkpoint", str(ckpt), "--prepared", str(bare),
                              "--embeddings", str(small_workspace / "artifacts/embeddings"), "--out", str(got)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["recommend", "--user", "1", "-m", "molar", "--out", str(ref), "--root",
                              str(small_workspace)])
    assert res.exit_code == 0, res.output
    assert pl.read_parquet(got).equals(pl.read_parquet(ref))
