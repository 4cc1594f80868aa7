"""train_id.sparse_item_updates: SASRec's item table with sparse gradients and lazy Adam (molar_core.optim)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from molar_core.models.sasrec import SASRec, SASRecConfig, sasrec_loss
from molar_core.optim import AdamWLazyEmbeddings, weight_decay_groups
from molar_core.resume import EpochState, TrainingResume
from molar_core.training import FitConfig, fit, seed_everything
from pipeline.params import ParamsError, load_params

N_ITEMS = 500
REPO = Path(__file__).resolve().parents[1]


def _models() -> tuple[SASRec, SASRec]:
    """The same SASRec twice: a dense item table and a sparse one."""
    torch.manual_seed(0)
    dense = SASRec(SASRecConfig(num_items=N_ITEMS, max_len=8, dim=16, layers=1, heads=2, dropout=0.0))
    sparse = copy.deepcopy(dense)
    sparse.item_emb.sparse = True
    return dense, sparse


BATCH_A = [[1, 2, 3, 4], [5, 6, 7]]
BATCH_B = [[10, 11, 12], [13, 14, 15, 16]]


def _step(model: SASRec, opt: torch.optim.Optimizer, batch: list[list[int]], seed: int) -> None:
    loss, _ = sasrec_loss(model, batch, "sampled_softmax", 8, torch.Generator().manual_seed(seed))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _used_rows(batch: list[list[int]], seed: int) -> set[int]:
    negatives = torch.randint(1, N_ITEMS + 1, (8,), generator=torch.Generator().manual_seed(seed))
    return {i for s in batch for i in s} | set(negatives.tolist())


def test_first_step_equals_adamw_and_later_steps_move_only_used_rows():
    dense, sparse = _models()
    # SparseAdam adds eps to sqrt(v) before the bias correction (the Adam paper's form): at step 1 that is AdamW
    # with eps / sqrt(1 - beta2) on the item table
    rest = [q for q in dense.parameters() if q is not dense.item_emb.weight]
    opt_d = torch.optim.AdamW([{"params": rest}, {"params": [dense.item_emb.weight], "eps": 1e-8 / math.sqrt(0.001)}],
                              lr=0.01, weight_decay=0.0)
    opt_s = AdamWLazyEmbeddings(sparse, lr=0.01)
    assert sparse.item_emb.weight in opt_s.sparse.param_groups[0]["params"]
    start = sparse.item_emb.weight.detach().clone()
    _step(dense, opt_d, BATCH_A, 0)
    _step(sparse, opt_s, BATCH_A, 0)
    # one step from zero moments: AdamW moves exactly the rows with a gradient, as lazy Adam does
    for (name, a), b in zip(dense.state_dict().items(), sparse.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    after_a = sparse.item_emb.weight.detach().clone()
    moved = set((after_a != start).any(1).nonzero().flatten().tolist())
    assert moved == _used_rows(BATCH_A, 0)
    _step(dense, opt_d, BATCH_B, 1)
    _step(sparse, opt_s, BATCH_B, 1)
    only_a = sorted(_used_rows(BATCH_A, 0) - _used_rows(BATCH_B, 1))
    assert only_a
    # lazy: rows the second step did not use keep their values; AdamW's decaying momentum moves them again
    torch.testing.assert_close(sparse.item_emb.weight[only_a], after_a[only_a], rtol=0, atol=0)
    assert not torch.allclose(dense.item_emb.weight[only_a], after_a[only_a])
    # while every row that only the second step used moves (its update: test_lazy_rows_match_a_hand_computed_...)
    used_b = sorted(_used_rows(BATCH_B, 1) - _used_rows(BATCH_A, 0))
    moved_b = (sparse.item_emb.weight[used_b] != after_a[used_b]).all(1)
    assert bool(moved_b.all())


def test_lazy_rows_match_a_hand_computed_adam_update():
    """Two steps on one row, computed from the gradients by the Adam paper's update (global step count)."""
    emb = torch.nn.Embedding(4, 3, sparse=True)
    model = torch.nn.Sequential(emb)
    opt = AdamWLazyEmbeddings(model, lr=0.1)
    w0 = emb.weight.detach().clone()
    grads = []
    for target in (torch.tensor([1.0, -2.0, 0.5]), torch.tensor([-1.0, 0.5, 3.0])):
        opt.zero_grad()
        loss = ((emb(torch.tensor([2])) - target) ** 2).sum()
        grads.append(2 * (emb.weight[2].detach() - target))
        loss.backward()
        opt.step()
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.1
    w, m, v = w0[2].clone(), torch.zeros(3), torch.zeros(3)
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (v.sqrt() + eps)
    torch.testing.assert_close(emb.weight[2].detach(), w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(emb.weight[[0, 1, 3]].detach(), w0[[0, 1, 3]], rtol=0, atol=0)
    assert math.isclose(opt.param_groups[0]["lr"], 0.1)


def test_state_round_trips_through_the_resume_file(tmp_path):
    """Saved by molar_core.resume after two steps and loaded into a fresh copy, the continuation matches."""
    _, model = _models()
    opt = AdamWLazyEmbeddings(model, lr=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    for seed, batch in enumerate((BATCH_A, BATCH_B)):
        _step(model, opt, batch, seed)
        sched.step()
    resume = TrainingResume(tmp_path, "fp")
    resume.save(model, opt, sched, torch.Generator(), EpochState(1, [], 0.0, 1, 0, False, 0.0, None))
    _, copy_model = _models()
    copy_opt = AdamWLazyEmbeddings(copy_model, lr=0.01)
    copy_sched = torch.optim.lr_scheduler.LambdaLR(copy_opt, lambda step: 1.0 / (1 + step))
    assert resume.load(copy_model, copy_opt, copy_sched, torch.Generator()) is not None
    assert copy_opt.param_groups[1]["lr"] == opt.param_groups[1]["lr"] < 0.01
    for m, o, s in ((model, opt, sched), (copy_model, copy_opt, copy_sched)):
        _step(m, o, [[3, 4, 20, 21]], 7)
        s.step()
    for (name, a), b in zip(model.state_dict().items(), copy_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_fit_with_sparse_item_table_learns():
    """The training loop picks lazy Adam for a sparse table and the model learns a cyclic next-item rule."""
    gen = seed_everything(0)
    model = SASRec(SASRecConfig(num_items=30, max_len=12, dim=32, layers=1, heads=2, dropout=0.0))
    model.item_emb.sparse = True
    seqs = [[(s + i) % 30 + 1 for i in range(13)] for s in range(30)]
    result = fit(model, seqs, lambda b: sasrec_loss(model, b, "sampled_softmax", 8, gen), None,
                 FitConfig(lr=0.01, batch_size=10, max_epochs=30), gen)
    assert result.curve[-1]["loss"] < 0.3 * result.curve[0]["loss"]


@pytest.mark.parametrize(("extra", "message"), [
    ({"loss": "ce"}, "sparse_item_updates: needs loss: sampled_softmax"),
    ({"loss": "sampled_softmax", "weight_decay": 0.1}, "sparse_item_updates: lazy Adam applies no weight decay"),
])
def test_sparse_item_updates_needs_sampled_softmax_and_no_weight_decay(extra, message):
    with pytest.raises(ParamsError, match=message):
        load_params(REPO / "params.yaml", overrides={"train_id": {"sparse_item_updates": True, **extra}})


def test_train_id_stage_trains_and_refits_with_lazy_adam(small_workspace, ml_small, tmp_path, monkeypatch):
    """The stage turns the item table sparse for the early-stopped run and the refit, and saves a loadable model."""
    import shutil

    import molar_core.training as training
    from molar_core.models.sasrec import load_sasrec
    from pipeline import paths
    from stages import train_id
    from tests.conftest import small_params

    made = []

    class Spy(AdamWLazyEmbeddings):
        def __init__(self, model, **kw):
            made.append(model.item_emb.sparse)
            super().__init__(model, **kw)

    monkeypatch.setattr(training, "AdamWLazyEmbeddings", Spy)
    root = tmp_path / "ws"
    shutil.copytree(small_workspace, root)
    p = small_params(ml_small, max_epochs=2, loss="sampled_softmax", num_negatives=16, sparse_item_updates=True,
                     refit=True)
    torch.set_num_threads(1)
    config = train_id.run(p.train_id, p.protocol, root)
    assert made == [True, True]  # the early-stopped run, then the refit
    assert config["params"]["sparse_item_updates"] and config["refit"]["epochs"] == config["best_epoch"]
    model = load_sasrec(root / "artifacts" / "sasrec")
    assert not model.item_emb.sparse and torch.isfinite(model.item_vectors()).all()
    assert not list((root / paths.RESUME_DIR).rglob("*.safetensors"))  # both resume states cleared once saved


class _Tiny(torch.nn.Module):
    """A weight matrix, an embedding table, a LayerNorm and a learnable scalar (as Molar's logit scale)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)
        self.emb = torch.nn.Embedding(5, 4)
        self.norm = torch.nn.LayerNorm(4)
        with torch.no_grad():
            self.norm.weight.fill_(1.5)
            self.norm.bias.fill_(0.5)
        self.scale = torch.nn.Parameter(torch.tensor(2.0))


def _zero_gradient_loss(model: torch.nn.Module):
    return lambda batch: (sum((p * 0).sum() for p in model.parameters()), {"loss": 0.0})


def _spared_and_decayed(model: _Tiny, before: dict[str, torch.Tensor], shrink: float) -> None:
    after = {k: v.detach() for k, v in model.named_parameters()}
    for name in ("lin.bias", "norm.weight", "norm.bias", "scale"):  # ndim < 2: no decay, and no gradient
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=0, msg=name)
    for name in ("lin.weight", "emb.weight"):  # AdamW's decoupled decay: w <- w (1 - lr wd) with a zero gradient
        torch.testing.assert_close(after[name], before[name] * shrink, msg=name)


def test_fit_spares_biases_norm_gains_and_scalars_from_weight_decay():
    torch.manual_seed(0)
    model = _Tiny()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    fit(model, [[1, 2]], _zero_gradient_loss(model), None,
        FitConfig(lr=0.1, weight_decay=0.5, batch_size=1, max_epochs=1), torch.Generator().manual_seed(0))
    _spared_and_decayed(model, before, 1 - 0.1 * 0.5)


def test_lazy_adam_spares_biases_norm_gains_and_scalars_from_weight_decay():
    torch.manual_seed(0)
    model = _Tiny()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = AdamWLazyEmbeddings(model, lr=0.1, weight_decay=0.5)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    _spared_and_decayed(model, before, 1 - 0.1 * 0.5)


def _group_names(model: torch.nn.Module, groups: list[dict]) -> list[tuple[set[str], float]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [({names[id(p)] for p in g["params"]}, g["weight_decay"]) for g in groups]


SASREC_MATRICES = {"item_emb.weight", "encoder.pos.weight", "encoder.blocks.0.qkv.weight",
                   "encoder.blocks.0.proj.weight", "encoder.blocks.0.ff.0.weight", "encoder.blocks.0.ff.3.weight"}
SASREC_SPARED = {"encoder.blocks.0.ln1.weight", "encoder.blocks.0.ln1.bias", "encoder.blocks.0.qkv.bias",
                 "encoder.blocks.0.proj.bias", "encoder.blocks.0.ln2.weight", "encoder.blocks.0.ln2.bias",
                 "encoder.blocks.0.ff.0.bias", "encoder.blocks.0.ff.3.bias", "encoder.ln.weight", "encoder.ln.bias"}


def test_weight_decay_groups_of_sasrec():
    model = SASRec(SASRecConfig(num_items=10, max_len=5, dim=8, layers=1, heads=2))
    assert _group_names(model, weight_decay_groups(model.parameters(), 0.1)) == [(SASREC_MATRICES, 0.1),
                                                                                  (SASREC_SPARED, 0.0)]
    model.item_emb.sparse = True  # lazy Adam: the sparse table in its own SparseAdam group, the rest as above
    opt = AdamWLazyEmbeddings(model, lr=0.01)
    assert _group_names(model, opt.dense.param_groups) == [(SASREC_MATRICES - {"item_emb.weight"}, 0.0),
                                                           (SASREC_SPARED, 0.0)]
    assert opt.sparse.param_groups[0]["params"] == [model.item_emb.weight]


@pytest.mark.parametrize("joint", [False, True])
def test_weight_decay_groups_of_molar(joint):
    """Molar: the logit scale and every norm gain and bias are spared; a frozen SASRec is not optimised at all."""
    from molar_core.models.content import ContentConfig, ContentUserModel
    from molar_core.models.molar import Molar, MolarLossConfig

    sas = SASRec(SASRecConfig(num_items=10, max_len=5, dim=8, layers=1, heads=2))
    content = ContentUserModel(ContentConfig(num_items=10, input_dim=4, max_len=5, dim=8, layers=1, heads=2,
                                             adapter_hidden=6, hybrid=True), torch.randn(10, 4))
    model = Molar(content, MolarLossConfig(align_alpha=0.5, joint=joint), sas)
    (decay, rate), (spared, zero) = _group_names(model, weight_decay_groups(model.parameters(), 0.1))
    assert (rate, zero) == (0.1, 0.0)
    content_matrices = {"content.adapter.1.weight", "content.adapter.4.weight", "content.id_emb.weight",
                        *(f"content.{n}" for n in SASREC_MATRICES - {"item_emb.weight"})}
    content_spared = {"content.adapter.0.weight", "content.adapter.0.bias", "content.adapter.1.bias",
                      "content.adapter.4.bias", *(f"content.{n}" for n in SASREC_SPARED)}
    id_matrices = {f"id_model.{n}" for n in SASREC_MATRICES} if joint else set()
    id_spared = {f"id_model.{n}" for n in SASREC_SPARED} if joint else set()
    assert decay == content_matrices | {"head.weight"} | id_matrices
    assert spared == content_spared | {"logit_scale", "head.bias"} | id_spared
