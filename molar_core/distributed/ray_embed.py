"""Item encoding on a Ray actor pool: each actor builds the project's own encoder once and encodes windows of
items; the driver hands out windows as actors free up and receives the vectors in window order, so the embedding
cache it writes (shards, manifest, items table) is the one a single process writes.

The driver never loads the model: the actors report the encoder settings (the cache key), and must all report
the same. An actor that dies mid-window (a killed process, a lost node) is restarted by Ray and the window is
retried (`max_restarts`, `max_task_retries`), so a crash costs that window's time, not a wrong cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import polars as pl
import torch

from molar_core.distributed.ray_cluster import require_resources
from molar_core.encoders.base import EncodeCounts, EncoderConfig, ItemEncoder, settings_hash
from molar_core.errors import MolarError


@dataclass
class ActorPoolConfig:
    actors: int = 2
    cpus_per_actor: float = 1.0  # Ray's CPU claim per actor (also its torch threads, at least 1)
    gpus_per_actor: float = 0.0  # 1 on GPU machines: one actor per device
    max_restarts: int = 3  # an actor killed mid-window is restarted this often, and the window retried
    spread: bool = True  # place the actors on as many nodes as possible (Ray's SPREAD) rather than packing them


class _EncoderActor:
    """Lives in a Ray worker process: one encoder, built once."""

    def __init__(self, cfg: dict, threads: int):
        from molar_core.encoders import build_encoder

        torch.set_num_threads(max(1, threads))
        self.encoder = build_encoder(EncoderConfig(**cfg))

    def describe(self) -> dict:
        import os
        import socket

        import ray

        e = self.encoder
        return {"settings": e.settings(), "name": e.name, "dim": e.dim, "runtime": e.runtime(),
                "backend_note": e.backend_note, "host": socket.gethostname(), "pid": os.getpid(),
                "node": ray.get_runtime_context().get_node_id()}

    def encode(self, texts: list[str], images: list[str | None]) -> tuple[np.ndarray, np.ndarray, EncodeCounts]:
        """Vectors, image-used flags and the counts of this window alone (the driver adds them up)."""
        self.encoder.counts = EncodeCounts()
        vec = self.encoder.encode(texts, images)
        return vec.numpy(), np.asarray(self.encoder.last_image_used, dtype=np.uint8), self.encoder.counts


class RayPoolEncoder(ItemEncoder):
    """An ItemEncoder whose work runs on `pool.actors` Ray actors (connect to Ray first)."""

    def __init__(self, cfg: EncoderConfig, pool: ActorPoolConfig):
        import ray
        from ray.util import ActorPool

        if pool.actors < 1:
            raise MolarError(f"embed.ray.actors must be >= 1, got {pool.actors}")
        require_resources(ray, {"CPU": pool.actors * pool.cpus_per_actor, "GPU": pool.actors * pool.gpus_per_actor},
                          f"embed.ray.actors {pool.actors} x cpus_per_actor {pool.cpus_per_actor:g}, gpus_per_actor "
                          f"{pool.gpus_per_actor:g}")
        remote = ray.remote(num_cpus=pool.cpus_per_actor, num_gpus=pool.gpus_per_actor,
                            max_restarts=pool.max_restarts, max_task_retries=pool.max_restarts,
                            scheduling_strategy="SPREAD" if pool.spread else "DEFAULT")(_EncoderActor)
        threads = int(cfg.threads or max(1, round(pool.cpus_per_actor)))
        self.handles = [remote.remote(asdict(cfg), threads) for _ in range(pool.actors)]
        info = ray.get([h.describe.remote() for h in self.handles])
        hashes = {settings_hash(i["settings"]) for i in info}
        if len(hashes) != 1:
            raise MolarError(f"the {pool.actors} encoder actors report different settings (model files or "
                             f"versions differ between nodes): {sorted(hashes)}")
        first = info[0]
        self.cfg, self.pool_cfg, self.info = cfg, pool, info
        self.name, self.dim, self._settings = first["name"], first["dim"], first["settings"]
        self.backend_note = first["backend_note"]
        self.counts = EncodeCounts()
        self.last_image_used: list[bool] = []
        self._pool = ActorPool(self.handles)

    def settings(self) -> dict:
        return self._settings

    def runtime(self) -> dict:
        return {"engine": "ray", "actors": len(self.handles), "hosts": sorted({i["host"] for i in self.info}),
                "nodes": len({i["node"] for i in self.info}),
                "cpus_per_actor": self.pool_cfg.cpus_per_actor, "gpus_per_actor": self.pool_cfg.gpus_per_actor,
                "actor_runtime": self.info[0]["runtime"]}

    def encode(self, texts: list[str], image_paths: list[str | None]) -> torch.Tensor:
        batch = pl.DataFrame({"text": texts, "image_path": image_paths}, schema={"text": pl.String,
                                                                                "image_path": pl.String})
        _, vec, used = next(self.encode_stream([batch]))
        self.last_image_used = [bool(x) for x in used]
        return vec

    def encode_stream(self, windows: Iterable[pl.DataFrame]
                      ) -> Iterator[tuple[pl.DataFrame, torch.Tensor, torch.Tensor]]:
        """Every actor busy with one window and the next queued (so none waits for the driver); results in
        window order."""
        queued: list[pl.DataFrame] = []
        pool = self._pool

        def submit(batch: pl.DataFrame) -> None:
            pool.submit(lambda actor, b: actor.encode.remote(b["text"].to_list(), b["image_path"].to_list()), batch)
            queued.append(batch)

        def receive() -> tuple[pl.DataFrame, torch.Tensor, torch.Tensor]:
            vec, used, counts = pool.get_next()  # in submission order
            self.counts.add(counts)
            return queued.pop(0), torch.from_numpy(vec.copy()), torch.from_numpy(used.copy()).reshape(-1)

        for batch in windows:
            while len(queued) >= 2 * len(self.handles):
                yield receive()
            submit(batch)
        while queued:
            yield receive()

    def close(self) -> None:
        import ray

        for h in self.handles:
            ray.kill(h)
