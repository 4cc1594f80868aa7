"""FAISS indexes over item vectors, and full-ranking search with the user's history masked out.

Row r of an index is item id r + 1 (0 is padding and never indexed). Masked search asks FAISS for
k + (longest history in the batch) neighbours, drops history items, and keeps the first k.
"""

from __future__ import annotations

import time
from pathlib import Path

import faiss
import numpy as np

from molar_core.io import atomic_path


def gpu_count() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


# Search settings where the index has them and none is given: FAISS's nprobe default (1) probes too few lists
SEARCH_DEFAULTS = {"nprobe": 16, "efSearch": 64, "k_factor_rf": 1}


def build_index(vectors: np.ndarray, factory: str = "Flat", train_sample: int = 100_000, nprobe: int | None = None,
                use_gpu: str = "auto", seed: int = 0, ef_search: int | None = None,
                refine_k_factor: int | None = None) -> tuple[faiss.Index, dict]:
    """Build an inner-product index from a factory string; returns (cpu index, build info). The search settings
    (IVF nprobe, HNSW efSearch, the k x refine_k_factor candidates a `,RFlat` index re-ranks exactly; None:
    SEARCH_DEFAULTS) are stored in the index, so a saved index searches as it was benchmarked. The build info
    records the value each one has in the index, None where the index type has no such setting."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, d = vectors.shape
    t0 = time.perf_counter()
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    on_gpu = use_gpu == "always" or (use_gpu == "auto" and gpu_count() > 0)
    if use_gpu == "always" and gpu_count() == 0:
        raise RuntimeError("index.use_gpu is 'always' but FAISS sees no GPU (install faiss-gpu)")
    work = faiss.index_cpu_to_all_gpus(index) if on_gpu else index
    if not work.is_trained:
        rng = np.random.default_rng(seed)
        sample = vectors[rng.choice(n, size=min(n, train_sample), replace=False)] if n > train_sample else vectors
        work.train(sample)
    work.add(vectors)
    index = faiss.index_gpu_to_cpu(work) if on_gpu else work
    given = {"nprobe": nprobe, "efSearch": ef_search, "k_factor_rf": refine_k_factor}
    applied = set_search_params(index, **{k: SEARCH_DEFAULTS[k] if v is None else v for k, v in given.items()})
    info = {"factory": factory, "metric": "inner_product", "ntotal": int(index.ntotal), "dim": d,
            "built_on_gpu": on_gpu, "build_seconds": time.perf_counter() - t0, "nprobe": applied.get("nprobe"),
            "ef_search": applied.get("efSearch"), "refine_k_factor": applied.get("k_factor_rf")}
    return index, info


def set_search_params(index: faiss.Index, **values: int) -> dict[str, int]:
    """Set FAISS search parameters (nprobe, efSearch, ...) that the index type has; the others do not apply.
    Returns those that were set."""
    space = faiss.ParameterSpace()
    applied = {}
    for name, value in values.items():
        try:
            space.set_index_parameter(index, name, value)
            applied[name] = value
        except RuntimeError:
            pass  # e.g. nprobe on Flat or HNSW, efSearch on IVF
    return applied


def save_index(index: faiss.Index, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def load_index(path: str | Path, use_gpu: str = "auto") -> faiss.Index:
    index = faiss.read_index(str(path))
    if use_gpu == "always" or (use_gpu == "auto" and gpu_count() > 0):
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def blas_batch(index: faiss.Index) -> int:
    """The fewest queries a FAISS call needs for its exact search to run as a matrix product: it does only for
    queries x dim >= `distance_compute_blas_threshold` (128,000 in FAISS 1.15, so 2,000 queries at dim 64); a
    smaller call takes a per-query loop about 6x slower on one core (bench/masked_search.py)."""
    return -(-int(faiss.cvar.distance_compute_blas_threshold) // index.d)


def search_masked(index: faiss.Index, users: np.ndarray, histories: list[list[int]] | None, k: int,
                  batch_size: int = 1024) -> np.ndarray:
    """Top-k item ids (1-based; 0 where fewer than k items remain) per user, history items excluded
    when `histories` is given. Users go to FAISS `batch_size` at a time, or blas_batch(index) if that is more."""
    users = np.ascontiguousarray(users, dtype=np.float32)
    n_items = index.ntotal
    batch_size = max(batch_size, blas_batch(index))
    out = np.zeros((len(users), k), dtype=np.int64)
    for s in range(0, len(users), batch_size):
        u = users[s:s + batch_size]
        hist = histories[s:s + batch_size] if histories is not None else None
        extra = max((len(h) for h in hist), default=0) if hist is not None else 0
        kk = min(n_items, k + extra)
        _, rows = index.search(u, kk)
        ids = np.where(rows >= 0, rows + 1, 0)
        keep = ids > 0  # 0: padding / missing results
        if hist is not None:  # (row, item) pairs as one integer key, looked up in the batch's seen pairs: no
            # batch x items mask, whose size would shrink the batch (and FAISS's GEMM) for a large catalogue
            r = np.repeat(np.arange(len(u), dtype=np.int64), [len(h) for h in hist])
            c = np.fromiter((x for h in hist for x in h), dtype=np.int64, count=len(r))
            rows_key = np.arange(len(u), dtype=np.int64)[:, None] * (n_items + 1)
            keep &= ~np.isin(rows_key + ids, r * (n_items + 1) + c)
        # stable compaction of kept ids to the left, then the first k
        order = np.argsort(~keep, axis=1, kind="stable")
        compact = np.take_along_axis(np.where(keep, ids, 0), order, axis=1)[:, :k]
        out[s:s + len(u), :compact.shape[1]] = compact
    return out


def recall_vs_exact(index: faiss.Index, item_vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the exact inner-product top-k that `index` returns for the same queries (1.0 = exact)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    exact = faiss.IndexFlatIP(item_vectors.shape[1])
    exact.add(np.ascontiguousarray(item_vectors, dtype=np.float32))
    _, truth = exact.search(queries, k)
    _, got = index.search(queries, k)
    return overlap_recall(truth, got)


def overlap_recall(truth: np.ndarray, got: np.ndarray) -> float:
    """Mean fraction of each row of `truth` (exact top-k ids) found in the same row of `got`."""
    k = truth.shape[1]
    return float(np.mean([len(set(t) & set(g)) / k for t, g in zip(truth.tolist(), got.tolist())]))
