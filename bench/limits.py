"""How close embed, train and evaluate come to this machine's limits: FLOPs and bytes each needs, the matmul and
memory-bandwidth ceilings measured here, and the achieved fraction.

    python -m bench.limits [--threads 2] [--data ../shared/datasets/ml-100k] [--json PATH]

Workloads at the default params (params.yaml):
- embed: the `sentence` encoder's forward (MiniLM-L6, batch 32) over 512 ML-100K item texts;
- train: one SASRec training step (batch 128 x 50 positions, dim 64, full softmax over 1,682 items, AdamW);
- evaluate: full-ranking FAISS Flat search of 8,192 users over 100,000 items x 64, in the calls search_masked
  makes (evaluate.batch_size users, at least FAISS's matrix-product minimum: 2,000 at dim 64).
FLOPs are counted by torch's FlopCounterMode over the real calls (embed, train) or exactly (2 x users x items x
dim for the search). Bytes are the least traffic the workload needs: weights read once per batch, for training
also gradients, AdamW state and the activations saved for backward (measured with saved-tensor hooks), for
search the item matrix once per user batch. Targets: >= 40% of the fp32 matmul ceiling in the
embedding forward, >= 15% in the training step.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common import ROOT, add_json_option, markdown_table, write_result
from bench.machine import best_seconds, matmul_peak, memory_bandwidth
from molar_core.data.synthetic import catalogue, generate, user_queries
from molar_core.encoders import EncoderConfig, build_encoder
from molar_core.index import blas_batch, build_index, search_masked
from molar_core.models.sasrec import SASRec, sasrec_loss
from pipeline.params import Params
from pipeline.configs import sasrec_config

TARGETS = {"embed": 0.40, "train": 0.15}


def counted_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def embed_workload(data: Path, batch: int, n: int = 512) -> dict:
    import tempfile

    from bench.embed import prepared_items

    items = prepared_items(data, Path(tempfile.mkdtemp(prefix="molar-bench-data-")))
    texts = items["text"].to_list()[:n]
    cfg = Params().embed
    enc = build_encoder(EncoderConfig(**cfg.model_dump(exclude={"shard_size", "engine", "ray"})))
    enc.batch_size = batch
    none = [None] * len(texts)
    seconds = best_seconds(lambda: enc.encode(texts, none), reps=2)
    flops = counted_flops(lambda: enc.encode(texts, none))
    weights = sum(p.numel() * p.element_size() for p in enc.model.parameters())
    bytes_ = weights * -(-n // batch) + n * enc.dim * 4
    return {"name": f"embed: {cfg.encoder} encoder forward, {n} items, batch {batch}", "flops": flops,
            "bytes": bytes_, "seconds": seconds, "key": "embed"}


def train_workload(steps: int) -> dict:
    p = Params().train_id
    data = generate("collaborative", users=943, items=1682, length=p.max_len + 1, feature_dim=8, seed=0)
    batches = [data.sequences[i:i + p.batch_size] for i in range(0, len(data.sequences), p.batch_size)][:-1]
    torch.manual_seed(0)
    model = SASRec(sasrec_config(p, 1682))  # the architecture train_id builds (post-LN by default)
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    model.train()

    def step(i: int = 0) -> None:
        loss, _ = sasrec_loss(model, batches[i % len(batches)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        flops = counted_flops(step)
    params = sum(q.numel() for q in model.parameters())
    bytes_ = params * 4 * 7 + 2 * sum(saved)  # w read, grad write, AdamW m/v read+write, w write; acts in + out
    for i in range(3):
        step(i)
    t = time.perf_counter()
    for i in range(steps):
        step(i)
    return {"name": f"train: SASRec step, batch {p.batch_size} x {p.max_len}, dim {p.dim}, {p.loss} over 1,682 items",
            "flops": flops, "bytes": bytes_, "seconds": (time.perf_counter() - t) / steps, "key": "train"}


def evaluate_workload(items: int = 100_000, users: int = 8192, dim: int = 64) -> dict:
    vecs = catalogue(items, dim, seed=0)
    queries = user_queries(vecs, users, seed=1)
    index, _ = build_index(vecs, "Flat", use_gpu="never")
    batch = max(Params().evaluate.batch_size, blas_batch(index))  # what search_masked sends a call
    seconds = best_seconds(lambda: search_masked(index, queries, None, 10, batch), reps=2)
    return {"name": f"evaluate: FAISS Flat top-10, {users:,} users x {items:,} items x {dim}, batch {batch}",
            "flops": 2 * users * items * dim, "bytes": -(-users // batch) * items * dim * 4 + users * dim * 4,
            "seconds": seconds, "key": "evaluate"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "ml-100k")
    ap.add_argument("--steps", type=int, default=20)
    add_json_option(ap, "the ceilings and every workload's numbers")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    peak, bw = matmul_peak(torch.float32), memory_bandwidth()
    ridge = peak / bw
    rows = [embed_workload(args.data, Params().embed.batch_size), train_workload(args.steps), evaluate_workload()]
    for r in rows:
        intensity = r["flops"] / r["bytes"]
        achieved = r["flops"] / r["seconds"] / 1e9
        roof = min(peak, intensity * bw)
        r.update(intensity=intensity, bound="compute" if intensity > ridge else "memory", gflops=achieved,
                 of_peak=achieved / peak, of_roofline=achieved / roof, target=TARGETS.get(r["key"]))
    result = {"threads": args.threads, "matmul_peak_gflops": peak, "bandwidth_gbs": bw, "ridge_flop_per_byte": ridge,
              "rows": rows}
    print(markdown(result))
    if args.json is not None:
        write_result(args.json, result)


def markdown(result: dict) -> str:
    """The ceilings and the table the script prints, and docs/performance.md renders from
    bench/results/limits.json."""
    lines = []
    for r in result["rows"]:
        t = r["target"]
        verdict = "" if t is None else f">= {t:.0%}: {'met' if r['of_peak'] >= t else 'NOT met'}"
        lines.append((r["name"], f"{r['flops'] / 1e9:.2f}", f"{r['bytes'] / 1e6:,.1f}", f"{r['intensity']:.1f}",
                      r["bound"], f"{r['seconds'] * 1e3:,.1f}", f"{r['gflops']:.1f}", f"{r['of_peak']:.0%}",
                      f"{r['of_roofline']:.0%}", verdict))
    return (f"{result['threads']} thread(s): fp32 matmul ceiling {result['matmul_peak_gflops']:.0f} GFLOP/s "
            f"(2048^3), memory bandwidth {result['bandwidth_gbs']:.1f} GB/s (1 GiB copy); ridge point "
            f"{result['ridge_flop_per_byte']:.1f} FLOP/byte\n\n"
            + markdown_table(["workload", "GFLOP", "MB moved (least)", "FLOP/byte", "bound by", "ms", "GFLOP/s",
                              "of matmul ceiling", "of roofline", "target"], lines) + "\n")


if __name__ == "__main__":
    main()
