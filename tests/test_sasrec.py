"""SASRec: causality, padding invariance, a learnable synthetic task, and determinism."""

import pytest
import torch

from molar_core.data.sequences import next_item_pairs, pad_left, training_windows
from molar_core.models.sasrec import SASRec, SASRecConfig, sasrec_loss
from molar_core.training import FitConfig, encode_users, fit, ranking_metrics, seed_everything


def _model(n=30, max_len=12, dropout=0.0, norm="pre"):
    torch.manual_seed(0)
    return SASRec(SASRecConfig(num_items=n, max_len=max_len, dim=16, layers=2, heads=2, dropout=dropout,
                               norm=norm)).eval()


def test_pad_left_and_pairs():
    x = pad_left([[1, 2, 3], [4]], 2)
    assert x.tolist() == [[2, 3], [0, 4]]
    inp, tgt = next_item_pairs([[1, 2, 3, 4]], 10)
    assert inp.tolist() == [[1, 2, 3]] and tgt.tolist() == [[2, 3, 4]]


def test_training_windows_cover_every_pair_once():
    seq = list(range(1, 24))
    wins = training_windows([seq], 5)
    pairs = [(w[i], w[i + 1]) for w in wins for i in range(len(w) - 1)]
    assert sorted(pairs) == [(a, a + 1) for a in range(1, 23)]
    assert all(len(w) <= 6 for w in wins)


def test_newest_windows_keep_each_user_s_last_items_only():
    long, short = list(range(1, 24)), [7, 8, 9]
    wins = training_windows([long, short], 5, newest_only=True)
    assert [list(w) for w in wins] == [long[-6:], short]  # one window a user, its newest max_len + 1 items
    assert len(training_windows([long, short], 5)) == 6  # every window by default (5 for long, 1 for short)
    (win,) = training_windows([long], 5, overlap=3, newest_only=True)
    _, targets = next_item_pairs([win], 5)
    assert targets.tolist() == [long[-5:]]  # no older window to train the shared targets: all of them here


@pytest.mark.parametrize(("length", "overlap"), [(23, 3), (60, 4), (7, 2), (6, 4)])
def test_overlapping_windows_train_every_pair_once_with_context(length, overlap):
    seq = list(range(1, length + 1))
    wins = training_windows([seq], 5, overlap=overlap)
    inputs, targets = next_item_pairs(wins, 5)
    trained = []  # (target, items of history before it inside its window)
    for inp, tgt in zip(inputs.tolist(), targets.tolist()):
        for i, t in enumerate(tgt):
            if t:
                assert inp[i] == t - 1  # the pair is (previous item, next item)
                trained.append((t, sum(x > 0 for x in inp[: i + 1])))
    assert sorted(t for t, _ in trained) == list(range(2, length + 1))  # each target exactly once
    assert all(ctx >= min(overlap + 1, t - 1) for t, ctx in trained)  # never from a bare window edge
    with pytest.raises(ValueError, match="overlap"):
        training_windows([seq], 5, overlap=5)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_causal_future_does_not_change_past(norm):
    m = _model(norm=norm)
    a = torch.tensor([[0, 0, 3, 4, 5, 6]])
    b = torch.tensor([[0, 0, 3, 4, 5, 9]])
    with torch.no_grad():
        ha, hb = m.hidden(a), m.hidden(b)
    torch.testing.assert_close(ha[:, :5], hb[:, :5])
    assert not torch.allclose(ha[:, 5], hb[:, 5])


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_user_vector_invariant_to_extra_left_padding(norm):
    m = _model(norm=norm)
    with torch.no_grad():
        short = m.user_vectors(torch.tensor([[3, 4, 5]]))
        padded = m.user_vectors(torch.tensor([[0, 0, 0, 3, 4, 5]]))
    # positions differ (right-aligned absolute positions are the same), so vectors must match exactly
    torch.testing.assert_close(short, padded)


