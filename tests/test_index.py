"""FAISS masked search must rank exactly like brute-force torch top-k on the same vectors."""

import faiss
import numpy as np
import pytest
import torch

from molar_core.index import blas_batch, build_index, load_index, save_index, search_masked
from molar_core.metrics import per_user_metrics, ranks_from_lists
from molar_core.ranking import target_ranks, topk_items


def _data(seed=0, n_items=300, n_users=64, d=16):
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n_items, d)).astype(np.float32)
    users = rng.standard_normal((n_users, d)).astype(np.float32)
    hist = [sorted(rng.choice(np.arange(1, n_items + 1), size=rng.integers(0, min(60, n_items)), replace=False)
                   .tolist())
            for _ in range(n_users)]
    return items, users, hist


@pytest.mark.parametrize("masked", [True, False])
def test_faiss_flat_equals_torch_topk(masked, monkeypatch):
    monkeypatch.setattr(faiss.cvar, "distance_compute_blas_threshold", 1)  # batches of 17: rows cross batches
    items, users, hist = _data()
    index, info = build_index(items, "Flat")
    assert info["ntotal"] == 300
    k = 50
    got = search_masked(index, users, hist if masked else None, k, batch_size=17)
    ref, _ = topk_items(torch.from_numpy(users), torch.from_numpy(items), hist if masked else None, k)
    np.testing.assert_array_equal(got, ref.numpy())
    if masked:
        for row, h in zip(got, hist):
            assert not set(row.tolist()) & set(h)


def test_faiss_gets_enough_queries_a_call_for_its_matrix_product_path(monkeypatch):
    items, users, hist = _data(n_users=300, d=64)
    index, _ = build_index(items, "Flat")
    calls = []

    class Spy:  # what search_masked reads of an index, recording each search's query count
        d, ntotal = index.d, index.ntotal

        def search(self, q, k):
            calls.append(len(q))
            return index.search(q, k)

    monkeypatch.setattr(faiss.cvar, "distance_compute_blas_threshold", 64 * 100)  # a matrix product from 100 queries
    assert blas_batch(index) == 100
    got = search_masked(Spy(), users, hist, 20, batch_size=16)
    assert calls == [100, 100, 100]  # the requested 16 would put FAISS on its per-query loop
    np.testing.assert_array_equal(got, search_masked(index, users, hist, 20))


def test_ranks_from_faiss_lists_equal_exact_ranks():
    items, users, hist = _data(seed=1)
    rng = np.random.default_rng(2)
    targets = np.array([rng.choice(sorted(set(range(1, 301)) - set(h))) for h in hist])
    index, _ = build_index(items, "Flat")
    lists = search_masked(index, users, hist, 50)
    from_lists = ranks_from_lists(lists, targets)
    exact = target_ranks(torch.from_numpy(users), torch.from_numpy(items), hist, torch.from_numpy(targets)).numpy()
    exact = np.where(exact < 50, exact, np.inf)
    np.testing.assert_array_equal(from_lists, exact)
    for name, v in per_user_metrics(from_lists, [10, 50]).items():
        np.testing.assert_allclose(v, per_user_metrics(exact, [10, 50])[name])


def test_index_roundtrip_and_ivf(tmp_path):
    items, users, hist = _data(seed=3, n_items=2000)
    index, _ = build_index(items, "IVF16,Flat", nprobe=16)  # nprobe = nlist: exhaustive, so exact
    save_index(index, tmp_path / "x.faiss")
    again = load_index(tmp_path / "x.faiss", use_gpu="never")
    exact, _ = build_index(items, "Flat")
    np.testing.assert_array_equal(search_masked(again, users, hist, 20), search_masked(exact, users, hist, 20))


def test_fewer_items_than_k_pads_with_zero():
    items, users, _ = _data(n_items=12)
    index, _ = build_index(items, "Flat")
    hist = [[1, 2, 3]] * len(users)
    got = search_masked(index, users, hist, 20)
    assert (got[:, 9:] == 0).all() and (got[:, :9] > 0).all()


