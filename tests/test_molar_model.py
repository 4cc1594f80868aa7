"""The content user model and Molar's losses: shapes, alignment behaviour, and the loss definitions
against direct computations."""

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
    model, _ = _models(hybrid=True, alpha=0.0)
    table = model.content.item_table(torch.tensor([0, 1, 2]))
    assert torch.all(table[0] == 0)
    assert model.content.item_vectors().shape == (20, 16)


def test_cached_frozen_id_vectors_equal_fresh_ones():
    """The per-sequence cache of frozen SASRec user vectors changes nothing but speed, also past its size bound."""
    seqs = [[(3 * i + j) % 20 + 1 for j in range(2 + i % 6)] for i in range(12)]
    model, sas = _models(alpha=1.0)
    sas.eval()
    from molar_core.data.sequences import next_item_pairs

    inputs, _ = next_item_pairs(seqs, 8)
    with torch.no_grad():
        ref = sas.user_vectors(inputs)
    model.loss_cfg.id_cache_size = 5
    first = model._frozen_id_users(seqs, inputs)
    again = model._frozen_id_users(seqs, inputs)  # 5 from the cache, 7 recomputed
    assert len(model._id_cache) == 5
    assert torch.allclose(first, ref, atol=1e-6) and torch.allclose(again, ref, atol=1e-6)
    # the padded width differs between batches; the cached vector does not depend on it
    short, _ = next_item_pairs(seqs[:3], 8)
    assert torch.allclose(model._frozen_id_users(seqs[:3], short), ref[:3], atol=1e-5)


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
    align = (symmetric_info_nce(model.head(h[:, -1]), model._frozen_id_users(seqs, inputs), 0.2)
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
    pre = ContentUserModel(ContentConfig(num_items=50, input_dim=12, max_len=8, dim=64, heads=2), torch.randn(50, 12))
    assert not pre.encoder.post and pre.encoder.pos.weight.std().item() > 0.5  # nn.Embedding's N(0, 1)
    assert model.user_vectors(torch.tensor([[0, 0, 3, 4], [1, 2, 3, 4]])).shape == (2, 64)
    with pytest.raises(ValueError, match="norm must be 'pre' or 'post'"):
        ContentUserModel(ContentConfig(num_items=50, input_dim=12, norm="mid"), torch.randn(50, 12))
