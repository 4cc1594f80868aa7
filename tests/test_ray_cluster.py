"""embed.engine ray on a two-node cluster (two raylets on this machine, `ray.cluster_utils.Cluster`): the actors
spread over both nodes and the cache is the one a single process writes."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray", reason="Ray is the `distributed` extra")

from pipeline.params import EmbedParams, RuntimeParams  # noqa: E402
from stages import embed  # noqa: E402
from tests.test_embed_stage import TITLES, write_items  # noqa: E402
from tests.test_ray_embed import files  # noqa: E402

pytestmark = pytest.mark.slow


def test_actors_on_two_nodes_write_the_single_process_cache(tmp_path):
    from ray.cluster_utils import Cluster

    params = {"encoder": "mllm", "model": "tiny", "shard_size": 4, "batch_size": 2, "max_pixels": 28 * 28 * 4,
              "threads": 1}
    local = tmp_path / "local"
    write_items(local, TITLES)
    embed.run(EmbedParams(**params), local)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        remote = tmp_path / "cluster"
        write_items(remote, TITLES)
        m = embed.run(EmbedParams(**params, engine="ray", ray={"actors": 2}), remote,
                      RuntimeParams(address=cluster.address))
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert m["encoder_runtime"]["nodes"] == 2  # one actor per node
    assert files(remote) == files(local)
