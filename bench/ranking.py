"""Exact torch ranking (validation during training, bench/sweep.py's scoring) against the plain way of writing it.

    python -m bench.ranking [--items 100000 1000000] [--users 1024] [--threads 1] [--json PATH]

Both rank the same users' targets among the same items with each user's history masked, in blocks of 256 MiB
of scores. Plain: a fresh scores block, a dense (users x items) history mask and `masked_fill`, a fresh
comparison tensor, block after block. Ours (molar_core.ranking.target_ranks): one preallocated scores buffer
and comparison buffer reused by every block, history items set to -inf in place. Same ranks, checked.
"""

from __future__ import annotations

import argparse

import torch

from bench.common import add_json_option, markdown_table, timed, write_result
from molar_core.ranking import history_index, target_ranks, user_chunk


def plain_target_ranks(users: torch.Tensor, items: torch.Tensor, histories: list[list[int]],
                       targets: torch.Tensor) -> torch.Tensor:
    chunk, out = user_chunk(items.shape[0], None), []
    for s in range(0, len(users), chunk):
        hist = histories[s:s + chunk]
        mask = torch.zeros(len(hist), items.shape[0], dtype=torch.bool)
        mask[history_index(hist)] = True
        sc = (users[s:s + chunk] @ items.T).masked_fill(mask, float("-inf"))
        t = sc.gather(1, (targets[s:s + chunk] - 1).unsqueeze(1))
        out.append((sc >= t).sum(1) - 1)  # ties ranked pessimistically, as target_ranks ranks them
    return torch.cat(out)


def markdown(result: dict) -> str:
    """The table the script prints and docs/performance.md renders from bench/results/ranking.json."""
    rows = [(f"{r['items']:,}", f"{r['plain_users_s']:,.0f}", f"{r['ours_users_s']:,.0f}", f"{r['speedup']:.1f}x",
             "yes" if r["same_ranks"] else "NO") for r in result["rows"]]
    return (f"{result['users']:,} users, histories of {result['history']} items masked, dim {result['dim']}, "
            f"{result['threads']} thread(s)\n\n"
            + markdown_table(["items", "plain: users/s", "ours: users/s", "speed-up", "same ranks"], rows) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--users", type=int, default=1024)
    ap.add_argument("--history", type=int, default=20, help="items in each user's history")
    ap.add_argument("--threads", type=int, default=1)
    add_json_option(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in args.items:
        items, users = torch.randn(n, 64, generator=gen), torch.randn(args.users, 64, generator=gen)
        hist = torch.randint(1, n + 1, (args.users, args.history), generator=gen).tolist()
        targets = torch.randint(1, n + 1, (args.users,), generator=gen)
        t_plain, r_plain = timed(lambda: plain_target_ranks(users, items, hist, targets), repeats=2)
        t_ours, r_ours = timed(lambda: target_ranks(users, items, hist, targets), repeats=2)
        if not torch.equal(r_plain, r_ours):
            raise SystemExit(f"{n:,} items: the two versions rank differently")
        rows.append({"items": n, "plain_users_s": args.users / t_plain, "ours_users_s": args.users / t_ours,
                     "speedup": t_plain / t_ours, "same_ranks": True})
    result = {"users": args.users, "history": args.history, "dim": 64, "threads": args.threads, "rows": rows}
    print(markdown(result))
    if args.json is not None:
        write_result(args.json, result)


if __name__ == "__main__":
    main()
