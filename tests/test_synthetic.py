"""The synthetic generator: deterministic, the right shapes, and content that is (or is not) informative."""

from __future__ import annotations

import numpy as np
import pytest

from molar_core.data.synthetic import catalogue, generate, user_queries


def _cluster_purity(features, clusters):
    """Fraction of items whose nearest other item (by features) is in the same cluster."""
    d = ((features[:, None] - features[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float((clusters[d.argmin(1)] == clusters).mean())


def test_generator_is_deterministic_and_shaped():
    a, b = generate("content", users=50, items=80, length=12, seed=3), generate("content", users=50, items=80, length=12, seed=3)
    assert a.sequences == b.sequences and np.array_equal(a.features, b.features)
    assert len(a.sequences) == 50 and all(len(s) == 12 for s in a.sequences)
    assert min(min(s) for s in a.sequences) >= 1 and max(max(s) for s in a.sequences) <= 80
    train, (vh, vt), (th, tt) = a.leave_one_out()
    assert all(len(t) == 10 for t in train) and th[0] == a.sequences[0][:-1] and tt[0] == a.sequences[0][-1]
    assert vh[0] == train[0] and vt[0] == a.sequences[0][-2]


def test_content_is_informative_only_in_the_content_kind():
    content = generate("content", users=10, items=400, seed=0)
    noise = generate("collaborative", users=10, items=400, seed=0)
    assert _cluster_purity(content.features, content.clusters) > 0.9
    assert _cluster_purity(noise.features, noise.clusters) < 0.3


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind"):
        generate("both")


def test_catalogue_is_deterministic_unit_norm_and_clustered():
    a = catalogue(1000, dim=16, topics=10, seed=1)
    assert a.shape == (1000, 16) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(a, catalogue(1000, dim=16, topics=10, seed=1))
    assert not np.array_equal(a, catalogue(1000, dim=16, topics=10, seed=2))
    sims = a @ a.T
    np.fill_diagonal(sims, -1)
    same_topic_neighbour = (np.abs(sims.max(1) - 1) < 0.5).mean()
    assert same_topic_neighbour > 0.95 and sims.mean() < 0.2  # close to some items, far from most
    q = user_queries(a, 50, seed=2)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)
    assert (q @ a.T).max(1).min() > 0.5  # every user has items near it


def test_interaction_tables_cover_the_catalogue_and_prepare_keeps_it(tmp_path):
    """The scale benchmark's dataset: deterministic, every item drawn, each user's positions in order, and the
    prepare stage keeps every item and accounts for every row."""
    import polars as pl

    from molar_core.data.synthetic import interaction_tables
    from pipeline.params import PrepareParams
    from stages import prepare

    inter, items = interaction_tables(300, 1_000, mean_length=8, seed=2)
    again, _ = interaction_tables(300, 1_000, mean_length=8, seed=2)
    assert inter.equals(again) and items.height == 1_000
    assert inter["item_id"].n_unique() == 1_000 and inter["item_id"].min() == 0 and inter["item_id"].max() == 999
    lengths = inter.group_by("user_id").len()["len"]
    assert lengths.min() >= 5 and inter["user_id"].n_unique() == 300 and abs(lengths.mean() - 8) < 1.5
    assert inter.group_by("user_id").agg(ok=pl.col("timestamp").diff().drop_nulls().eq(1).all())["ok"].all()
    inter.write_parquet(tmp_path / "inter.parquet")
    items.write_parquet(tmp_path / "items.parquet")
    p = PrepareParams(source="table", table={"interactions": str(tmp_path / "inter.parquet"),
                                             "items": str(tmp_path / "items.parquet"), "item_key_col": "item_id",
                                             "title_col": "title", "text_cols": ["description"]})
    stats = prepare.run(p, tmp_path)
    rows = stats["rows"]
    assert rows["input"] == inter.height and rows["kept"] + sum(rows["dropped"].values()) == inter.height
    # only the few users whose repeats leave them under 5 items take an item away with them
    assert stats["items"] + stats["items_without_interactions"] == 1_000 and stats["items"] >= 990
    with pytest.raises(ValueError, match="min_length"):
        interaction_tables(10, 10, mean_length=3, min_length=5)


def test_tiny_sentence_encoder_is_deterministic_and_embeds(tmp_path):
    from molar_core.encoders.base import EncoderConfig
    from molar_core.encoders.factory import build_encoder
    from molar_core.encoders.tiny import build_tiny_sentence_encoder

    a, b = build_tiny_sentence_encoder(tmp_path / "a"), build_tiny_sentence_encoder(tmp_path / "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    enc = build_encoder(EncoderConfig(encoder="sentence", model=str(a), backend="transformers"))
    v = enc.encode(["Item 1 of topic 0", "Item 2 of topic 0", "another"], [None, None, None])
    assert v.shape == (3, 32) and np.allclose(v.norm(dim=1).numpy(), 1.0, atol=1e-5)
    assert not np.allclose(v[0].numpy(), v[2].numpy())
