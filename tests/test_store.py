"""The embedding cache on its own (no model): shards, manifest, verification, incremental and crash behaviour."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import polars as pl
import pytest
import torch

from molar_core.encoders.base import settings_hash
from molar_core.errors import ArtifactError
from molar_core.store import EmbeddingCache, load_item_embeddings, lookup_vectors, read_catalogue, read_manifest
from molar_core.store.shards import hashes_to_tensor, tensor_to_hashes

DIM = 8
SETTINGS = {"encoder": "fake", "model_fingerprint": "f" * 64, "pooling": "last", "dim": DIM}


def h(i: int | str) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def vec(key: int | str) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(h(key)[:8], 16))
    return torch.randn(DIM, generator=g)


def items_df(keys: list) -> pl.DataFrame:
    n = len(keys)
    return pl.DataFrame({"item_id": list(range(1, n + 1)), "title": [f"title {k}" for k in keys],
                         "content_hash": [h(k) for k in keys]})


def fill(store: Path, keys: list, shard_size: int, settings: dict = SETTINGS, order: list[int] | None = None,
         log: list | None = None) -> EmbeddingCache:
    """Cache vectors for `keys` (vector of key k = vec(k)), added in `order`, and finish with keys' catalogue."""
    with EmbeddingCache(store, settings, shard_size, log=(log.append if log is not None else None)) as cache:
        todo = cache.missing([h(k) for k in keys])
        by_hash = {h(k): k for k in keys}
        idx = order if order is not None else list(range(len(todo)))
        todo = [todo[i] for i in idx if i < len(todo)]
        for lo in range(0, len(todo), 2):  # two at a time, like small encoder windows
            part = todo[lo:lo + 2]
            cache.add(torch.stack([vec(by_hash[x]) for x in part]), part, torch.zeros(len(part), dtype=torch.uint8))
        cache.finish(list(range(1, len(keys) + 1)), [h(k) for k in keys])
    return cache


def test_hash_tensor_roundtrip():
    hs = [h(i) for i in range(5)]
    t = hashes_to_tensor(hs)
    assert t.dtype == torch.uint8 and t.shape == (5, 32)
    assert tensor_to_hashes(t) == hs
    with pytest.raises(ValueError):
        hashes_to_tensor(["abc"])


def test_vectors_come_back_in_item_id_order(tmp_path):
    keys = list(range(10))
    fill(tmp_path, keys, shard_size=3, order=[7, 2, 9, 0, 5, 1, 8, 3, 6, 4])  # stored shuffled
    ids, vectors = load_item_embeddings(tmp_path, items_df(keys).sample(fraction=1.0, shuffle=True, seed=1))
    assert ids.tolist() == list(range(1, 11))
    assert torch.equal(vectors, torch.stack([vec(k) for k in keys]))
    ids2, vectors2 = load_item_embeddings(tmp_path)  # from the catalogue of the last run
    assert ids2.tolist() == ids.tolist() and torch.equal(vectors2, vectors)


def test_manifest_records_settings_and_checksums(tmp_path):
    fill(tmp_path, list(range(10)), shard_size=4)
    m = json.loads((tmp_path / "manifest.json").read_text())
    assert m["settings_hash"] == settings_hash(SETTINGS) and m["settings"] == SETTINGS
    assert m["dim"] == DIM and m["dtype"] == "float32" and m["items_stored"] == 10
    assert [s["file"] for s in m["shards"]] == [f"shard-{i:05d}.safetensors" for i in range(math.ceil(10 / 4))]
    assert [s["items"] for s in m["shards"]] == [4, 4, 2]
    for s in m["shards"]:
        blob = (tmp_path / s["file"]).read_bytes()
        assert s["sha256"] == hashlib.sha256(blob).hexdigest() and s["bytes"] == len(blob)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.safetensors", "manifest.json",
                                                          "shard-00000.safetensors", "shard-00001.safetensors",
                                                          "shard-00002.safetensors"]


def test_shards_flush_as_they_fill(tmp_path):
    with EmbeddingCache(tmp_path, SETTINGS, shard_size=4) as cache:
        hs = [h(i) for i in range(10)]
        cache.add(torch.stack([vec(i) for i in range(10)]), hs, torch.zeros(10, dtype=torch.uint8))
        assert cache.buffered == 2 and len(cache.written) == 2  # two full shards on disk, two rows in memory
        assert len(read_manifest(tmp_path).shards) == 2  # the manifest already lists them


def test_rerun_reuses_everything_byte_for_byte(tmp_path):
    keys = list(range(9))
    fill(tmp_path, keys, shard_size=4)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    cache = fill(tmp_path, keys, shard_size=4)
    assert cache.written == [] and cache.fresh_reason is None
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()} == before


