"""Which FAISS index for a catalogue of N items: Recall@10 against exact search and the query speed-up over it.

    python -m bench.index_scale [--items 10000 100000 1000000] [--dim 64] [--queries 2000] [--threads 1] [--hnsw]
                               [--hnsw-max-items 100000] [--fastscan [--refine 16]] [--deep | --nprobes 1024 1536 ...]
                               [--json PATH]
    python -m bench.index_scale --workspace . --model content      # the real item and user vectors of a workspace

Synthetic catalogues come from molar_core.data.synthetic.catalogue (unit vectors around one topic per 100 items,
`--spread 1.0`) with users made as a user model makes them (normalised mean of 5 items plus noise): at the size
of the real Amazon-Scientific content vectors (4,385 x 64) this generator gives the same IVF recall curve as the
real item and user vectors (README, Performance), so its larger catalogues stand in for real ones. Every index is built by
molar_core.index.build_index, the code the `index` stage runs, and its search settings are what `index.nprobe` /
`index.ef_search` set. The baseline is exact search (`Flat`) over the same queries in the same process and the
same number of threads, timed again beside each setting (each the best of at least 3 runs and of 1 s of
runs), so each speed-up compares two searches made under the same load; the table gives each setting's
Recall@10 against it and its speed-up, and the fastest setting with recall >= 0.99 is the pick.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import faiss
import numpy as np

from bench.common import add_json_option, markdown_header, markdown_table, timed, write_result
from molar_core.data.synthetic import catalogue, user_queries
from molar_core.index import build_index, overlap_recall, set_search_params

K = 10
K_FACTOR = 16  # fast-scan candidates re-ranked exactly: k x this (--refine)


def search_time(index: faiss.Index, queries: np.ndarray, repeats: int = 3, min_total_s: float = 1.0,
                max_repeats: int = 50) -> tuple[float, np.ndarray]:
    """Best wall time of one batched search over at least `repeats` runs, repeated until the runs add up to
    `min_total_s` (a search of a few milliseconds needs many tries for one that no other process interrupted),
    and its results."""
    best, spent, n = float("inf"), 0.0, 0
    while n < repeats or (spent < min_total_s and n < max_repeats):
        seconds, (_, rows) = timed(index.search, queries, K)
        best, spent, n = min(best, seconds), spent + seconds, n + 1
    return best, rows


def settings(n: int, dim: int, hnsw: bool, fastscan: bool, deep: bool = False,
             nprobes: list[int] | None = None) -> list[tuple[str, str, list[int]]]:
    """(factory, search parameter, values) to sweep for n items: IVF with about 4 sqrt(n) and 16 sqrt(n) lists
    (FAISS's usual range), HNSW32; with `fastscan`, the IVF lists hold 4-bit PQ codes (2 dimensions a code,
    scanned with SIMD) and the top k x K_FACTOR of them are re-ranked exactly (RFlat): more lists probed for the
    same time. `deep`: lists of floats probed up to nlist / 8 too (by default up to 512); `nprobes`: these
    values instead, for the larger nlist only (its lists of floats, and its fast-scan lists with `fastscan`)."""
    out = []
    for per in (4, 16):
        nlist = max(16, 1 << round(np.log2(per * n ** 0.5)))
        probes = [p for p in (4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048) if p <= nlist // 8]
        if nprobes:
            if per == 16:
                out.append((f"IVF{nlist},Flat", "nprobe", nprobes))
                if fastscan:
                    out.append((f"IVF{nlist},PQ{dim // 2}x4fs,RFlat", "nprobe", nprobes))
            continue
        out.append((f"IVF{nlist},Flat", "nprobe", probes if deep else [p for p in probes if p <= 512]))
        if fastscan:
            out.append((f"IVF{nlist},PQ{dim // 2}x4fs,RFlat", "nprobe", probes))
    if hnsw:
        out.append(("HNSW32", "efSearch", [16, 32, 64, 128, 256]))
    return out


def scanned_share(index: faiss.Index, queries: np.ndarray) -> float | None:
    """Mean share of the catalogue in the inverted lists a query probes (None: not an inverted file). Scanning
    that share at exact search's own rate would make the index at most 1 / share times faster than exact."""
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
    _, lists = ivf.quantizer.search(queries, ivf.nprobe)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
    return float(sizes[lists].sum(1).mean() / ivf.ntotal)


