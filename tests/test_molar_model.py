"""The content user model and Molar's losses: shapes, alignment behaviour, and the loss definitions
against direct computations."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from molar_core.losses import bce_one_negative, cosine_info_nce, symmetric_info_nce
from molar_core.models.content import ContentConfig, ContentUserModel
from molar_core.models.molar import Molar, MolarLossConfig
from molar_core.models.sasrec import SASRec, SASRecConfig


def test_symmetric_info_nce_matches_direct_formula():
    torch.manual_seed(0)
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    got = symmetric_info_nce(a, b, 0.5)
    an, bn = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    sim = an @ bn.T / 0.5
    ref = 0.0
    for i in range(5):
        ref += -math.log(math.exp(sim[i, i]) / sum(math.exp(sim[i, j]) for j in range(5)))
        ref += -math.log(math.exp(sim[i, i]) / sum(math.exp(sim[j, i]) for j in range(5)))
    assert abs(float(got) - ref / 10) < 1e-5
    # perfectly aligned, well separated pairs give a loss near zero
    e = torch.eye(5)
    assert float(symmetric_info_nce(e, e, 0.05)) < 1e-3


def _grouped_info_nce_loop(a: torch.Tensor, b: torch.Tensor, tau: float, groups: list[int]) -> float:
    """The symmetric InfoNCE written out: row i's softmax runs over its positive and the rows of other groups."""
    an, bn = F.normalize(a.double(), dim=-1), F.normalize(b.double(), dim=-1)
    sim = (an @ bn.T / tau).tolist()
    n, total = len(groups), 0.0
    for i in range(n):
        others = [j for j in range(n) if j == i or groups[j] != groups[i]]
        total -= sim[i][i] - math.log(sum(math.exp(sim[i][j]) for j in others))  # content i against ID rows
        total -= sim[i][i] - math.log(sum(math.exp(sim[j][i]) for j in others))  # ID i against content rows
    return total / (2 * n)


def test_symmetric_info_nce_leaves_out_pairs_of_the_same_user():
    """Rows of one user (group) are not each other's negatives, in both directions; the positive stays."""
    torch.manual_seed(0)
    a, b = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8)
    groups = [0, 1, 0, 2, 1, 0]
    got = symmetric_info_nce(a, b, 0.3, torch.tensor(groups))
    assert abs(float(got.detach()) - _grouped_info_nce_loop(a.detach(), b, 0.3, groups)) < 1e-5
    assert abs(float(got.detach()) - float(symmetric_info_nce(a, b, 0.3).detach())) > 1e-3  # the mask matters
    got.backward()
    assert torch.isfinite(a.grad).all()
    # all users distinct: exactly the unmasked loss; a single user: only positives, loss 0
    distinct = torch.tensor([5, 3, 9, 0, 1, 2])
    assert torch.equal(symmetric_info_nce(a, b, 0.3, distinct), symmetric_info_nce(a, b, 0.3))
    assert float(symmetric_info_nce(a, b, 0.3, torch.zeros(6, dtype=torch.long))) == 0.0


def test_cosine_info_nce_full_and_sampled_mask_positive():
    torch.manual_seed(0)
    h, items = torch.randn(4, 8), torch.randn(10, 8)
    targets = torch.tensor([1, 2, 3, 10])
    scale = torch.tensor(1 / 0.07).log()
    full = cosine_info_nce(h, items, targets, scale)
    logits = (1 / 0.07) * F.normalize(h, dim=-1) @ F.normalize(items, dim=-1).T
    assert torch.allclose(full, F.cross_entropy(logits, targets - 1), atol=1e-5)
    g = torch.Generator().manual_seed(0)
    sampled = cosine_info_nce(h, items, targets, scale, num_negatives=200, generator=g)
    assert torch.isfinite(sampled)  # 200 draws from 10 items always hit the positives: masked, not -inf loss


