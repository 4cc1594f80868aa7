"""The training optimiser: AdamW, with lazy (row-sparse) Adam for embedding tables that produce sparse gradients.

With a million items, AdamW's update of SASRec's item table (64M parameters, its gradient and two moments,
every step) is four fifths of a sampled-softmax step on a CPU (bench/train_step.py), although a step touches only
the rows of its batch, its targets and its sampled negatives. `nn.Embedding(sparse=True)` tables get torch's SparseAdam instead: only rows with a
gradient move, and only their moments are updated (TensorFlow's LazyAdam; an untouched row keeps its moments
instead of decaying them). Everything else keeps AdamW. One optimiser object, so the learning-rate scheduler,
checkpointing (molar_core.resume) and the training loop see a plain torch optimiser.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


def weight_decay_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict]:
    """AdamW parameter groups of the trainable `params`: weight matrices and embedding tables (ndim >= 2) decay;
    biases, norm gains and scalars such as Molar's learnable logit scale (ndim < 2) do not. Decay on those is no
    capacity penalty: it pulls a LayerNorm's output scale toward 0 and the logit scale toward temperature 1.
    Empty groups are left out."""
    params = [p for p in params if p.requires_grad]
    groups = ({"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def sparse_parameters(model: nn.Module) -> set[int]:
    """ids of the weights of the model's embedding tables set to produce sparse gradients."""
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}


class AdamWLazyEmbeddings(torch.optim.Optimizer):
    """AdamW over the dense parameters (no decay on biases, norm gains and scalars: weight_decay_groups),
    SparseAdam over the sparse embedding tables, with one state dict whose parameter numbering is the model's
    parameter order, as a single torch optimiser's would be."""

    def __init__(self, model: nn.Module, lr: float, weight_decay: float = 0.0):
        params = [p for p in model.parameters() if p.requires_grad]
        sparse = sparse_parameters(model)
        self._order = params
        dense_params = [p for p in params if id(p) not in sparse]
        sparse_params = [p for p in params if id(p) in sparse]
        if sparse_params and weight_decay:
            raise ValueError("weight decay is not applied to sparse embedding tables: set weight_decay to 0 "
                             "or turn off sparse updates")
        self.dense = (torch.optim.AdamW(weight_decay_groups(dense_params, weight_decay), lr=lr,
                                        weight_decay=weight_decay) if dense_params else None)
        self.sparse = torch.optim.SparseAdam(sparse_params, lr=lr) if sparse_params else None
        self._inner = [o for o in (self.dense, self.sparse) if o is not None]
        super().__init__(params, {"lr": lr})
        self.param_groups = [g for o in self._inner for g in o.param_groups]  # the scheduler sets their lr

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for o in self._inner:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self._inner:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """{"state": {model parameter index: slots}, "param_groups": [...]} over both optimisers."""
        index = {id(p): i for i, p in enumerate(self._order)}
        state, groups = {}, []
        for o in self._inner:
            for group in o.param_groups:
                groups.append({**{k: v for k, v in group.items() if k != "params"},
                               "params": [index[id(p)] for p in group["params"]]})
                for p in group["params"]:
                    if o.state.get(p):
                        state[index[id(p)]] = dict(o.state[p])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict["param_groups"]
        if len(saved) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"]) for s, g in zip(saved, self.param_groups)):
            raise ValueError("optimizer state does not match this model's dense and sparse parameters")
        for s, group in zip(saved, self.param_groups):
            group.update({k: v for k, v in s.items() if k != "params"})
            owner = next(o for o in self._inner if any(g is group for g in o.param_groups))
            for i, p in zip(s["params"], group["params"]):
                slots = state_dict["state"].get(i) or state_dict["state"].get(str(i))
                if slots:
                    slots = dict(slots)
                    if owner is self.sparse:  # SparseAdam counts steps in a Python int
                        slots["step"] = int(slots["step"])
                    owner.state[p] = {k: v.to(p.device) if torch.is_tensor(v) and k != "step" else v
                                      for k, v in slots.items()}
