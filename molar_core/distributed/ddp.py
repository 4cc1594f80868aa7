"""Data-parallel training with plain `torch.distributed` (gloo on CPU, nccl on GPU) whose gradients equal the
one-process gradients.

How a step is split. Every rank holds the same training windows and the same seeded generator, so every rank
draws the same global batch (`fit`'s `torch.randperm`) and, inside the loss, the same random numbers (sampled
negatives, BCE negatives, `align_max_rows` subsets are drawn for the *global* batch, then sliced). Rank r keeps
the contiguous rows `[r * ceil(B / W), (r + 1) * ceil(B / W))` of the batch (`DataParallel.rows`): the last
ranks' slices may be shorter or empty on a last, small batch. A loss that is a mean over the batch's real
positions becomes (sum over the rank's positions) / (the global count); every rank knows the global batch, so
the count needs no communication. The sum of the ranks' losses is then the one-process loss, term by term. The
contrastive alignment (`molar_core.losses.symmetric_info_nce_sharded`) gathers the other ranks' rows *with*
gradient (`DataParallel.gather_rows`, padded to the longest slice) so that each rank's rows see every in-batch
negative, in both directions, with labels offset by the slice start and the same-user mask on the gathered user
ids; the gather's backward sends every rank's gradient of a row to the rank that computed it. Terms that are not
per row (Molar's item alignment) are computed whole on every rank and weighted 1 / W.

Why not `DistributedDataParallel`. DDP synchronises only the gradients of what runs through the wrapped
module's `forward()` (its reducer is armed by `forward`); the losses here call model methods directly
(`hidden`, `item_table`, `user_vectors`, the frozen ID model), parameters that a step does not use are common
(the ID model in joint mode, `logit_scale` outside InfoNCE, an empty last slice uses none), and SASRec's
sparse item table (lazy Adam) has sparse gradients, which DDP's buckets do not take. So the gradients are
all-reduced here, after `backward()` (`DataParallel.sync_gradients`): dense ones summed in flat buckets, sparse
ones gathered row by row; a parameter that has no gradient on any rank keeps `None`, as it would in one process
(AdamW then skips it). The losses are sums of the ranks' shares, so the summed gradient *is* the one-process
gradient (no world-size factor). It equals one process up to floating-point summation order, not bit for bit
(tests/test_ddp.py: first-step gradients within 1e-6 of the largest entry in float32, 1e-13 in float64; weights
after 3 epochs within 1e-10 in float64; in float32, parameters whose true gradient is 0, such as attention key
biases, move on rounding noise that Adam rescales and differ by ~1e-4); two runs at one world size are
bit-identical.

A loss function that does not know about sharding (it never calls `DataParallel.rows`) still trains correctly:
every rank then computes the whole batch, and the gradients are averaged instead of summed (no speed-up; a
warning says so).

Dropout: each rank draws its masks from its own stream, seeded per epoch from the shared torch RNG plus the
rank (`DataParallel.rank_rng`), so the ranks' masks are independent and the shared state that resume files
store is the same on every rank. With dropout, a run at world size W is therefore a different (equally valid)
draw than a one-process run; with dropout 0 it is the same computation.

A world size of 1 is no data parallelism: `current()` returns None, and everything runs the one-process code.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

_ACTIVE: contextvars.ContextVar[DataParallel | None] = contextvars.ContextVar("molar_data_parallel", default=None)
_CACHE: dict[tuple[int, int, int], DataParallel] = {}
BUCKET_ELEMENTS = 1 << 24  # dense gradients are all-reduced in flat buckets of at most this many elements


def _dist():
    import torch.distributed as dist

    return dist


def current() -> DataParallel | None:
    """The data-parallel context of this process: None unless torch.distributed is initialised with a world
    size above 1."""
    dist = _dist()
    if not dist.is_available() or not dist.is_initialized():
        return None
    world = dist.get_world_size()
    if world <= 1:
        return None
    key = (id(dist.group.WORLD), dist.get_rank(), world)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = DataParallel(dist.get_rank(), world)
    return _CACHE[key]


def active() -> DataParallel | None:
    """The context a loss function shards its batch for: set only inside `DataParallel.sharding()` (fit's
    training step), so a loss computed elsewhere (evaluation, a stage's own code) stays a one-process loss."""
    return _ACTIVE.get()


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows [start, stop) of a batch of `n` rows that `rank` of `world_size` takes: contiguous slices of
    ceil(n / world_size) rows; the last ranks' may be shorter or empty."""
    per = math.ceil(n / world_size) if n else 0
    start = min(n, rank * per)
    return start, min(n, start + per)


def _all_gather_blocks(padded: torch.Tensor, world_size: int) -> torch.Tensor:
    padded = padded.contiguous()
    blocks = [torch.empty_like(padded) for _ in range(world_size)]
    _dist().all_gather(blocks, padded)
    return torch.cat(blocks)


class _GatherRows(torch.autograd.Function):
    """All ranks' (equally long, padded) row blocks, concatenated; backward sums every rank's gradient of the
    whole result (one all-reduce) and keeps this rank's block: the gradient of the sum of all ranks' losses
    with respect to this rank's rows. (torch.distributed.nn.functional.all_gather does the same with a
    reduce-scatter, all-to-all on gloo; it is deprecated in recent torch.)"""

    @staticmethod
    def forward(ctx, padded: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
        ctx.rank, ctx.rows = rank, len(padded)
        return _all_gather_blocks(padded, world_size)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()
        _dist().all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None, None


@dataclass
class DataParallel:
    rank: int
    world_size: int
    sharded: bool = field(default=False, repr=False)  # the current step's loss took its slice (rows())
    _warned: bool = field(default=False, repr=False)

    # --- what a loss function uses -------------------------------------------------------------------------
    def rows(self, n: int) -> tuple[int, int]:
        """This rank's rows [start, stop) of a global batch of `n` rows; marks the step as sharded."""
        self.sharded = True
        return shard_range(n, self.rank, self.world_size)

    def gather_rows(self, x: torch.Tensor, grad: bool = True) -> tuple[torch.Tensor, int]:
        """Every rank's rows of `x` (n_r, ...) concatenated in rank order, and where this rank's rows start.
        Slices of different lengths are padded for the collective and cut back after it. With `grad` (and `x`
        requiring grad), the result carries gradient back to each rank's own rows (the gather's backward sums
        every rank's gradient of a row on the rank that owns it): its backward is a collective, so every rank
        must call backward on a loss that depends on the result, and `x` must require grad on every rank or
        on none (an empty slice from the model does)."""
        sizes = self.all_sizes(len(x), x.device)
        longest = max(sizes)
        padded = x if len(x) == longest else torch.cat([x, x.new_zeros((longest - len(x), *x.shape[1:]))])
        if grad and x.requires_grad:
            gathered = _GatherRows.apply(padded, self.rank, self.world_size)
        else:
            gathered = _all_gather_blocks(padded, self.world_size)
        out = torch.cat([gathered[r * longest:r * longest + s] for r, s in enumerate(sizes)])
        return out, sum(sizes[:self.rank])

    def all_sizes(self, n: int, device: torch.device | str = "cpu") -> list[int]:
        dist = _dist()
        mine = torch.tensor([n], dtype=torch.long, device=self._device(device))
        sizes = [torch.zeros_like(mine) for _ in range(self.world_size)]
        dist.all_gather(sizes, mine)
        return [int(s) for s in sizes]

    # --- what fit uses ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def sharding(self) -> Iterator[DataParallel]:
        """A training step: inside it `active()` is this context, and `sharded` records whether the loss took
        its slice (rows())."""
        self.sharded = False
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def reduce_parts(self, loss: torch.Tensor, parts: dict[str, float]) -> tuple[float, dict[str, float]]:
        """The global loss and loss parts of a step: the ranks' shares summed (a sharded loss) or averaged (a
        loss every rank computed over the whole batch). Also checks that every rank sharded alike."""
        dist = _dist()
        keys = list(parts)
        values = torch.tensor([1.0 if self.sharded else 0.0, float(loss.detach()), *(parts[k] for k in keys)],
                              dtype=torch.float64, device=self._device(loss.device))
        dist.all_reduce(values)
        flags = float(values[0])
        if flags not in (0.0, float(self.world_size)):
            raise RuntimeError(f"data-parallel step: {int(flags)} of {self.world_size} ranks sharded the batch; "
                               f"every rank must run the same loss")
        if not self.sharded:
            values = values / self.world_size
            if not self._warned and self.rank == 0:
                warnings.warn("data-parallel fit: the loss function does not shard its batch (it never calls "
                              "DataParallel.rows), so every rank computes the whole batch and gradients are "
                              "averaged: correct, but no faster than one process", stacklevel=3)
            self._warned = True
        out = values.tolist()
        return out[1], dict(zip(keys, out[2:]))

    def sync_gradients(self, model: nn.Module) -> None:
        """All-reduce the gradients of the model's trainable parameters after backward: summed for a sharded
        loss, averaged otherwise (every rank computed the same loss). A parameter without a gradient on every
        rank keeps None; one with a gradient on some ranks gets the others' as zeros."""
        from molar_core.optim import sparse_parameters

        dist = _dist()
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            return
        device = self._device(params[0].device)
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
        dist.all_reduce(has, op=dist.ReduceOp.MAX)
        sparse_ids = sparse_parameters(model)
        dense: list[nn.Parameter] = []
        for p, h in zip(params, has.tolist()):
            if not h:
                continue
            if id(p) in sparse_ids:
                p.grad = self._sum_sparse(p)
            else:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                elif p.grad.is_sparse:
                    p.grad = p.grad.to_dense()
                dense.append(p)
        for bucket in self._buckets(dense):
            flat = torch.cat([p.grad.reshape(-1) for p in bucket])
            dist.all_reduce(flat)
            offset = 0
            for p in bucket:
                n = p.grad.numel()
                p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
                offset += n
        if not self.sharded:
            for p, h in zip(params, has.tolist()):
                if h:
                    p.grad.div_(self.world_size)

    def _sum_sparse(self, p: nn.Parameter) -> torch.Tensor:
        """The sum over ranks of a sparse (row) gradient: every rank's rows and values, concatenated."""
        dim = p.shape[1:]
        if p.grad is None:
            idx = torch.zeros(0, dtype=torch.long, device=p.device)
            val = torch.zeros((0, *dim), dtype=p.dtype, device=p.device)
        else:
            g = p.grad.coalesce() if p.grad.is_sparse else p.grad.to_sparse(1).coalesce()
            idx, val = g.indices()[0], g.values()
        all_idx, _ = self.gather_rows(idx, grad=False)
        all_val, _ = self.gather_rows(val, grad=False)
        return torch.sparse_coo_tensor(all_idx.unsqueeze(0), all_val, p.shape, check_invariants=False).coalesce()

    @staticmethod
    def _buckets(params: list[nn.Parameter]) -> Iterator[list[nn.Parameter]]:
        bucket: list[nn.Parameter] = []
        size = 0
        for p in params:
            if bucket and (size + p.numel() > BUCKET_ELEMENTS or p.grad.dtype != bucket[0].grad.dtype
                           or p.grad.device != bucket[0].grad.device):
                yield bucket
                bucket, size = [], 0
            bucket.append(p)
            size += p.numel()
        if bucket:
            yield bucket

    def broadcast_module(self, model: nn.Module) -> None:
        """Rank 0's parameters and buffers into every rank's model (in place)."""
        dist = _dist()
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(t.data, src=0)

    def broadcast_object(self, obj, device: torch.device | str = "cpu"):
        """Rank 0's picklable `obj` on every rank."""
        dist = _dist()
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self._device(device) if self._nccl() else None)
        return box[0]

    def broadcast_generator(self, generator: torch.Generator) -> None:
        """Rank 0's state of a CPU generator (and of the global torch RNG) on every rank."""
        dist = _dist()
        for get, put in ((generator.get_state, generator.set_state), (torch.get_rng_state, torch.set_rng_state)):
            state = get()
            buf = state.to(self._device("cpu"))
            dist.broadcast(buf, src=0)
            put(buf.cpu())

    def check_same(self, what: str, value: int) -> None:
        """Raise on every rank unless `value` is the same on all of them."""
        values = self.all_sizes(int(value))
        if len(set(values)) > 1:
            raise RuntimeError(f"data-parallel ranks disagree on {what}: {values}")

    @contextlib.contextmanager
    def rank_rng(self, device: torch.device) -> Iterator[None]:
        """A torch RNG stream of this rank's own (for dropout) for the block, seeded from one draw of the shared
        global stream; the shared stream continues after the block as on every other rank."""
        seed = int(torch.randint(0, 2 ** 62, (1,)))
        devices = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + self.rank)
            yield

    def _nccl(self) -> bool:
        return _dist().get_backend() == "nccl"

    def _device(self, device: torch.device | str) -> torch.device:
        """Where a collective's small tensors live: the GPU for nccl, else where they are."""
        if self._nccl():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device(device) if str(device) != "meta" else torch.device("cpu")