def test_sampled_info_nce_matches_a_loop_and_its_gradients_are_finite():
    """A sampled negative equal to the positive is left out of that row's softmax, and the learnable scale
    still gets a finite gradient (scaling after masking sent 0 * -inf = NaN into it and the model diverged)."""
    torch.manual_seed(1)
    h, items = torch.randn(6, 8, requires_grad=True), torch.randn(12, 8)
    targets = torch.tensor([1, 2, 3, 4, 5, 12])
    scale = torch.tensor(1 / 0.07).log().requires_grad_()
    loss = cosine_info_nce(h, items, targets, scale, num_negatives=30, generator=torch.Generator().manual_seed(4))
    neg = torch.randint(1, 13, (30,), generator=torch.Generator().manual_seed(4))
    assert bool((neg.unsqueeze(0) == targets.unsqueeze(1)).any())  # the case that matters happens here
    hn, vn = F.normalize(h.detach(), dim=-1), F.normalize(items, dim=-1)
    ref = 0.0
    for i, t in enumerate(targets.tolist()):
        logits = [hn[i] @ vn[t - 1]] + [hn[i] @ vn[n - 1] for n in neg.tolist() if n != t]
        ref += -F.log_softmax(torch.stack(logits) / 0.07, 0)[0]
    assert abs(float(loss) - float(ref) / 6) < 1e-4
    loss.backward()
    assert torch.isfinite(scale.grad) and bool(torch.isfinite(h.grad).all())


def test_bce_one_negative_is_finite_and_decreases_with_margin():
    items = torch.eye(4)
    good = bce_one_negative(10 * items[[0, 1]], items, torch.tensor([1, 2]), torch.Generator().manual_seed(0))
    bad = bce_one_negative(-10 * items[[0, 1]], items, torch.tensor([1, 2]), torch.Generator().manual_seed(0))
    assert float(good) < float(bad)


def _models(hybrid=False, alpha=0.5, head=True):
    torch.manual_seed(0)
    feats = torch.randn(20, 12)
    content = ContentUserModel(ContentConfig(num_items=20, input_dim=12, max_len=8, dim=16, heads=2,
                                             adapter_hidden=32, hybrid=hybrid, dropout=0.0), feats)
    sas = SASRec(SASRecConfig(num_items=20, max_len=8, dim=24, heads=2, dropout=0.0))
    return Molar(content, MolarLossConfig(align_alpha=alpha, align_head=head), sas), sas


def test_frozen_id_model_gets_no_gradient_and_loss_has_parts():
    model, sas = _models()
    before = {k: v.clone() for k, v in sas.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss, parts = model.loss([[1, 2, 3, 4, 5], [6, 7, 8]])
    loss.backward()
    opt.step()
    assert set(parts) == {"rec", "align", "loss"}
    assert abs(parts["loss"] - (parts["rec"] + 0.5 * parts["align"])) < 1e-5
    for k, v in sas.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in sas.parameters())