def test_new_and_changed_items_add_a_shard_and_leave_others_untouched(tmp_path):
    fill(tmp_path, list(range(8)), shard_size=4)
    before = {p.name: p.read_bytes() for p in tmp_path.glob("shard-*")}
    keys = list(range(8))
    keys[5] = "changed"  # item 6 changed content; its old vector stays in shard 1 beside live items
    keys.append(8)  # a new item
    cache = fill(tmp_path, keys, shard_size=4)
    assert cache.written == ["shard-00002.safetensors"]
    assert {p.name: p.read_bytes() for p in tmp_path.glob("shard-0000[01]*")} == before
    _, vectors = load_item_embeddings(tmp_path, items_df(keys))
    assert torch.equal(vectors, torch.stack([vec(k) for k in keys]))
    _, found = lookup_vectors(tmp_path, [h(5)])  # the old content's vector is still cached (shard 1 is kept)
    assert bool(found.all())


def test_shards_without_current_items_are_pruned(tmp_path):
    fill(tmp_path, list(range(8)), shard_size=4)  # shards 0 (keys 0-3) and 1 (keys 4-7)
    fill(tmp_path, [4, 5, 6, 7, 100], shard_size=4)
    names = sorted(p.name for p in tmp_path.glob("shard-*"))
    assert "shard-00000.safetensors" not in names and "shard-00001.safetensors" in names
    _, vectors = load_item_embeddings(tmp_path, items_df([4, 5, 6, 7, 100]))
    assert torch.equal(vectors, torch.stack([vec(k) for k in [4, 5, 6, 7, 100]]))


def test_changed_settings_start_a_fresh_cache(tmp_path):
    fill(tmp_path, list(range(6)), shard_size=4)
    log: list[str] = []
    other = {**SETTINGS, "pooling": "mean"}
    cache = fill(tmp_path, list(range(6)), shard_size=4, settings=other, log=log)
    assert cache.fresh_reason and "pooling" in cache.fresh_reason
    assert any("starting a fresh cache" in m and "pooling" in m for m in log)
    assert cache.written == ["shard-00000.safetensors", "shard-00001.safetensors"]  # everything recomputed
    assert read_manifest(tmp_path).settings_hash == settings_hash(other)


def flip_byte(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_byte_is_caught_with_a_clear_message(tmp_path):
    keys = list(range(8))
    fill(tmp_path, keys, shard_size=4)
    flip_byte(tmp_path / "shard-00001.safetensors")
    with pytest.raises(ArtifactError) as err:
        load_item_embeddings(tmp_path, items_df(keys))
    msg = str(err.value)
    assert "shard-00001.safetensors" in msg and "checksum mismatch" in msg and "rerun `dvc repro embed`" in msg


def test_truncated_shard_is_caught(tmp_path):
    fill(tmp_path, list(range(4)), shard_size=4)
    p = tmp_path / "shard-00000.safetensors"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ArtifactError, match=r"shard-00000.safetensors.*truncated.*dvc repro embed"):
        load_item_embeddings(tmp_path)


def test_writer_drops_a_bad_shard_and_recomputes_only_its_items(tmp_path):
    keys = list(range(12))
    fill(tmp_path, keys, shard_size=4)
    flip_byte(tmp_path / "shard-00001.safetensors", offset=200)
    log: list[str] = []
    with EmbeddingCache(tmp_path, SETTINGS, 4, log=log.append) as cache:
        assert cache.dropped == ["shard-00001.safetensors"]
        assert cache.missing([h(k) for k in keys]) == [h(k) for k in range(4, 8)]
    assert any("shard-00001.safetensors" in m and "dropping" in m for m in log)
    assert not (tmp_path / "shard-00001.safetensors").exists()
    fill(tmp_path, keys, shard_size=4)
    _, vectors = load_item_embeddings(tmp_path, items_df(keys))
    assert torch.equal(vectors, torch.stack([vec(k) for k in keys]))


def test_leftovers_of_a_killed_run_are_removed(tmp_path):
    fill(tmp_path, list(range(4)), shard_size=4)
    (tmp_path / "shard-00007.safetensors").write_bytes(b"written but never listed")
    (tmp_path / ".shard-00008.safetensors.abc123.tmp").write_bytes(b"half")
    (tmp_path / "notes.txt").write_text("not ours: kept")
    with EmbeddingCache(tmp_path, SETTINGS, 4):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["items.safetensors", "manifest.json", "notes.txt",
                                                          "shard-00000.safetensors"]


def test_missing_items_are_named(tmp_path):
    fill(tmp_path, [0, 1, 2], shard_size=4)
    with pytest.raises(ArtifactError, match=r"no vector for 1 of 4 items \(item_id 4 'title new'\).*dvc repro embed"):
        load_item_embeddings(tmp_path, items_df([0, 1, 2, "new"]))


def test_no_cache_names_the_stage(tmp_path):
    with pytest.raises(ArtifactError, match="manifest.json.*dvc repro embed"):
        load_item_embeddings(tmp_path)


def test_one_writer_at_a_time(tmp_path):
    with EmbeddingCache(tmp_path, SETTINGS, 4), pytest.raises(ArtifactError, match="locked"):
        with EmbeddingCache(tmp_path, SETTINGS, 4):
            pass