def test_hnsw_ef_search_is_saved_with_the_index_and_buys_recall(tmp_path):
    from molar_core.index import recall_vs_exact

    items, users, _ = _data(seed=4, n_items=3000, d=32)
    recalls = {}
    for ef in (4, 256):
        index, info = build_index(items, "HNSW8", ef_search=ef)
        save_index(index, tmp_path / f"h{ef}.faiss")
        again = load_index(tmp_path / f"h{ef}.faiss", use_gpu="never")
        assert again.hnsw.efSearch == ef == info["ef_search"]
        recalls[ef] = recall_vs_exact(again, items, users, k=10)
    assert recalls[256] > 0.98 and recalls[4] < recalls[256] - 0.1, recalls


def test_exact_ranking_scores_in_bounded_blocks(monkeypatch):
    from molar_core import ranking

    assert ranking.user_chunk(1_000_000, None) == 67  # 67 x 1e6 float32 scores = 256 MiB
    assert ranking.user_chunk(1682, None) == 4096 and ranking.user_chunk(10, 5) == 5
    items, users, hist = _data(seed=5, n_items=500, n_users=40)
    u, it = torch.from_numpy(users), torch.from_numpy(items)
    targets = torch.tensor([max(set(range(1, 501)) - set(h)) for h in hist])
    whole = ranking.target_ranks(u, it, hist, targets)
    top_whole = ranking.topk_items(u, it, hist, 10)
    monkeypatch.setattr(ranking, "SCORE_BLOCK_BYTES", 3 * 500 * 4)  # 3 users per block
    assert ranking.user_chunk(500, None) == 3
    torch.testing.assert_close(ranking.target_ranks(u, it, hist, targets), whole)
    torch.testing.assert_close(ranking.topk_items(u, it, hist, 10), top_whole)
    monkeypatch.setattr(ranking, "FLOAT_COUNT_LIMIT", 0)  # the integer count of catalogues past 2**24 items
    torch.testing.assert_close(ranking.target_ranks(u, it, hist, targets), whole)
    rows = u @ it.T
    slow = torch.stack([(torch.where(torch.isin(torch.arange(1, 501), torch.tensor(h)), float("-inf"), rows[i])
                         >= rows[i, targets[i] - 1]).sum() - 1 for i, h in enumerate(hist)])
    torch.testing.assert_close(whole, slow)  # ranks = other items at or above the target once the history is masked


def test_refine_k_factor_is_saved_with_the_index_and_buys_recall(tmp_path):
    """A `,RFlat` index (4-bit fast-scan PQ codes re-ranked exactly) keeps `refine_k_factor` on disk: with 1 the
    coarse PQ scores pick the top 10, with 16 exact scores re-rank 160 candidates."""
    from molar_core.index import recall_vs_exact

    items, users, _ = _data(seed=5, n_items=3000, d=32)
    recalls = {}
    for kf in (1, 16):
        index, info = build_index(items, "IVF16,PQ16x4fs,RFlat", nprobe=16, refine_k_factor=kf, use_gpu="never")
        save_index(index, tmp_path / f"r{kf}.faiss")
        again = load_index(tmp_path / f"r{kf}.faiss", use_gpu="never")
        assert again.k_factor == kf == info["refine_k_factor"]
        recalls[kf] = recall_vs_exact(again, items, users, k=10)
    assert recalls[16] > 0.98 and recalls[1] < recalls[16] - 0.1, recalls


def test_unset_search_settings_get_the_defaults_where_the_index_has_them():
    """nprobe / ef_search / refine_k_factor left unset (params.yaml null): 16 / 64 / 1 on the indexes that have
    them, recorded as null in the build info of the ones that do not."""
    items, _, _ = _data(seed=6, n_items=1000)
    ivf, info = build_index(items, "IVF16,PQ8x4fs,RFlat", nprobe=None, ef_search=None, refine_k_factor=None,
                            use_gpu="never")
    assert (faiss.extract_index_ivf(ivf).nprobe, ivf.k_factor) == (16, 1)
    assert (info["nprobe"], info["ef_search"], info["refine_k_factor"]) == (16, None, 1)
    hnsw, info = build_index(items, "HNSW8", nprobe=None, ef_search=None, refine_k_factor=None)
    assert hnsw.hnsw.efSearch == 64 and (info["nprobe"], info["ef_search"], info["refine_k_factor"]) == (None, 64, None)
    _, info = build_index(items, "Flat", nprobe=None, ef_search=None, refine_k_factor=None)
    assert (info["nprobe"], info["ef_search"], info["refine_k_factor"]) == (None, None, None)
    _, info = build_index(items, "IVF16,Flat", nprobe=4, use_gpu="never")
    assert info["nprobe"] == 4
