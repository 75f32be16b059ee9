"""Generation engines: one `Engine` interface (base.py), backends transformers (hf) and vLLM (vllm)."""

from __future__ import annotations

from rlkd_ray.config import EngineConfig
from rlkd_ray.engines.base import Completion, Engine, Sampling

__all__ = ["Completion", "Engine", "Sampling", "make_engine"]


def gpu_memory_share(engine_cfg: EngineConfig, gpus: float) -> float:
    """vLLM's gpu_memory_utilization for an engine holding `gpus` of a GPU: engines that share one
    GPU (gpus < 1) split what one engine would take, else the second to start finds too little free."""
    return engine_cfg.gpu_memory_utilization * gpus if 0 < gpus < 1 else engine_cfg.gpu_memory_utilization


def make_engine(engine_cfg: EngineConfig, model_path: str, dtype: str, seed: int = 0, gpus: float = 1.0) -> Engine:
    """The backend `engine_cfg.backend` on `model_path` (imported only when chosen); `gpus` is the
    pool's `num_gpus` (per tensor-parallel rank)."""
    if engine_cfg.backend == "hf":
        from rlkd_ray.engines.hf import HFEngine

        return HFEngine(
            model_path,
            dtype=dtype,
            batch_size=engine_cfg.batch_size,
            max_model_len=engine_cfg.max_model_len,
            seed=seed,
            threads=engine_cfg.cpu_threads,
            cpu_cores=engine_cfg.cpu_cores,
        )
    if engine_cfg.backend == "vllm":
        from rlkd_ray.engines.vllm import VLLMEngine

        return VLLMEngine(
            model_path,
            dtype=dtype,
            max_model_len=engine_cfg.max_model_len,
            kv_cache_gib=engine_cfg.kv_cache_gib,
            enforce_eager=engine_cfg.enforce_eager,
            seed=seed,
            threads=engine_cfg.cpu_threads,
            cpu_cores=engine_cfg.cpu_cores,
            gpu_memory_utilization=gpu_memory_share(engine_cfg, gpus),
            tensor_parallel_size=engine_cfg.tensor_parallel_size,
        )
    raise ValueError(f"engine backend {engine_cfg.backend!r}: choose hf or vllm")
