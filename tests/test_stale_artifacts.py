"""A stage never consumes an artifact built from other inputs: a checkpoint trained on other prepared data, or an
index built before its model was retrained, is refused with the artifact's path and the stage that rebuilds it."""

from __future__ import annotations

import json
import shutil

import polars as pl
import pytest

from molar_core.errors import ArtifactError
from stages import embed, evaluate, index, train, train_id
from tests.conftest import small_params

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def ws(small_workspace, ml_small, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(small_workspace, root)
    return root, small_params(ml_small, models=("sasrec", "content", "molar"))


def _change_items_table(root):
    """prepare rerun with another title rendering: same items and content hashes, another items.parquet."""
    path = root / "data/prepared/items.parquet"
    items = pl.read_parquet(path)
    items.with_columns(pl.col("title").str.to_uppercase()).write_parquet(path)


def test_models_trained_on_other_prepared_data_are_refused(ws):
    """Refused until rebuilt; the rebuilt models (same items and contents, same seeds) then evaluate exactly as the
    originals did, so evaluate read the retrained checkpoints, not a refusal or a partial result."""
    root, p = ws
    before = json.loads((root / "metrics/metrics.json").read_text())
    _change_items_table(root)
    with pytest.raises(ArtifactError, match=r"artifacts/sasrec.*another items table.*dvc repro train_id"):
        index.run(p.index, root)
    with pytest.raises(ArtifactError, match=r"artifacts/sasrec.*another items table.*dvc repro train_id"):
        evaluate.run(p.evaluate, p.protocol, root)
    with pytest.raises(ArtifactError, match=r"artifacts/sasrec.*dvc repro train_id"):  # aligned to a stale SASRec
        train.run("molar", p.train_variant("molar"), p.protocol, root)

    train_id.run(p.train_id, p.protocol, root)  # rebuilding what the errors name makes the rest work again
    with pytest.raises(ArtifactError, match=r"artifacts/content.*dvc repro train@content"):
        index.run(p.index, root)
    for name in ("content", "molar"):
        train.run(name, p.train_variant(name), p.protocol, root)
    index.run(p.index, root)
    after = evaluate.run(p.evaluate, p.protocol, root)
    for name in ("sasrec", "content", "molar"):
        assert after[name]["test"] == before[name]["test"] and after[name]["valid"] == before[name]["valid"]


def test_an_index_built_before_the_model_was_retrained_is_not_searched(ws):
    """evaluate ranks the saved vectors exactly (no index); recommendations skip an index of older item vectors."""
    from pipeline.workspace import model_index, open_model

    root, p = ws
    before = json.loads((root / "metrics/metrics.json").read_text())
    train_id.run(p.train_id.model_copy(update={"seed": 1}), p.protocol, root)
    assert model_index(root, open_model(root, "sasrec"))[1].startswith("exact inner-product index built")
    after = evaluate.run(p.evaluate, p.protocol, root)
    assert after["sasrec"]["test"] != before["sasrec"]["test"]  # the retrained model is what got evaluated
    index.run(p.index, root)
    assert "artifacts/index/sasrec.faiss" in model_index(root, open_model(root, "sasrec"))[1]


@pytest.mark.parametrize(("table", "edit", "message"), [
    ("train", lambda df: df.with_columns(pl.when(pl.int_range(pl.len()) == 6).then(pl.col("items").list.concat(pl.lit([99999], pl.List(pl.Int32))))
                                         .otherwise(pl.col("items")).alias("items")),
     r"train.parquet: row 7: .*item id outside 1\.\.\d+"),
    ("test", lambda df: df.with_columns(pl.when(pl.int_range(pl.len()) == 2).then(None).otherwise(pl.col("target"))
                                        .alias("target")), r"test.parquet: row 3: .*null"),
    ("valid", lambda df: df.drop("target"), r"valid.parquet: has no column 'target'"),
    ("items", lambda df: df.with_columns(pl.col("item_id").cast(pl.Int64)), r"column 'item_id' is Int64, expected Int32"),
    ("items", lambda df: df.reverse(), r"items.parquet: item_id is not 1..N in order"),
])
def test_hand_edited_prepared_tables_are_refused_by_the_stages_that_read_them(ws, table, edit, message):
    root, p = ws
    path = root / f"data/prepared/{table}.parquet"
    edit(pl.read_parquet(path)).write_parquet(path)
    with pytest.raises(ArtifactError, match=message + r".*dvc repro prepare"):
        if table == "items":  # read by the content model's training (evaluate reads the other three)
            train.run("content", p.train_variant("content"), p.protocol, root)
        else:
            evaluate.run(p.evaluate, p.protocol, root)


def test_an_unreadable_prepared_table_is_named(ws):
    root, p = ws
    (root / "data/prepared/train.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ArtifactError, match=r"train.parquet: not a readable parquet file.*dvc repro prepare"):
        train_id.run(p.train_id, p.protocol, root)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda df: df.drop("text"), r"items.parquet: has no column 'text'"),
    (lambda df: df.with_columns(pl.col("item_id").cast(pl.Int64)), r"column 'item_id' is Int64, expected Int32"),
    (lambda df: df.reverse(), r"items.parquet: item_id is not 1..N in order"),
    (None, r"items.parquet: not a readable parquet file"),
])
def test_embed_refuses_a_bad_items_table_it_reads_lazily(ws, edit, message):
    """embed scans items.parquet a slice at a time; the checks are read_prepared's, before any model loads."""
    root, p = ws
    path = root / "data/prepared/items.parquet"
    if edit is None:
        path.write_bytes(b"PAR1 truncated")
    else:
        edit(pl.read_parquet(path)).write_parquet(path)
    with pytest.raises(ArtifactError, match=message + r".*dvc repro prepare"):
        embed.run(p.embed, root)