def _cyclic_data(n=30, users=60, length=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    seqs = []
    for _ in range(users):
        start = int(torch.randint(1, n + 1, (1,), generator=g))
        seqs.append([(start + i - 1) % n + 1 for i in range(length)])
    return seqs


def _train(seed, epochs=25, precision="fp32", norm="pre"):
    gen = seed_everything(seed)
    m = SASRec(SASRecConfig(num_items=30, max_len=12, dim=32, layers=1, heads=2, dropout=0.0, norm=norm))
    seqs = _cyclic_data()
    train = [s[:-2] for s in seqs]
    vh, vt = [s[:-2] for s in seqs], [s[-2] for s in seqs]

    def validate():
        u = encode_users(m.user_vectors, vh, 12, torch.device("cpu"))
        return ranking_metrics(u, m.item_vectors().detach(), vh, vt, [1, 10], True)

    res = fit(m, training_windows(train, 12), lambda b: sasrec_loss(m, b), validate,
              FitConfig(lr=1e-2, batch_size=16, max_epochs=epochs, patience=epochs, precision=precision), gen)
    return m, res


def test_learns_next_item_rule_and_is_deterministic():
    m1, r1 = _train(0)
    assert r1.best_metrics["ndcg@1"] > 0.9  # next item = current + 1 is learnable; random would be ~0.04
    assert r1.curve[-1]["loss"] < r1.curve[0]["loss"]
    m2, r2 = _train(0)
    for k, v in m1.state_dict().items():
        torch.testing.assert_close(v, m2.state_dict()[k], rtol=0, atol=0)
    assert r1.curve[-1]["loss"] == r2.curve[-1]["loss"]


def test_post_layernorm_encoder_learns_the_rule_and_differs_from_pre():
    """norm: post (RecBole's encoder) is a different network that learns the same task."""
    m, r = _train(0, norm="post")
    assert r.best_metrics["ndcg@1"] > 0.9
    fresh = _model(norm="post")
    assert fresh.scale == 1.0 and abs(float(fresh.item_emb.weight[1:].detach().std()) - 0.02) < 0.005  # BERT init, unscaled
    seq = torch.tensor([[0, 3, 4, 5]])
    with torch.no_grad():
        assert not torch.allclose(_model(norm="post").user_vectors(seq), _model(norm="pre").user_vectors(seq))
    with pytest.raises(ValueError, match="norm"):
        _model(norm="sandwich")


def test_sampled_softmax_runs_and_learns():
    gen = seed_everything(1)
    m = SASRec(SASRecConfig(num_items=30, max_len=12, dim=32, layers=1, heads=2, dropout=0.0))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    seqs = _cyclic_data()
    first = None
    for _ in range(60):
        loss, _ = sasrec_loss(m, seqs, "sampled_softmax", 8, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < 0.5 * first


def test_bf16_training_learns_the_same_rule():
    """precision: bf16 autocasts the training forward; the model still learns, and its weights stay float32."""
    m, r = _train(0, precision="bf16")
    assert r.best_metrics["ndcg@1"] > 0.9
    assert all(v.dtype == torch.float32 for v in m.state_dict().values() if v.is_floating_point())
    with pytest.raises(ValueError, match="precision"):
        _train(0, epochs=1, precision="fp8")


def test_a_diverged_loss_stops_training_with_the_epoch_and_step():
    """A NaN loss ends the run with an error, instead of NaN weights that rank every target first."""
    from molar_core.errors import TrainingError

    m = _model()
    calls = []

    def loss_fn(batch):
        calls.append(len(batch))
        loss, parts = sasrec_loss(m, batch)
        return (loss * float("nan"), parts) if len(calls) == 3 else (loss, parts)

    with pytest.raises(TrainingError, match=r"train_id: the loss is nan at epoch 1, step 3"):
        fit(m, _cyclic_data(), loss_fn, lambda: {"ndcg@10": 0.0},
            FitConfig(batch_size=8, max_epochs=2, name="train_id"), seed_everything(0))


def test_ranking_refuses_nan_vectors():
    from molar_core.ranking import target_ranks

    users, items = torch.randn(3, 4), torch.randn(5, 4)
    assert target_ranks(users, items, None, torch.tensor([1, 2, 3])).shape == (3,)
    items[2, 1] = float("nan")
    with pytest.raises(ValueError, match="item vectors contain NaN"):
        target_ranks(users, items, None, torch.tensor([1, 2, 3]))


def test_user_vectors_do_not_hold_the_whole_hidden_state():
    """encode_users keeps every batch's user vectors until it concatenates them: a (B, D) view of the (B, L, D)
    hidden states would keep L times the memory alive (3 GB at 1e5 users in bench/scale.py)."""
    from molar_core.models.content import ContentConfig, ContentUserModel

    seq = torch.randint(1, 30, (8, 12))
    content = ContentUserModel(ContentConfig(num_items=30, input_dim=6, max_len=12, dim=16, heads=2), torch.randn(30, 6))
    for model in (_model(), content.eval()):
        with torch.no_grad():
            u = model.user_vectors(seq)
        assert u.shape == (8, 16) and u.untyped_storage().nbytes() == 8 * 16 * 4
