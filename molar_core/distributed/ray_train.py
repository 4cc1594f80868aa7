"""Data-parallel training as a Ray Train job: `TorchTrainer` starts the processes on any nodes of a Ray cluster
and forms their torch.distributed group (gloo, or nccl on GPUs); each process then runs the same training
function as a torchrun process (`molar_core.distributed.ddp` does the gradient exchange), so the models are the
ones torchrun trains.

The processes read their inputs and write their outputs (and the per-epoch resume state) in one directory by
absolute path, as torchrun's processes do on one machine: across nodes that directory must be on a filesystem
every node mounts at the same path. Each process checks this before training (a file the caller names must be
there, with the caller's bytes) and fails naming the node and the path otherwise. A process that dies makes Ray
Train restart the whole group (`max_restarts`), which resumes from the last saved epoch.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from molar_core.distributed.ray_cluster import require_resources
from molar_core.errors import MolarError
from molar_core.io import sha256_file

THREADS_ENV = "MOLAR_PROCESS_THREADS"  # torch threads of a process whose training settings leave it to the launcher


@dataclass
class RayTrainJob:
    workers: int
    workdir: str  # absolute: every process chdirs here
    shared_file: str  # relative to workdir: must hold the caller's bytes on every node
    shared_sha256: str
    cpus_per_worker: float = 1.0
    backend: str = "auto"  # auto: nccl where the cluster has GPUs, else gloo
    max_restarts: int = 3
    timeout_s: int = 1800


def check_shared_workdir(workdir: str, shared_file: str, sha256: str, node: str) -> None:
    """Fail (naming the node and the path) where this process does not see the caller's workdir."""
    path = Path(workdir) / shared_file
    if not path.is_file() or sha256_file(path) != sha256:
        state = "missing" if not path.is_file() else "different from the driver's"
        raise MolarError(f"distributed.launcher ray: on node {node}, {path} is {state}; the workspace must be on a "
                         "filesystem every node of the cluster mounts at the same path")


def _worker(config: dict) -> None:
    """One training process, in a Ray Train worker whose process group is already formed."""
    import socket

    job: RayTrainJob = config["job"]
    check_shared_workdir(job.workdir, job.shared_file, job.shared_sha256, socket.gethostname())
    os.chdir(job.workdir)
    os.environ[THREADS_ENV] = str(max(1, int(job.cpus_per_worker)))
    config["entry"]()


def train_on_ray(job: RayTrainJob, entry: Callable[[], None], ray) -> None:
    """Run `entry` in `job.workers` processes of the connected Ray cluster (connect first) and wait for them; a
    failure after the restarts raises MolarError with the processes' error."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    backend = job.backend
    if backend == "auto":
        backend = "nccl" if ray.cluster_resources().get("GPU", 0) > 0 else "gloo"
    require_resources(ray, {"CPU": job.workers * job.cpus_per_worker, "GPU": job.workers if backend == "nccl" else 0},
                      f"distributed.world_size {job.workers} x cpus_per_process {job.cpus_per_worker:g}"
                      + (" (and one GPU each with nccl)" if backend == "nccl" else ""))
    storage = tempfile.mkdtemp(prefix="molar-ray-train-")  # Ray Train's run records; the outputs go to workdir
    try:
        trainer = TorchTrainer(
            _worker, train_loop_config={"job": job, "entry": entry},
            torch_config=TorchConfig(backend=backend, timeout_s=job.timeout_s),
            scaling_config=ScalingConfig(num_workers=job.workers, use_gpu=backend == "nccl",
                                         resources_per_worker={"CPU": job.cpus_per_worker}),
            run_config=RunConfig(name="molar-train", storage_path=storage,
                                 failure_config=FailureConfig(max_failures=job.max_restarts)))
        try:
            trainer.fit()
        except Exception as err:  # Ray Train's TrainingFailedError carries the processes' errors
            raise MolarError(f"the {job.workers} training processes on Ray failed (a failed group is restarted up "
                             f"to {job.max_restarts} times): {err}") from None
    finally:
        shutil.rmtree(storage, ignore_errors=True)