def markdown(result: dict, scanned: bool = False) -> str:
    """One line per catalogue and index: every search setting's Recall@10 and speed-up against exact search in
    the same process (`scanned`: and the share of the catalogue its lists hold), and the fastest setting with
    Recall@10 >= 0.99 (what docs/performance.md renders from bench/results/index_scale*.json)."""
    exact = {r["catalogue"]: r for r in result["rows"] if r["index"] == "Flat (exact)"}
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in result["rows"]:
        if r["index"] != "Flat (exact)":
            groups.setdefault((r["catalogue"], r["index"]), []).append(r)
    lines = []
    for (catalogue, index), rows in groups.items():
        cells = "; ".join(f"{r['setting'].split('=')[1].split(',')[0]}: {r['recall']:.3f} at {r['speedup']:.1f}x"
                          + (f" ({r['scanned']:.1%} scanned)" if scanned and r["scanned"] is not None else "")
                          for r in rows)
        lines.append((catalogue, f"{exact[catalogue]['qps']:,.0f}", f"{index} ({rows[0]['setting'].split('=')[0]})",
                      f"{rows[0]['build_s']:.1f}", cells))
    picks = [(p["catalogue"], f"{p['pick']['index']} {p['pick']['setting']}: {p['pick']['recall']:.4f} at "
              f"{p['pick']['speedup']:.1f}x" if p["pick"] else "none reaches 0.99") for p in result["picks"]]
    return (f"FAISS {result['faiss']}, {result['threads']} thread(s), top {result['k']}, "
            f"{result.get('queries', 2000):,} users\n\n"
            + markdown_table(["catalogue", "exact queries/s", "index (search setting)", "build s",
                              "setting: Recall@10 vs exact at speed-up vs exact"
                              + (" (share of the catalogue scanned)" if scanned else "")], lines)
            + "\n\n" + markdown_table(["catalogue", "fastest setting with Recall@10 >= 0.99"], picks) + "\n")


def run(label: str, items: np.ndarray, queries: np.ndarray, hnsw: bool, fastscan: bool,
        deep: bool = False, nprobes: list[int] | None = None, refine: int = K_FACTOR) -> list[dict]:
    n = len(items)
    flat, _ = build_index(items, "Flat", use_gpu="never")
    exact_s, truth = search_time(flat, queries)
    rows = [{"catalogue": label, "index": "Flat (exact)", "setting": "", "build_s": 0.0, "recall": 1.0,
             "qps": len(queries) / exact_s, "speedup": 1.0, "scanned": 1.0}]
    for factory, param, values in settings(n, items.shape[1], hnsw, fastscan, deep, nprobes):
        nlist = int(factory[3:].split(",")[0]) if factory.startswith("IVF") else 0
        index, info = build_index(items, factory, train_sample=min(max(100_000, 20 * nlist), 300_000),
                                  use_gpu="never", refine_k_factor=refine)
        for v in values:
            set_search_params(index, **{param: v})
            s, got = search_time(index, queries)
            # exact search timed again beside each setting: on a machine where other work comes and goes, the
            # ratio compares two searches made under the same load, not this one against the first exact run
            exact_now, _ = search_time(flat, queries)
            rerank = f", top {K * refine} re-ranked" if factory.endswith("RFlat") else ""
            rows.append({"catalogue": label, "index": factory, "setting": f"{param}={v}{rerank}",
                         "build_s": info["build_seconds"], "recall": overlap_recall(truth, got),
                         "qps": len(queries) / s, "speedup": exact_now / s, "exact_s": exact_now,
                         "scanned": scanned_share(index, queries)})
        print_rows(rows[-len(values):])
    return rows


