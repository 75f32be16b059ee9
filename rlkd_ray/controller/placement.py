"""Where the actors of each pool run on a Ray cluster.

An engine with one GPU needs no placement group: its actor asks for the GPU itself. A tensor-parallel
engine takes one placement group of `tensor_parallel_size` GPU bundles on one node (STRICT_PACK):
bundle 0 also holds the engine's actor (its CPUs, no GPU of its own), and vLLM's Ray executor,
started inside that actor, finds the group and puts one worker on each GPU bundle. A pool can be kept
to the nodes that offer its custom resource (`cluster.rollout_node`, ...): each actor or bundle asks
for a sliver of it, so the resource marks nodes without limiting how many actors they take.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

NODE_SHARE = 0.001  # of a pool's node resource, per actor or bundle
TP_STRATEGY = "STRICT_PACK"  # tensor-parallel ranks talk every layer: never across nodes


def engine_bundles(tensor_parallel_size: int, num_cpus: float, num_gpus: float,
                   node_resource: Optional[str] = None) -> List[Dict[str, float]]:
    """Placement-group bundles of one engine: `num_gpus` per tensor-parallel rank, the actor's CPUs
    in bundle 0."""
    if tensor_parallel_size < 1:
        raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
    if tensor_parallel_size > 1 and num_gpus <= 0:
        raise ValueError(f"a tensor-parallel engine (size {tensor_parallel_size}) needs num_gpus > 0 per rank")
    bundles = [{"CPU": num_cpus, "GPU": num_gpus}] + [{"GPU": num_gpus} for _ in range(tensor_parallel_size - 1)]
    bundles = [{k: v for k, v in b.items() if v > 0} for b in bundles]
    if node_resource:
        for b in bundles:
            b[node_resource] = NODE_SHARE
    if not bundles[0]:
        raise ValueError("an engine's actor needs some CPU or GPU: num_cpus and num_gpus are both 0")
    return bundles


def actor_options(num_cpus: float, num_gpus: float, node_resource: Optional[str] = None,
                  placement_group=None) -> dict:
    """`ActorClass.options(**...)` of one pool actor: on its own resources, or (tensor-parallel) in
    bundle 0 of its placement group, which it lends to the engine workers it starts."""
    if placement_group is None:
        opts: dict = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        if node_resource:
            opts["resources"] = {node_resource: NODE_SHARE}
        return opts
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"num_cpus": num_cpus, "num_gpus": 0, "scheduling_strategy": PlacementGroupSchedulingStrategy(
        placement_group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True)}


def engine_placement(tensor_parallel_size: int, num_cpus: float, num_gpus: float,
                     node_resource: Optional[str] = None, timeout_s: float = 600.0) -> Tuple[dict, object]:
    """(actor options, placement group or None) of one engine actor; a placement group is reserved and
    ready before this returns. Remove it (`ray.util.remove_placement_group`) once the actor is gone."""
    if tensor_parallel_size == 1:
        return actor_options(num_cpus, num_gpus, node_resource), None
    import ray
    from ray.exceptions import GetTimeoutError
    from ray.util import placement_group, remove_placement_group

    bundles = engine_bundles(tensor_parallel_size, num_cpus, num_gpus, node_resource)
    pg = placement_group(bundles, strategy=TP_STRATEGY)
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except GetTimeoutError:
        remove_placement_group(pg)
        raise RuntimeError(f"no node could hold a tensor-parallel engine's bundles {bundles} "
                           f"({TP_STRATEGY}) within {timeout_s:.0f} s") from None
    return actor_options(num_cpus, num_gpus, node_resource, pg), pg


def start_engine_actor(actor_cls, pool_cfg, node_resource: Optional[str], *args) -> Tuple[Any, object]:
    """(handle, placement group or None) of one engine actor of a pool (`cfg.rollout` / `cfg.reward`):
    its engine's tensor-parallel ranks reserved first, then the actor started in that reservation."""
    opts, pg = engine_placement(pool_cfg.engine.tensor_parallel_size, pool_cfg.num_cpus, pool_cfg.num_gpus,
                                node_resource)
    return actor_cls.options(**opts).remote(*args), pg
