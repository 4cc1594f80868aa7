"""Training-step speed of the user models on ML-100K-sized batches: our choices against the plain ones.

    python -m bench.train_step [--steps 30] [--threads 2] [--json PATH]

Rows (each a ratio against its baseline, measured in this process on the same batches):
- SASRec step with molar's Dropout (uniform draw) vs torch.nn.Dropout (bernoulli_).
- Content-model step with the adapter run once per catalogue item vs once per history position.
- Molar step (alignment to a frozen SASRec, its user vectors computed every step) vs the content step alone.
- SASRec sampled-softmax step (256 negatives) over a large catalogue (--items, 1e6 by default; random sequences)
  with `train_id.sparse_item_updates` (sparse item-table gradients, lazy Adam) vs AdamW over the whole table.
Synthetic sequences with ML-100K's shape (943 users, 1,682 items, windows of 51) keep it data-free.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import add_json_option, markdown_table, write_result
from molar_core.data.synthetic import generate
from molar_core.models.content import ContentConfig, ContentUserModel
from molar_core.models.molar import Molar, MolarLossConfig
from molar_core.models.sasrec import SASRec, SASRecConfig, sasrec_loss
from molar_core.optim import AdamWLazyEmbeddings


def timed_steps(model: torch.nn.Module, loss_fn, batches, steps: int, lazy: bool = False) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = AdamWLazyEmbeddings(model, lr=1e-3) if lazy else torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    model.train()
    for b in batches[:2]:  # warm-up
        loss_fn(b)[0].backward()
    t = time.perf_counter()
    for i in range(steps):
        loss, _ = loss_fn(batches[i % len(batches)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t) / steps


def swap_dropout(model: torch.nn.Module) -> torch.nn.Module:
    from molar_core.models.causal_transformer import Dropout

    for name, child in model.named_children():
        if isinstance(child, Dropout):
            setattr(model, name, torch.nn.Dropout(child.p))
        else:
            swap_dropout(child)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--items", type=int, default=1_000_000, help="catalogue of the sampled-softmax row")
    ap.add_argument("--large-steps", type=int, default=10)
    add_json_option(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = generate("collaborative", users=943, items=1682, length=51, feature_dim=384, seed=0)
    batches = [data.sequences[i:i + 128] for i in range(0, len(data.sequences), 128)]
    rows = []

    def sasrec(plain: bool) -> float:
        torch.manual_seed(0)
        m = SASRec(SASRecConfig(num_items=1682, max_len=50))
        m = swap_dropout(m) if plain else m
        return timed_steps(m, lambda b: sasrec_loss(m, b), batches, args.steps)

    rows.append(("SASRec step: molar Dropout vs nn.Dropout", sasrec(False), sasrec(True)))

    feats = torch.from_numpy(data.features)

    def content(once: bool, align: bool = False) -> float:
        torch.manual_seed(0)
        c = ContentUserModel(ContentConfig(num_items=1682, input_dim=384, max_len=50), feats)
        sas = SASRec(SASRecConfig(num_items=1682, max_len=50)) if align else None
        m = Molar(c, MolarLossConfig(align_alpha=0.5 if align else 0.0), sas)
        if not once:  # the per-position adapter: hidden() ignores the precomputed table
            plain_hidden = c.hidden
            c.hidden = lambda seq, table=None: plain_hidden(seq)
        return timed_steps(m, lambda b: m.loss(b), batches, args.steps)

    rows.append(("content step: adapter once per item vs per position", content(True), content(False)))
    rows.append(("Molar step (frozen SASRec per step) vs content step", content(True, True), content(True)))

    def large(sparse: bool) -> float:
        torch.manual_seed(0)
        m = SASRec(SASRecConfig(num_items=args.items, max_len=50, norm="post"))
        m.item_emb.sparse = sparse
        ids = torch.randint(1, args.items + 1, (4 * 128, 51), generator=torch.Generator().manual_seed(0))
        big = [ids[i:i + 128].tolist() for i in range(0, len(ids), 128)]
        gen = torch.Generator().manual_seed(0)
        return timed_steps(m, lambda b: sasrec_loss(m, b, "sampled_softmax", 256, gen), big, args.large_steps,
                           lazy=sparse)

    rows.append((f"SASRec sampled-softmax step, {args.items:,} items: sparse item table + lazy Adam vs AdamW "
                 "(train_id.sparse_item_updates)", large(True), large(False)))

    result = {"threads": args.threads, "steps": args.steps, "large_steps": args.large_steps, "items": args.items,
              "rows": [{"comparison": name, "ours_ms": ours * 1e3, "baseline_ms": base * 1e3, "speedup": base / ours}
                       for name, ours, base in rows]}
    print(markdown(result))
    if args.json is not None:
        write_result(args.json, result)


def markdown(result: dict) -> str:
    """The table the script prints and docs/performance.md renders from bench/results/train_step.json."""
    rows = [(r["comparison"], f"{r['ours_ms']:,.0f}", f"{r['baseline_ms']:,.0f}", f"{r['speedup']:.2f}x")
            for r in result["rows"]]
    return (f"{result['threads']} thread(s), {result['steps']} steps of 128 windows x 50 positions "
            f"({result['large_steps']} for the {result['items']:,}-item row)\n\n"
            + markdown_table(["comparison", "ours ms/step", "baseline ms/step", "speed-up"], rows) + "\n")


if __name__ == "__main__":
    main()
