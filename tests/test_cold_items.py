"""The cold-start protocol: prepare holds items out of training (prepare.cold_items), the models never score them
while training, and evaluate reports warm and cold test targets, with the popularity baseline beside them."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
import torch.nn.functional as F

from molar_core.data.processing import ProcessConfig, process
from molar_core.models.content import ContentConfig, ContentUserModel
from molar_core.models.molar import Molar, MolarLossConfig
from molar_core.models.sasrec import SASRec, SASRecConfig, sasrec_loss
from molar_core.popularity import popularity_vectors
from molar_core.ranking import target_ranks
from tests.test_processing import check_accounting, make_raw, random_rows, sequences_by_raw

# ------------------------------------------------------------------------------------------------ prepare


def _process(rows, **cold):
    return process(make_raw(rows), ProcessConfig(k_core_user=3, **cold))


def _reference_cold_time(rows, fraction: float) -> set[str]:
    """Plain Python: the items whose first interaction is among the last `fraction` of all interactions, ordered
    by (time, file row), over the rows that survive filtering (all of them here: unique pairs, k-core 3 holds)."""
    order = sorted(range(len(rows)), key=lambda n: (float(rows[n][2]), n))
    cutoff = len(rows) - round(fraction * len(rows))
    first = {}
    for pos, n in enumerate(order):
        first.setdefault(str(rows[n][1]), pos)
    return {item for item, pos in first.items() if pos >= cutoff}


def _dense_rows(seed: int) -> list[tuple]:
    """Unique (user, item) pairs, every user with >= 6 items, so filtering keeps every row; item i is released
    at time 10 i, so later items are first seen late (ties in time are common)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(40):
        for i in rng.choice(60, size=int(rng.integers(6, 15)), replace=False):
            rows.append((u, int(i) + 1, 10 * int(i) + int(rng.integers(0, 200))))
    return rows


@pytest.mark.parametrize("by", ["time", "random"])
def test_cold_items_leave_training_and_histories_and_stay_test_targets(by):
    rows = _dense_rows(0)
    full = _process(rows)
    prep = _process(rows, cold_fraction=0.25, cold_by=by, cold_seed=1)
    check_accounting(prep, make_raw(rows))
    s = prep.stats
    w, n = s["warm_items"], s["items"]
    cold_raw = set(prep.items.filter(pl.col("cold"))["raw_item_id"].to_list())
    assert n == full.stats["items"] and len(cold_raw) == n - w == s["cold_items"]["items"] > 0
    assert prep.items["cold"].to_list() == [i > w for i in prep.items["item_id"].to_list()]  # warm ids first
    if by == "time":
        assert cold_raw == _reference_cold_time(rows, 0.25)
    else:
        assert len(cold_raw) == round(0.25 * n)
    # no cold item in any training sequence, validation target or history; test targets may be cold
    for table, cols in ((prep.train, ["items"]), (prep.valid, ["history", "target"]), (prep.test, ["history"])):
        for c in cols:
            values = table[c].explode() if table[c].dtype == pl.List(pl.Int32) else table[c]
            assert values.max() <= w, (table, c)
    cold_targets = int((prep.test["target"] > w).sum())
    assert cold_targets == s["cold_items"]["test_targets_cold"] > 0
    # each user's sequence is the full one without its cold items, except a cold last item
    before, after = sequences_by_raw(full), sequences_by_raw(prep)
    removed = 0
    for user, seq in before.items():
        expect = [x for x in seq[:-1] if x not in cold_raw] + seq[-1:]
        if len(expect) < 3:
            assert user not in after
            removed += len(expect)
        else:
            assert after[user] == expect
    assert s["rows"]["dropped"]["cold_short_user"] == removed
    assert s["rows"]["dropped"]["cold_history"] == sum(
        x in cold_raw for seq in before.values() for x in seq[:-1])