def print_rows(rows: list[dict], header: bool = False) -> None:
    if header:
        print(markdown_header(["catalogue", "index", "setting", "build s", "Recall@10 vs exact", "queries/s",
                               "speed-up vs exact", "catalogue scanned (speed-up bound)"]))
    for r in rows:
        share = f"{r['scanned']:.2%} ({1 / r['scanned']:.1f}x)" if r["scanned"] is not None else ""
        print(f"| {r['catalogue']} | {r['index']} | {r['setting']} | {r['build_s']:.1f} | {r['recall']:.4f} | "
              f"{r['qps']:,.0f} | {r['speedup']:.1f}x | {share} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--spread", type=float, default=1.0, help="within-topic spread of the synthetic catalogue")
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hnsw", action="store_true", help="also HNSW32")
    ap.add_argument("--hnsw-max-items", type=int, default=None,
                    help="build HNSW32 only for catalogues up to this size (it takes hours at 1e6 on one core)")
    ap.add_argument("--fastscan", action="store_true", help="also IVF with 4-bit PQ fast-scan lists + exact re-rank")
    ap.add_argument("--deep", action="store_true", help="probe lists of floats up to nlist / 8 (default: 512)")
    ap.add_argument("--refine", type=int, default=K_FACTOR, help="fast-scan: top k x this re-ranked exactly")
    ap.add_argument("--nprobes", type=int, nargs="+", help="only IVF with 16 sqrt(N) lists, these nprobe")
    ap.add_argument("--workspace", type=Path, default=None, help="use this workspace's vectors of --model")
    ap.add_argument("--model", default="content")
    add_json_option(ap, "every row and the picks")
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    print(f"FAISS {faiss.__version__}, {args.threads} thread(s), top-{K}, inner product\n")
    print_rows([], header=True)
    picks, every = [], []
    if args.workspace:
        from molar_core.vectors import load_item_vectors, read_user_vectors

        d = args.workspace / "artifacts" / args.model
        items = load_item_vectors(d / "item_vectors.safetensors")
        _, users = read_user_vectors(d / "user_vectors.safetensors", "test")
        cases = [(f"{args.model} ({len(items):,} items, real)", items, users)]
    else:
        cases = []
        for n in args.items:
            items = catalogue(n, args.dim, spread=args.spread, seed=0)
            cases.append((f"synthetic {n:,} x {args.dim}", items, user_queries(items, args.queries, seed=1)))
    for label, items, queries in cases:
        rows = run(label, np.ascontiguousarray(items, np.float32), np.ascontiguousarray(queries, np.float32),
                   args.hnsw and (args.hnsw_max_items is None or len(items) <= args.hnsw_max_items), args.fastscan,
                   args.deep, args.nprobes, args.refine)
        print_rows(rows[:1])
        every += rows
        good = [r for r in rows[1:] if r["recall"] >= 0.99]
        picks.append((label, max(good, key=lambda r: r["speedup"]) if good else None))
    print("\n" + markdown_header(["catalogue", "fastest setting with Recall@10 >= 0.99", "recall",
                                  "speed-up vs exact"]))
    for label, r in picks:
        print(f"| {label} | {r['index']} {r['setting']} | {r['recall']:.4f} | {r['speedup']:.1f}x |" if r
              else f"| {label} | none reached 0.99 | | |")
    if args.json is not None:
        write_result(args.json, {"faiss": faiss.__version__, "threads": args.threads, "k": K,
                                 "queries": args.queries, "spread": args.spread, "rows": every,
                                 "picks": [{"catalogue": label, "pick": r} for label, r in picks]})


if __name__ == "__main__":
    main()