def test_catalogue_is_verified(tmp_path):
    fill(tmp_path, list(range(3)), shard_size=4)
    assert read_catalogue(tmp_path)[0] == [1, 2, 3]
    flip_byte(tmp_path / "items.safetensors")
    with pytest.raises(ArtifactError, match="items.safetensors.*checksum"):
        load_item_embeddings(tmp_path)


def test_non_finite_vectors_are_refused(tmp_path):
    with EmbeddingCache(tmp_path, SETTINGS, 4) as cache:
        bad = torch.full((1, DIM), float("nan"))
        with pytest.raises(ArtifactError, match="NaN"):
            cache.add(bad, [h(0)], torch.zeros(1, dtype=torch.uint8))


class FakeEncoder:
    """Deterministic vectors from the text; records how many items each encode call saw."""

    name = "fake"
    dim = DIM

    def __init__(self):
        from molar_core.encoders.base import EncodeCounts

        self.counts = EncodeCounts()
        self.calls: list[int] = []

    def settings(self) -> dict:
        return SETTINGS

    def encode(self, texts, image_paths):
        self.calls.append(len(texts))
        self.counts.items += len(texts)
        self.last_image_used = [p is not None for p in image_paths]
        return torch.stack([vec(t) for t in texts])


def test_update_streams_in_windows_and_encodes_each_content_once(tmp_path):
    from molar_core.store import update_embeddings

    n = 2000
    texts = [f"item {i % 1500}" for i in range(n)]  # 500 duplicates of earlier contents
    items = pl.DataFrame({"item_id": list(range(1, n + 1)), "text": texts,
                          "image_path": pl.Series([None] * n, dtype=pl.String),
                          "content_hash": [h(t) for t in texts]})
    enc = FakeEncoder()
    flushed = []
    report = update_embeddings(tmp_path, items, enc, shard_size=256, window=64, after_flush=flushed.append)
    assert max(enc.calls) <= 64 and sum(enc.calls) == 1500  # bounded batches; duplicates encoded once
    assert len(flushed) == math.ceil(1500 / 256) and all(e.items <= 256 for e in flushed)
    assert (report.items, report.unique, report.embedded, report.reused) == (2000, 1500, 2000, 0)
    _, vectors = load_item_embeddings(tmp_path, items)
    assert torch.equal(vectors, torch.stack([vec(t) for t in texts]))
    again = update_embeddings(tmp_path, items, FakeEncoder(), shard_size=256)
    assert (again.embedded, again.reused, again.shards_written) == (0, 2000, [])


def test_identical_runs_write_byte_identical_shards(tmp_path):
    """safetensors keeps metadata in a hash map: molar writes it as one canonical key so bytes repeat."""
    from molar_core.store.shards import write_shard

    vecs, hashes = torch.arange(12, dtype=torch.float32).reshape(3, 4), ["a" * 64, "b" * 64, "c" * 64]
    blobs = set()
    for i in range(6):
        path = tmp_path / f"s{i}.safetensors"
        write_shard(path, vecs, hashes, torch.tensor([0, 1, 0]), "h" * 64)
        blobs.add(path.read_bytes())
    assert len(blobs) == 1


def test_update_reads_a_lazy_items_table_a_slice_at_a_time(tmp_path):
    """The embed stage's path: a parquet scan, texts read `slice_rows` rows at a time. Same vectors as the
    in-memory table; contents repeated across slice boundaries still encoded once; the Python heap holds one
    slice of texts, not the catalogue's (the old path held every text as a Python string: ~2x the texts)."""
    import tracemalloc

    from molar_core.store import update_embeddings

    n, filler = 6000, "x" * 2000
    texts = [f"item {i % 4000} {filler}" for i in range(n)]  # rows 4000.. repeat rows 0.., across slices
    items = pl.DataFrame({"item_id": list(range(1, n + 1)), "text": texts,
                          "image_path": pl.Series([None] * n, dtype=pl.String),
                          "content_hash": [h(t) for t in texts]})
    items.write_parquet(tmp_path / "items.parquet", row_group_size=500)
    del texts
    enc = FakeEncoder()
    tracemalloc.start()
    report = update_embeddings(tmp_path / "cache", pl.scan_parquet(tmp_path / "items.parquet"), enc,
                               shard_size=512, window=100, slice_rows=700)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert max(enc.calls) <= 100 and sum(enc.calls) == 4000
    assert (report.items, report.unique, report.embedded) == (6000, 4000, 6000)
    assert peak < 4e6, f"Python heap peaked at {peak / 1e6:.1f} MB (texts of the catalogue: 12 MB)"
    _, vectors = load_item_embeddings(tmp_path / "cache", items)
    assert torch.equal(vectors, torch.stack([vec(t) for t in items["text"].to_list()]))
    again = update_embeddings(tmp_path / "cache", items, FakeEncoder(), shard_size=512)
    assert (again.embedded, again.reused, again.shards_written) == (0, 6000, [])