def test_random_cold_items_depend_on_the_seed_not_on_row_order():
    rows = _dense_rows(1)
    a = _process(rows, cold_fraction=0.2, cold_by="random", cold_seed=5)
    b = _process(list(reversed(rows)), cold_fraction=0.2, cold_by="random", cold_seed=5)
    c = _process(rows, cold_fraction=0.2, cold_by="random", cold_seed=6)

    def cold(p):
        return set(p.items.filter(pl.col("cold"))["raw_item_id"].to_list())

    assert cold(a) == cold(b) and cold(a) != cold(c)


def test_without_cold_items_nothing_changes():
    rows = random_rows(4)
    prep = _process(rows)
    assert prep.stats["cold_items"] is None and prep.stats["warm_items"] == prep.stats["items"]
    assert not prep.items["cold"].any()
    assert "cold_history" not in prep.stats["rows"]["dropped"]


def test_a_fraction_that_selects_nothing_names_the_setting():
    from molar_core.errors import DataError

    rows = [(u, i, i) for u in range(5) for i in range(1, 6)]  # every item is first seen in the first rows
    with pytest.raises(DataError, match="cold_items"):
        _process(rows, cold_fraction=0.01, cold_by="time")


def test_params_refuse_a_fraction_of_one_naming_the_key():
    from pipeline.params import ParamsError, parse_params

    with pytest.raises(ParamsError, match="cold_items.fraction"):
        parse_params({"prepare": {"cold_items": {"fraction": 1.0}}})
    with pytest.raises(ParamsError, match="cold_items.by"):
        parse_params({"prepare": {"cold_items": {"fraction": 0.1, "by": "newest"}}})


# ------------------------------------------------------------------------------------------------ models

W, N = 6, 9  # items 1..6 are the training catalogue, 7..9 cold


def test_sasrec_never_scores_cold_items_in_training():
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=N, max_len=5, dim=8, layers=1, heads=1, dropout=0.0, train_items=W))
    cold_before = model.item_emb.weight[W + 1:].detach().clone()
    seqs = [[1, 2, 3, 4], [5, 6, 2], [3, 1, 6, 5, 4]]
    loss, _ = sasrec_loss(model, seqs, "ce")
    # reference: cross-entropy over the logits of items 1..W only, at every real position
    from molar_core.data.sequences import next_item_pairs

    inputs, targets = next_item_pairs(seqs, 5)
    h = model.hidden(inputs)[targets > 0]
    ref = F.cross_entropy(h @ model.item_emb.weight[1:W + 1].T, targets[targets > 0] - 1)
    torch.testing.assert_close(loss, ref)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    for loss_name in ("ce", "sampled_softmax"):
        for _ in range(3):
            opt.zero_grad()
            sasrec_loss(model, seqs, loss_name, num_negatives=50, generator=torch.Generator().manual_seed(0))[0].backward()
            opt.step()
    assert torch.equal(model.item_emb.weight[W + 1:], cold_before)  # untrained: their initial values
    assert not torch.equal(model.item_emb.weight[1:W + 1], model.item_emb.weight[1:W + 1] * 0)


@pytest.mark.parametrize("rec_loss,negatives", [("infonce", None), ("infonce", 4), ("bce", None), ("ce", None)])
def test_content_losses_ignore_cold_items_whose_vectors_still_come_from_content(rec_loss, negatives):
    torch.manual_seed(0)
    feats = torch.randn(N, 12)
    cfg = ContentConfig(num_items=N, input_dim=12, max_len=5, dim=8, layers=1, heads=1, dropout=0.0,
                        adapter_hidden=16, hybrid=True, train_items=W)
    model = Molar(ContentUserModel(cfg, feats), MolarLossConfig(rec_loss=rec_loss, num_negatives=negatives))
    assert torch.equal(model.content.id_emb.weight[W + 1:], torch.zeros(N - W, 8))  # content alone for cold items
    seqs = [[1, 2, 3, 4], [5, 6, 2], [3, 1, 6, 5, 4]]
    loss = model.loss(seqs, torch.Generator().manual_seed(1))[0]
    other = feats.clone()
    other[W:] = torch.randn(N - W, 12) * 10  # other cold contents: the training loss cannot see them
    model.content.features[1:] = other
    torch.testing.assert_close(model.loss(seqs, torch.Generator().manual_seed(1))[0], loss)
    if rec_loss == "infonce" and negatives is None:  # reference: the full-catalogue InfoNCE over items 1..W
        from molar_core.data.sequences import next_item_pairs

        inputs, targets = next_item_pairs(seqs, 5)
        table = model.content.item_table(torch.arange(1, W + 1))
        h = F.normalize(model.content.hidden(inputs, table)[targets > 0], dim=-1)
        ref = F.cross_entropy(model.logit_scale.exp() * h @ F.normalize(table, dim=-1).T, targets[targets > 0] - 1)
        torch.testing.assert_close(loss, ref)
    # at test time every item, cold ones included, is scored from its content through the adapter
    vectors = model.item_vectors()
    assert vectors.shape == (N, 8)
    torch.testing.assert_close(vectors[W:], model.content.adapter(model.content.features[W + 1:]))


