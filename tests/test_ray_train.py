"""distributed.launcher ray: train_id and train as Ray Train jobs on a two-node cluster (two raylets on this
machine, `ray.cluster_utils.Cluster`, one CPU each, so the two processes land on different nodes) train the
models torchrun trains, byte for byte, and a process killed mid-run is restarted and ends as an uninterrupted
run."""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray", reason="Ray is the `distributed` extra")

from molar_core.distributed.ray_train import check_shared_workdir  # noqa: E402
from molar_core.errors import MolarError  # noqa: E402
from stages import embed, prepare  # noqa: E402
from tests.conftest import small_params  # noqa: E402
from tests.test_ddp_stage import REPO, _artifacts, stage  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def base(ml_small, tmp_path_factory) -> tuple[Path, dict]:
    """A prepared and embedded workspace and the params every run here shares (world size 2, one thread)."""
    root = tmp_path_factory.mktemp("ray-train") / "base"
    p = small_params(ml_small, models=("sasrec", "molar"), max_epochs=6, dropout=0.2, patience=50)
    prepare.run(p.prepare, root)
    embed.run(p.embed, root)
    params = p.model_dump()
    params["train_id"].update(threads=1, distributed={"world_size": 2, "timeout_s": 120})
    params["train"].update(threads=1, max_epochs=2, distributed={"world_size": 2, "timeout_s": 120})
    return root, params


def workspace(base: tuple[Path, dict], root: Path, launcher: str, address: str = "local") -> Path:
    shutil.copytree(base[0], root)
    params = yaml.safe_load(yaml.safe_dump(base[1]))
    for section in ("train_id", "train"):
        params[section]["distributed"]["launcher"] = launcher
    params["runtime"]["address"] = address
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


@pytest.fixture(scope="module")
def torchrun_run(base, tmp_path_factory) -> Path:
    root = workspace(base, tmp_path_factory.mktemp("torchrun") / "w", "torchrun")
    stage(root, "stages.train_id")
    stage(root, "stages.train", "molar")
    return root


def _without_launcher(artifacts: dict) -> dict:
    cfg = {**artifacts["config"], "params": {**artifacts["config"]["params"]}}
    cfg["params"]["distributed"] = {k: v for k, v in cfg["params"]["distributed"].items() if k != "launcher"}
    return {**artifacts, "config": cfg}


@pytest.mark.slow
def test_ray_train_on_two_nodes_trains_the_torchrun_models(base, cluster, torchrun_run, tmp_path):
    root = workspace(base, tmp_path / "ray", "ray", cluster.address)
    stage(root, "stages.train_id")
    stage(root, "stages.train", "molar")
    for model in ("sasrec", "molar"):
        assert _without_launcher(_artifacts(root, model)) == _without_launcher(_artifacts(torchrun_run, model))
    assert not list((root / "artifacts").rglob("*.tmp"))


def _ray_train_workers() -> list[int]:
    """PIDs of this machine's Ray Train worker processes (Ray titles them `ray::RayTrainWorker...`)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if cmdline.read_bytes().startswith(b"ray::RayTrainWorker"):
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
def test_a_process_killed_mid_run_is_restarted_and_ends_as_an_uninterrupted_run(base, cluster, torchrun_run,
                                                                                 tmp_path):
    root = workspace(base, tmp_path / "killed", "ray", cluster.address)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "stages.train_id", "params.yaml"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "epoch 2/6 " in line:  # epoch 1 is saved (rank 0 saves after reporting an epoch)
                break
        else:
            pytest.fail("the job ended before its second epoch:\n" + "".join(seen)[-3000:])
        workers = _ray_train_workers()
        assert len(workers) == 2, workers
        os.kill(max(workers), signal.SIGKILL)
        out, _ = proc.communicate(timeout=900)
    finally:
        proc.kill()
    assert proc.returncode == 0, ("".join(seen) + out)[-3000:]
    cfg = json.loads((root / "artifacts/sasrec/config.json").read_text())
    assert cfg["resumed_after_epoch"] is not None  # the restarted group did resume
    assert _without_launcher(_artifacts(root)) == _without_launcher(_artifacts(torchrun_run))


def test_a_workspace_a_node_cannot_see_fails_naming_the_node_and_the_path(tmp_path):
    (tmp_path / "stats.json").write_text("{}")
    with pytest.raises(MolarError, match=r"on node n2, .*stats\.json is missing"):
        check_shared_workdir(str(tmp_path / "elsewhere"), "stats.json", "0" * 64, "n2")
    with pytest.raises(MolarError, match="different from the driver's"):
        check_shared_workdir(str(tmp_path), "stats.json", "0" * 64, "n2")


class _Cluster:
    """What train_on_ray asks of a connected Ray module: the cluster's resources."""

    def __init__(self, **resources):
        self.resources = resources

    def cluster_resources(self):
        return self.resources


def test_a_job_larger_than_the_cluster_fails_naming_the_keys_instead_of_waiting():
    from molar_core.distributed.ray_train import RayTrainJob, train_on_ray

    job = RayTrainJob(workers=4, workdir="/w", shared_file="s", shared_sha256="0", cpus_per_worker=1.0)
    with pytest.raises(MolarError, match=r"world_size 4 x cpus_per_process 1 need 4 CPUs in all, .* has 2"):
        train_on_ray(job, lambda: None, _Cluster(CPU=2.0))
    job.backend = "nccl"
    with pytest.raises(MolarError, match=r"one GPU each with nccl\) need 4 GPUs in all, .* has 1"):
        train_on_ray(job, lambda: None, _Cluster(CPU=8.0, GPU=1.0))


@pytest.mark.slow
def test_a_process_that_fails_ends_the_job_in_an_error_carrying_its_message(cluster, tmp_path):
    from molar_core.distributed.ray_train import RayTrainJob, train_on_ray
    from molar_core.io import sha256_file

    (tmp_path / "stats.json").write_text("{}")
    job = RayTrainJob(workers=2, workdir=str(tmp_path), shared_file="stats.json",
                      shared_sha256=sha256_file(tmp_path / "stats.json"), max_restarts=0, timeout_s=60)

    def fails() -> None:
        raise ValueError("the loss diverged at step 3")

    ray.init(address=cluster.address, log_to_driver=False)
    try:
        with pytest.raises(MolarError, match=r"(?s)training processes on Ray failed.*the loss diverged at step 3"):
            train_on_ray(job, fails, ray)
    finally:
        ray.shutdown()
