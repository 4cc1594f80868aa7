"""Masked top-k search (evaluate, recommend, report): FAISS search of k + history items, then the user's history
items removed. The plain way (the previous version, kept below) sends `evaluate.batch_size` users (1,024) per FAISS
call and marks seen items in a batch x items boolean mask, capped at 64 MiB, which cuts the batch to 67 users at
1e6 items. Both batches are below the 2,000 queries (at dim 64) from which FAISS 1.15's exact search runs as a
matrix product, so every call took its per-query loop. `molar_core.index.search_masked` looks the (user, item)
pairs up as integer keys (no mask) and sends at least `blas_batch(index)` users per call. Same ids checked, one
thread, synthetic catalogue (molar_core.data.synthetic), each user's history holding some of its own top items.

    python -m bench.masked_search [--items 100000 1000000] [--users 4096] [--history 20] [--json PATH]
"""

from __future__ import annotations

import argparse

import faiss
import numpy as np

from bench.common import add_json_option, markdown_table, timed, write_result
from molar_core.data.synthetic import catalogue, user_queries
from molar_core.index import build_index, search_masked

K = 50


def plain_search_masked(index: faiss.Index, users: np.ndarray, histories: list[list[int]], k: int,
                        batch_size: int = 1024) -> np.ndarray:
    """The previous version: a dense seen-item mask per batch, the batch capped so the mask stays under 64 MiB."""
    n_items = index.ntotal
    batch_size = max(1, min(batch_size, (64 << 20) // (n_items + 1)))
    out = np.zeros((len(users), k), dtype=np.int64)
    for s in range(0, len(users), batch_size):
        u, hist = users[s:s + batch_size], histories[s:s + batch_size]
        kk = min(n_items, k + max(len(h) for h in hist))
        _, rows = index.search(u, kk)
        ids = np.where(rows >= 0, rows + 1, 0)
        seen = np.zeros((len(u), n_items + 1), dtype=bool)
        r = np.repeat(np.arange(len(u)), [len(h) for h in hist])
        seen[r, np.concatenate(hist)] = True
        seen[:, 0] = True
        keep = ~np.take_along_axis(seen, ids, axis=1)
        order = np.argsort(~keep, axis=1, kind="stable")
        out[s:s + len(u)] = np.take_along_axis(np.where(keep, ids, 0), order, axis=1)[:, :k]
    return out


def score(items: np.ndarray, users: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Each listed item's inner product with its user, in list order."""
    return np.einsum("ukd,ud->uk", items[ids - 1], users)


def markdown(result: dict) -> str:
    """The table the script prints and docs/performance.md renders from bench/results/masked_search.json."""
    rows = [(f"{r['items']:,}", f"{r['plain_users_s']:,.0f}", f"{r['ours_users_s']:,.0f}", f"{r['speedup']:.1f}x")
            for r in result["rows"]]
    return (f"FAISS {result['faiss']} {result['index']} (exact), {result['threads']} thread(s), {result['users']:,} "
            f"users with {result['history']} history items each, top-{result['k']} after masking, same results "
            "checked\n\n"
            + markdown_table([f"items x {result['dim']}", "previous (1,024 users a call, items mask): users/s",
                              "now (BLAS-sized calls, integer keys): users/s", "speed-up"], rows) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--users", type=int, default=4096)
    ap.add_argument("--history", type=int, default=20)
    add_json_option(ap)
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    out = []
    rng = np.random.default_rng(0)
    for n in args.items:
        items = np.ascontiguousarray(catalogue(n, 64, seed=0), np.float32)
        users = np.ascontiguousarray(user_queries(items, args.users, seed=1), np.float32)
        index, _ = build_index(items, "Flat", use_gpu="never")
        # histories: each user's own top items (so they are found and must be removed) plus random ones
        _, top = index.search(users, args.history // 2)
        hist = [list(map(int, t + 1)) + list(map(int, rng.integers(1, n + 1, args.history - len(t))))
                for t in top]
        plain_s, plain = timed(lambda: plain_search_masked(index, users, hist, K))
        ours_s, ours = timed(lambda: search_masked(index, users, hist, K))
        # FAISS's two paths sum dot products in different orders, so near-ties may swap: compare the scores
        same = np.array_equal(plain, ours) or np.allclose(score(items, users, plain), score(items, users, ours),
                                                          rtol=0, atol=1e-5)
        assert same, "the two versions disagree"
        out.append({"items": n, "plain_users_s": args.users / plain_s, "ours_users_s": args.users / ours_s,
                    "speedup": plain_s / ours_s})
    result = {"faiss": faiss.__version__, "index": "Flat", "threads": 1, "users": args.users,
              "history": args.history, "k": K, "dim": 64, "rows": out}
    print(markdown(result))
    if args.json is not None:
        write_result(args.json, result)


if __name__ == "__main__":
    main()
