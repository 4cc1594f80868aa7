"""The CUDA paths of the distributed stages, where a CUDA device exists (skipped elsewhere, see conftest):
embed's Ray actor pool on the GPU, and train_id's process group on nccl (two devices: NCCL refuses two ranks
on one device)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from molar_core.vectors import load_item_vectors
from pipeline.params import EmbedParams, RuntimeParams
from stages import embed, prepare
from tests.conftest import small_params
from tests.test_ddp_stage import stage
from tests.test_embed_stage import TITLES, write_items

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def _cache_vectors(root):
    from safetensors.numpy import load_file

    store = root / "artifacts/embeddings"
    return {p.name: load_file(p) for p in sorted(store.glob("shard-*.safetensors"))}


def test_the_actor_pool_embeds_on_the_gpu_what_one_process_embeds_there(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is the `distributed` extra")
    params = {"encoder": "mllm", "model": "tiny", "shard_size": 4, "batch_size": 2, "max_pixels": 28 * 28 * 4,
              "device": "cuda"}
    metrics = {}
    for engine in ("local", "ray"):
        root = tmp_path / engine
        write_items(root, TITLES)
        p = EmbedParams(**params, engine=engine, ray={"actors": 1, "gpus_per_actor": 1.0})
        metrics[engine] = embed.run(p, root, RuntimeParams())
    ray.shutdown()
    assert metrics["ray"]["encoder_runtime"]["engine"] == "ray"
    assert "cuda" in json.dumps(metrics["ray"]["encoder_runtime"]).lower()  # the actor encoded on the device
    local, remote = _cache_vectors(tmp_path / "local"), _cache_vectors(tmp_path / "ray")
    assert local.keys() == remote.keys()
    for name in local:
        for key in local[name]:
            np.testing.assert_allclose(remote[name][key], local[name][key], atol=1e-4, err_msg=f"{name} {key}")


def test_two_processes_on_nccl_train_the_gloo_model(ml_small, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 CUDA devices for an nccl group (this machine has {torch.cuda.device_count()})")
    base = tmp_path / "base"
    p = small_params(ml_small, max_epochs=3, dropout=0.0)
    prepare.run(p.prepare, base)
    runs = {}
    for backend in ("gloo", "nccl"):
        root = tmp_path / backend
        shutil.copytree(base, root)
        params = p.model_dump()
        params["train_id"].update(device="cuda" if backend == "nccl" else "cpu",
                                  distributed={"world_size": 2, "backend": backend})
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        stage(root, "stages.train_id")
        runs[backend] = root
    configs = [json.loads((runs[b] / "artifacts/sasrec/config.json").read_text()) for b in ("gloo", "nccl")]
    assert configs[0]["best_epoch"] == configs[1]["best_epoch"]
    for k, v in configs[0]["valid"].items():
        assert configs[1]["valid"][k] == pytest.approx(v, abs=0.01), k
    a, b = (load_item_vectors(runs[b] / "artifacts/sasrec/item_vectors.safetensors") for b in ("gloo", "nccl"))
    np.testing.assert_allclose(a, b, atol=2e-3)