def test_alignment_pulls_content_users_toward_id_users():
    model, sas = _models(alpha=1.0)
    seqs = [[(i + j) % 20 + 1 for j in range(8)] for i in range(20)]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    first = None
    for _ in range(60):
        loss, parts = model.loss(seqs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = parts["align"] if first is None else first
    assert parts["align"] < 0.5 * first


def test_hybrid_changes_item_vectors_and_padding_row_is_zero():
    """hybrid: an item vector is the adapted content plus a learnable item-id embedding that the loss trains."""
    model, _ = _models(hybrid=True, alpha=0.0)
    content = model.content
    assert content.id_emb is not None
    content_only = content.adapter(content.features[1:])
    vectors = content.item_vectors()
    assert vectors.shape == (20, 16) and not torch.allclose(vectors, content_only, atol=1e-4)
    torch.testing.assert_close(vectors, content_only + content.id_emb.weight[1:])
    loss, _ = model.loss([[1, 2, 3, 4, 5], [6, 7, 8]])
    loss.backward()
    grad = content.id_emb.weight.grad
    assert grad is not None and grad[1:].abs().sum() > 0 and torch.all(grad[0] == 0)
    table = content.item_table(torch.tensor([0, 1, 2]))
    assert torch.all(table[0] == 0)


def _alignment_targets(monkeypatch):
    """Record the (content, ID) pairs every symmetric_info_nce of Molar.loss receives."""
    import molar_core.models.molar as molar_module

    calls = []

    def recording(a, b, tau, groups=None):
        calls.append((a.detach().clone(), b.detach().clone()))
        return symmetric_info_nce(a, b, tau, groups)

    monkeypatch.setattr(molar_module, "symmetric_info_nce", recording)
    return calls


def test_frozen_id_targets_are_the_id_model_s_vectors_of_each_batch_also_for_repeated_windows(monkeypatch):
    """Every step's alignment target is the frozen SASRec's user vector of that very batch (eval mode: dropout
    off), whatever windows came before: duplicates within a batch and a window coming back in a later batch."""
    from molar_core.data.sequences import next_item_pairs

    torch.manual_seed(0)
    content = ContentUserModel(ContentConfig(num_items=20, input_dim=12, max_len=8, dim=16, heads=2,
                                             adapter_hidden=32, dropout=0.0), torch.randn(20, 12))
    sas = SASRec(SASRecConfig(num_items=20, max_len=8, dim=24, heads=2, dropout=0.3))
    model = Molar(content, MolarLossConfig(align_alpha=0.5), sas).train()
    calls = _alignment_targets(monkeypatch)
    batches = [[[1, 2, 3, 4], [1, 2, 3, 4]], [[5, 6, 7, 8, 9]], [[1, 2, 3, 4], [1, 2, 3, 4]],
               [[5, 6, 7, 8, 9], [1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12]]]
    for batch in batches:
        model.loss(batch)
    assert len(calls) == len(batches)
    sas.eval()
    for batch, (_, target) in zip(batches, calls):
        with torch.no_grad():
            ref = sas.user_vectors(next_item_pairs(batch, 8)[0])
        torch.testing.assert_close(target, ref, rtol=0, atol=1e-6)
    assert all(p.grad is None and not p.requires_grad for p in sas.parameters())


def test_item_alignment_draws_its_rows_at_random_from_the_generator():
    """With more distinct target items than align_max_rows, the aligned items are a random draw from the loss's
    generator (the same for the same seed), not always the lowest ids."""
    torch.manual_seed(0)
    content = ContentUserModel(ContentConfig(num_items=20, input_dim=12, max_len=8, dim=16, heads=2,
                                             adapter_hidden=32, dropout=0.0), torch.randn(20, 12))
    sas = SASRec(SASRecConfig(num_items=20, max_len=8, dim=24, heads=2, dropout=0.0))
    model = Molar(content, MolarLossConfig(align_alpha=0.5, align_items=True, align_max_rows=4), sas)
    looked_up = []
    sas.item_emb.register_forward_hook(lambda mod, inp, out: looked_up.append(inp[0].tolist())
                                       if inp[0].dim() == 1 else None)
    seqs = [[1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15], [16, 17, 18, 19, 20]]
    distinct = set(range(2, 21)) - {10, 16}  # every target: each sequence's items after its first

    def chosen(seed: int) -> list[int]:
        looked_up.clear()
        model.loss(seqs, torch.Generator().manual_seed(seed))
        assert len(looked_up) == 1
        return looked_up[0]

    draws = {seed: chosen(seed) for seed in range(6)}
    for seed, ids in draws.items():
        assert len(set(ids)) == 4 and set(ids) <= distinct
        assert chosen(seed) == ids  # reproducible for the seed
    assert any(sorted(ids) != [2, 3, 4, 5] for ids in draws.values())
    assert len({tuple(sorted(ids)) for ids in draws.values()}) > 1


def test_joint_trains_the_id_model_with_its_full_cross_entropy():
    """joint: SASRec's parameters move, and its loss part is the full-catalogue CE of SASRec on the same batch
    (train_id's `ce`, whatever train_id trained with)."""
    from molar_core.data.sequences import next_item_pairs
    from molar_core.losses import full_softmax_ce
    from molar_core.models.sasrec import sasrec_loss

    torch.manual_seed(0)
    content = ContentUserModel(ContentConfig(num_items=20, input_dim=12, max_len=8, dim=16, heads=2,
                                             adapter_hidden=32, dropout=0.0), torch.randn(20, 12))
    sas = SASRec(SASRecConfig(num_items=20, max_len=8, dim=24, heads=2, dropout=0.0))
    model = Molar(content, MolarLossConfig(align_alpha=0.5, joint=True), sas).train()
    seqs = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18]]
    inputs, targets = next_item_pairs(seqs, 8)
    real = targets > 0
    with torch.no_grad():
        ref = full_softmax_ce(sas.hidden(inputs)[real], sas.item_vectors(), targets[real])
        ref_stage = sasrec_loss(sas, seqs, "ce")[0]
    before = {k: v.clone() for k, v in sas.state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss, parts = model.loss(seqs)
    assert abs(parts["id_rec"] - float(ref)) < 1e-6 and abs(float(ref) - float(ref_stage)) < 1e-6
    assert abs(parts["loss"] - (parts["rec"] + parts["id_rec"] + 0.5 * parts["align"])) < 1e-5
    loss.backward()
    opt.step()
    assert all(p.requires_grad and p.grad is not None for p in sas.parameters())
    moved = [k for k, v in sas.state_dict().items() if not torch.equal(v, before[k])]
    assert "item_emb.weight" in moved and any(k.startswith("encoder.") for k in moved)


def _small(content_dim=16, sas_len=8, **loss):
    torch.manual_seed(0)
    content = ContentUserModel(ContentConfig(num_items=20, input_dim=12, max_len=8, dim=content_dim, heads=2,
                                             adapter_hidden=32, dropout=0.0), torch.randn(20, 12))
    sas = SASRec(SASRecConfig(num_items=20, max_len=sas_len, dim=16 if not loss.get("align_head", True) else 24,
                              heads=2, dropout=0.0))
    return Molar(content, MolarLossConfig(**loss), sas), content, sas


SEQS = [[1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [19, 20, 1, 2]]


@pytest.mark.parametrize("max_rows", [2048, 7])
def test_align_all_positions_is_the_info_nce_of_every_real_position(max_rows):
    """align_positions all: one pair per real position (the last min(content, SASRec max_len) ones), the ID side
    from the frozen SASRec's hidden states, positions of one sequence not each other's negatives; more pairs
    than align_max_rows are a draw from the generator."""
    from molar_core.data.sequences import next_item_pairs

    model, content, sas = _small(sas_len=6, align_alpha=0.5, align_positions="all", align_max_rows=max_rows)
    _, parts = model.loss(SEQS, torch.Generator().manual_seed(5))
    inputs, targets = next_item_pairs(SEQS, 8)
    with torch.no_grad():
        h = content.hidden(inputs)[:, -6:]
        keep = targets[:, -6:] > 0
        a, b = h[keep], sas.eval().hidden(inputs[:, -6:])[keep]
        users = [row for row, n in enumerate(keep.sum(1).tolist()) for _ in range(n)]
        assert len(a) == 4 + 2 + 6 + 3  # the 10-item sequence keeps its last 6 positions
        if len(a) > max_rows:
            idx = torch.randperm(len(a), generator=torch.Generator().manual_seed(5))[:max_rows]
            a, b, users = a[idx], b[idx], [users[i] for i in idx.tolist()]
        ref = _grouped_info_nce_loop(model.head(a), b, 0.2, users)
    assert abs(parts["align"] - ref) < 1e-5


@pytest.mark.parametrize("positions", ["last", "all"])
def test_alignment_leaves_out_the_other_windows_of_the_same_user(positions):
    """A history cut into two windows of one batch: neither window is the other's alignment negative (the loss
    is the written-out one with the mask, not the unmasked one); align_same_user_negatives restores them."""
    from molar_core.data.sequences import next_item_pairs, training_windows

    windows = training_windows([list(range(1, 18)), [6, 7, 8], [19, 20, 1, 2]], 8)
    assert [w.user for w in windows] == [0, 0, 1, 2]  # 17 items: two windows of at most 9
    model, content, sas = _small(align_alpha=0.5, align_positions=positions)
    _, parts = model.loss(windows)
    inputs, targets = next_item_pairs(windows, 8)
    with torch.no_grad():
        if positions == "last":
            a, b, users = content.user_vectors(inputs), sas.eval().user_vectors(inputs), [0, 0, 1, 2]
        else:
            keep = targets > 0
            a, b = content.hidden(inputs)[keep], sas.eval().hidden(inputs)[keep]
            users = [u for u, n in zip([0, 0, 1, 2], keep.sum(1).tolist()) for _ in range(n)]
        ref = _grouped_info_nce_loop(model.head(a), b, 0.2, users)
        unmasked = float(symmetric_info_nce(model.head(a), b, 0.2))
    assert abs(parts["align"] - ref) < 1e-5
    assert abs(parts["align"] - unmasked) > 1e-3
    model.loss_cfg = dataclasses.replace(model.loss_cfg, align_same_user_negatives=True)
    _, parts = model.loss(windows)
    assert abs(parts["align"] - unmasked) < 1e-5


def test_align_without_head_has_no_head_and_aligns_raw_vectors():
    from molar_core.data.sequences import next_item_pairs

    model, content, sas = _small(align_alpha=0.5, align_head=False)
    assert model.head is None and not any(k.startswith("head.") for k, _ in model.named_parameters())
    loss, parts = model.loss(SEQS)
    inputs, targets = next_item_pairs(SEQS, 8)
    with torch.no_grad():
        ref = symmetric_info_nce(content.user_vectors(inputs), sas.eval().user_vectors(inputs), 0.2)
    assert abs(parts["align"] - float(ref)) < 1e-5
    loss.backward()
    assert all(p.grad is not None for p in content.encoder.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="enable align_head"):
        Molar(content, MolarLossConfig(align_alpha=0.5, align_head=False),
              SASRec(SASRecConfig(num_items=20, max_len=8, dim=24, heads=2)))


@pytest.mark.parametrize("rec_loss", ["bce", "ce"])
def test_rec_loss_bce_and_ce_are_the_loss_of_the_content_hidden_states(rec_loss):
    """rec_loss bce / ce through Molar: bce_one_negative / full_softmax_ce on the content model's hidden states
    at every real position against the adapted item table (bce with the same generator state)."""
    from molar_core.data.sequences import next_item_pairs
    from molar_core.losses import full_softmax_ce

    torch.manual_seed(0)
    content = ContentUserModel(ContentConfig(num_items=20, input_dim=12, max_len=8, dim=16, heads=2,
                                             adapter_hidden=32, dropout=0.0), torch.randn(20, 12))
    model = Molar(content, MolarLossConfig(rec_loss=rec_loss))
    loss, parts = model.loss(SEQS, torch.Generator().manual_seed(9))
    inputs, targets = next_item_pairs(SEQS, 8)
    real = targets > 0
    with torch.no_grad():
        h, items = content.hidden(inputs)[real], content.item_vectors()
        ref = (bce_one_negative(h, items, targets[real], torch.Generator().manual_seed(9)) if rec_loss == "bce"
               else full_softmax_ce(h, items, targets[real]))
    assert abs(float(loss) - float(ref)) < 1e-5 and parts["rec"] == parts["loss"]
    if rec_loss == "bce":  # another generator state draws other negatives: the comparison is not vacuous
        other = bce_one_negative(h, items, targets[real], torch.Generator().manual_seed(10))
        assert abs(float(other) - float(ref)) > 1e-4
    assert torch.equal(model.scoring_form(items), items)  # dot-product scoring: vectors saved as they are


def test_item_alignment_adds_its_part():
    content = ContentUserModel(ContentConfig(num_items=20, input_dim=12, max_len=8, dim=16, heads=2,
                                             adapter_hidden=32, dropout=0.0), torch.randn(20, 12))
    sas = SASRec(SASRecConfig(num_items=20, max_len=8, dim=24, heads=2, dropout=0.0))
    model = Molar(content, MolarLossConfig(align_alpha=0.5, align_items=True), sas)
    loss, parts = model.loss([[1, 2, 3, 4, 5], [6, 7, 8]])
    assert "align_items" in parts and parts["align"] > parts["align_items"] > 0
    loss.backward()
    assert model.head.weight.grad is not None and all(p.grad is None for p in sas.parameters())


def test_sampled_negatives_adapt_only_the_touched_items_and_give_the_full_table_loss():
    """With num_negatives, a step adapts only the items of its histories, targets and negatives (the cost of a
    step no longer grows with the catalogue); losses and gradients equal those of the whole adapted table."""
    torch.manual_seed(0)
    content = ContentUserModel(ContentConfig(num_items=200, input_dim=12, max_len=8, dim=16, heads=2,
                                             adapter_hidden=32, dropout=0.0), torch.randn(200, 12))
    sas = SASRec(SASRecConfig(num_items=200, max_len=8, dim=24, heads=2, dropout=0.0)).eval()
    model = Molar(content, MolarLossConfig(align_alpha=0.5, align_items=True, num_negatives=9), sas)
    seqs = [[1, 5, 9, 200, 7], [3, 4, 150], [8, 9, 10, 11, 12, 13]]
    rows = []
    content.adapter.register_forward_hook(lambda mod, inp, out: rows.append(out.shape[0]))
    loss, parts = model.loss(seqs, torch.Generator().manual_seed(3))
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    assert rows == [len(set(sum(seqs, [])) | set(
        torch.randint(1, 201, (9,), generator=torch.Generator().manual_seed(3)).tolist()))]
    # the reference: every item adapted, same negatives, item alignment on the batch's target items
    model.zero_grad()
    from molar_core.data.sequences import next_item_pairs

    inputs, targets = next_item_pairs(seqs, 8)
    items = content.item_vectors()
    h = content.hidden(inputs, items)
    real = targets > 0
    neg = torch.randint(1, 201, (9,), generator=torch.Generator().manual_seed(3))
    rec = cosine_info_nce(h[real], items, targets[real], model.logit_scale, negatives=neg)
    ids = torch.unique(targets[real])
    align = (symmetric_info_nce(model.head(h[:, -1]), sas.user_vectors(inputs).detach(), 0.2)
             + symmetric_info_nce(model.head(items[ids - 1]), sas.item_emb(ids).detach(), 0.2))
    ref = rec + 0.5 * align
    assert abs(parts["rec"] - float(rec)) < 1e-5 and abs(float(loss) - float(ref)) < 1e-5
    ref.backward()
    for k, g in grads.items():
        torch.testing.assert_close(g, dict(model.named_parameters())[k].grad, atol=1e-5, rtol=1e-4)


def test_content_model_takes_sasrec_s_post_ln_layout():
    """`train.norm: post`: the user transformer of the content model as SASRec's default (post-LN, BERT init)."""
    torch.manual_seed(0)
    cfg = ContentConfig(num_items=50, input_dim=12, max_len=8, dim=64, heads=2, adapter_hidden=32, norm="post")
    model = ContentUserModel(cfg, torch.randn(50, 12))
    assert model.encoder.post and cfg.to_dict()["norm"] == "post"
    assert abs(model.encoder.pos.weight.std().item() - 0.02) < 0.003
    assert abs(model.encoder.blocks[0].qkv.weight.std().item() - 0.02) < 0.003
    pre = ContentUserModel(ContentConfig(num_items=50, input_dim=12, max_len=8, dim=64, heads=2, norm="pre"),
                           torch.randn(50, 12))
    assert not pre.encoder.post and pre.encoder.pos.weight.std().item() > 0.5  # nn.Embedding's N(0, 1)
    assert model.user_vectors(torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4]])).shape == (2, 64)
    with pytest.raises(ValueError, match="norm must be 'pre' or 'post'"):
        ContentUserModel(ContentConfig(num_items=50, input_dim=12, norm="mid"), torch.randn(50, 12))
