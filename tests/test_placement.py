"""Placement of the pools' actors: bundles of tensor-parallel engines, actor options, node resources."""

import time
from pathlib import Path

import pytest

from rlkd_ray.config import load_config
from rlkd_ray.controller.placement import NODE_SHARE, actor_options, engine_bundles, engine_placement


def test_bundles_of_a_tensor_parallel_engine():
    assert engine_bundles(4, num_cpus=2, num_gpus=1) == [{"CPU": 2, "GPU": 1}, {"GPU": 1}, {"GPU": 1}, {"GPU": 1}]
    assert engine_bundles(2, num_cpus=1, num_gpus=1, node_resource="rlkd_rollout") == [
        {"CPU": 1, "GPU": 1, "rlkd_rollout": NODE_SHARE}, {"GPU": 1, "rlkd_rollout": NODE_SHARE}]
    assert engine_bundles(1, num_cpus=1, num_gpus=0) == [{"CPU": 1}]


CONF = Path(__file__).resolve().parent.parent / "conf"


def test_cluster_configs_load():
    one = load_config(CONF / "cluster.yaml")
    gpus = (one.learner.world_size * one.learner.num_gpus + one.rollout.num_workers * one.rollout.num_gpus
            + one.reward.num_workers * one.reward.num_gpus)
    assert gpus == 8 and one.cluster.weight_sync == "broadcast" and one.model.student == "Qwen/Qwen2.5-Math-7B"
    many = load_config(CONF / "cluster_multinode.yaml")
    assert many.rollout.num_workers * many.rollout.engine.tensor_parallel_size * many.rollout.num_gpus == 8
    assert {many.cluster.learner_node, many.cluster.rollout_node, many.cluster.reward_node} == {
        "rlkd_learner", "rlkd_rollout", "rlkd_reward"}


def test_bundles_from_the_cluster_configs():
    cfg = load_config(CONF / "cluster_multinode.yaml", ["rollout.engine.tensor_parallel_size=2"])
    r = cfg.rollout
    bundles = engine_bundles(r.engine.tensor_parallel_size, r.num_cpus, r.num_gpus, cfg.cluster.rollout_node)
    assert len(bundles) == r.engine.tensor_parallel_size == 2
    assert sum(b["GPU"] for b in bundles) == 2 and bundles[0]["CPU"] == r.num_cpus
    assert all(b[cfg.cluster.rollout_node] == NODE_SHARE for b in bundles)


def test_bad_bundles_are_refused():
    with pytest.raises(ValueError, match="tensor_parallel_size must be >= 1"):
        engine_bundles(0, 1, 1)
    with pytest.raises(ValueError, match="needs num_gpus > 0"):
        engine_bundles(2, 1, 0)
    with pytest.raises(ValueError, match="both 0"):
        engine_bundles(1, 0, 0)


def test_actor_options():
    assert actor_options(2, 1) == {"num_cpus": 2, "num_gpus": 1}
    assert actor_options(1, 1, "rlkd_reward") == {"num_cpus": 1, "num_gpus": 1, "resources": {"rlkd_reward": NODE_SHARE}}
    assert engine_placement(1, 1, 1, "rlkd_reward") == (actor_options(1, 1, "rlkd_reward"), None)


def test_tensor_parallel_actor_sits_in_bundle_zero_and_lends_it_to_its_workers():
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    pg = PlacementGroup(PlacementGroupID.from_random())
    opts = actor_options(1, 1, "rlkd_rollout", placement_group=pg)
    strategy = opts.pop("scheduling_strategy")
    assert opts == {"num_cpus": 1, "num_gpus": 0}  # its GPUs are the bundles' own, taken by the engine workers
    assert strategy.placement_group is pg and strategy.placement_group_bundle_index == 0
    assert strategy.placement_group_capture_child_tasks is True


def test_broadcast_sync_and_tensor_parallel_config_checks():
    from rlkd_ray.config import ConfigError

    assert load_config(CONF / "cluster.yaml").cluster.weight_sync == "broadcast"
    assert load_config(CONF / "local.yaml", ["cluster.weight_sync=broadcast"]).cluster.weight_sync == "broadcast"
    with pytest.raises(ConfigError, match=r"same kind of device.*learner.num_gpus=1.0, rollout.num_gpus=0.0"):
        load_config(CONF / "local.yaml", ["cluster.weight_sync=broadcast", "learner.num_gpus=1"])
    with pytest.raises(ConfigError, match="'cluster.bucket_mb'"):
        load_config(CONF / "cluster.yaml", ["cluster.bucket_mb=0"])
    with pytest.raises(ConfigError, match="choose one of object_store, broadcast"):
        load_config(CONF / "cluster.yaml", ["cluster.weight_sync=ray"])
    with pytest.raises(ConfigError, match="'reward.engine.tensor_parallel_size' is 2.*backend hf"):
        load_config(CONF / "cluster.yaml", ["reward.engine.tensor_parallel_size=2", "reward.engine.backend=hf"])
    with pytest.raises(ConfigError, match="'rollout.engine.tensor_parallel_size' is 2.*num_gpus 0.0"):
        load_config(CONF / "local.yaml", ["rollout.engine.tensor_parallel_size=2"])
    # fractional GPUs per rank would hang: vLLM's Ray executor asks each worker for a whole GPU
    with pytest.raises(ConfigError, match="'rollout.engine.tensor_parallel_size' is 2.*num_gpus = 1.*num_gpus 0.5"):
        load_config(CONF / "cluster_multinode.yaml", ["rollout.num_gpus=0.5"])


def test_tensor_parallel_engine_reserves_its_gpus_and_releases_them(ray_cluster):
    """A pool of tensor-parallel engines on a cluster that declares 2 GPUs: each actor starts inside
    its own placement group of one GPU bundle per rank, and the group goes when the worker does."""
    import ray
    from ray.util import placement_group_table

    from rlkd_ray.controller.placement import start_engine_actor
    from rlkd_ray.controller.pools import ActorPool

    @ray.remote
    class EngineHolder:  # stands in for RolloutWorker (no GPU here to start vLLM on): where did Ray put it?
        def __init__(self, index):
            self.index = index

        def placement(self):
            pg = ray.util.get_current_placement_group()
            return pg.id.hex() if pg else None, ray.get_runtime_context().get_assigned_resources()

        def close(self):
            pass

    cfg = load_config(CONF / "local.yaml", ["rollout.engine.tensor_parallel_size=2", "rollout.num_gpus=1",
                                            "rollout.num_cpus=0.1"])
    gpus = ray.cluster_resources()["GPU"]
    pool = ActorPool("rollout", lambda i: start_engine_actor(EngineHolder, cfg.rollout, None, i), 1)
    try:
        pg = pool.groups[0]
        pg_id, resources = ray.get(pool.call(0, "placement"))
        assert pg_id == pg.id.hex()
        assert "GPU" not in resources  # the actor holds no GPU: the engine's workers take the bundles'
        assert list(placement_group_table(pg)["bundles"].values()) == [{"CPU": 0.1, "GPU": 1.0}, {"GPU": 1.0}]
        assert placement_group_table(pg)["strategy"] == "STRICT_PACK"
        assert ray.available_resources().get("GPU", 0) == gpus - 2
    finally:
        pool.shutdown()
    deadline = time.time() + 30
    while placement_group_table(pg)["state"] != "REMOVED" and time.time() < deadline:
        time.sleep(0.2)
    assert placement_group_table(pg)["state"] == "REMOVED" and not pool.groups