# ------------------------------------------------------------------------------------------------ evaluate


def test_popularity_ranks_by_history_counts_with_pessimistic_ties():
    histories = [[1, 2, 2 + 1], [1, 4], [1, 2]]
    users, items = popularity_vectors(histories, 5)
    counts = np.array([3, 2, 1, 1, 0])  # items 1..5
    assert items[:, 0].tolist() == counts.tolist()
    targets = [4, 5, 3]
    ranks = target_ranks(users, items, histories, torch.tensor(targets)).tolist()
    for h, t, r in zip(histories, targets, ranks):  # unmasked items scoring at least the target's count
        others = [i for i in range(1, 6) if i not in h and i != t]
        assert r == sum(counts[i - 1] >= counts[t - 1] for i in others)


def test_evaluate_reports_warm_and_cold_targets(ml_small, tmp_path):
    from stages import embed, evaluate, prepare, train, train_id
    from tests.conftest import small_params

    p = small_params(ml_small, models=("popularity", "sasrec", "content"), max_epochs=1)
    p = p.model_copy(update={"prepare": p.prepare.model_copy(update={
        "cold_items": p.prepare.cold_items.model_copy(update={"fraction": 0.2, "by": "random"})})})
    torch.set_num_threads(1)
    stats = prepare.run(p.prepare, tmp_path)
    w = stats["warm_items"]
    train_id.run(p.train_id, p.protocol, tmp_path)
    embed.run(p.embed, tmp_path)
    train.run("content", p.train_variant("content"), p.protocol, tmp_path)
    cfg = json.loads((tmp_path / "artifacts/sasrec/config.json").read_text())
    assert cfg["config"]["train_items"] == w
    metrics = evaluate.run(p.evaluate, p.protocol, tmp_path)
    rows = pl.read_parquet(tmp_path / "metrics/per_user.parquet")
    test = pl.read_parquet(tmp_path / "data/prepared/test.parquet")
    info = metrics["protocol"]["cold_items"]
    assert info["test_users"]["cold"] == int((test["target"] > w).sum()) > 0
    for model in ("popularity", "sasrec", "content"):
        mine = rows.filter((pl.col("model") == model) & (pl.col("split") == "test"))
        assert mine["cold_target"].to_list() == (test["target"] > w).to_list()
        for kind, cold in (("test_warm", False), ("test_cold", True)):
            part = mine.filter(pl.col("cold_target") == cold)
            assert metrics[model][kind]["ndcg@10"] == pytest.approx(part["ndcg@10"].mean())
            lo, hi = metrics[model][f"{kind}_ci95"]["ndcg@10"]
            assert lo <= metrics[model][kind]["ndcg@10"] <= hi
    # popularity cannot rank an item nobody interacted with above one somebody did
    assert metrics["popularity"]["test_cold"]["ndcg@10"] == 0.0
    # validation ranks the warm catalogue, as training did: the same number as the early-stopped run's
    assert metrics["sasrec"]["valid"]["ndcg@10"] == pytest.approx(cfg["valid"]["ndcg@10"], abs=1e-6)
