"""Connecting to Ray: a private local instance, the cluster `ray start` left running, or a given head.

`ray.init(address=...)` on an unreachable head keeps retrying for minutes; the head's port is probed first with
a timeout, so a wrong address fails in seconds naming it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from molar_core.errors import MolarError

CURRENT_CLUSTER = Path("/tmp/ray/ray_current_cluster")  # where `ray start --head` records its address


@dataclass
class RayConnection:
    address: str = "local"  # local: a private instance in this process | auto: RAY_ADDRESS or `ray start`'s | host:port
    connect_timeout_s: float = 30.0
    num_cpus: int | None = None  # local only: CPUs the private instance offers (None: all)


def import_ray():
    try:
        import ray
    except ImportError:
        raise MolarError("Ray is not installed: pip install 'molar[distributed]' (or set embed.engine: local)") from None
    return ray


def resolve_address(address: str) -> str | None:
    """The head's host:port for `auto` or `host:port`, None for `local`."""
    if address == "local":
        return None
    if address == "auto":
        found = os.environ.get("RAY_ADDRESS") or (CURRENT_CLUSTER.read_text().strip()
                                                   if CURRENT_CLUSTER.exists() else "")
        if not found:
            raise MolarError("runtime.address auto: no RAY_ADDRESS and no cluster started here with `ray start "
                             "--head`; start one, or set runtime.address to local or host:port")
        return found.removeprefix("ray://") if found.startswith("ray://") else found
    return address


def probe(address: str, timeout_s: float) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise MolarError(f"runtime.address {address!r}: expected local, auto or host:port")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as err:
        raise MolarError(f"runtime.address {address}: no Ray head answers within {timeout_s:g} s ({err}); start "
                         "one with `ray start --head`, or set runtime.address: local") from None


def connect(conn: RayConnection, log_to_driver: bool = False):
    """Initialise Ray once per process (a second call reuses the connection) and return the module;
    `log_to_driver` prints the workers' output here (a training job's progress lines)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    address = resolve_address(conn.address)
    if address is None:
        ray.init(num_cpus=conn.num_cpus, include_dashboard=False, log_to_driver=log_to_driver,
                 configure_logging=False)
    else:
        probe(address, conn.connect_timeout_s)
        ray.init(address=address, log_to_driver=log_to_driver, configure_logging=False)
    return ray


def require_resources(ray, need: dict[str, float], keys: str) -> None:
    """Fail where the cluster lacks what a pool or job needs in total (`need`: {"CPU": n, "GPU": m}), naming the
    params (`keys`) that asked for it: Ray would otherwise wait for the resources without end."""
    have = ray.cluster_resources()
    for kind, n in need.items():
        if n > have.get(kind, 0):
            raise MolarError(f"{keys} need {n:g} {kind}s in all, but the Ray cluster has {have.get(kind, 0):g}: "
                             "lower them or add nodes")
