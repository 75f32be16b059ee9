"""RolloutWorker: holds the student engine; generates a prompt group's G completions with their
behaviour log-probs and policy version; loads new weights when told."""

from __future__ import annotations

import time
from typing import List, Tuple

import ray

from actors._common import set_threads
from rlkd_ray.assets import resolve_model
from rlkd_ray.config import RLKDConfig
from rlkd_ray.controller.samples import PromptGroup, Sample
from rlkd_ray.engines import make_engine
from rlkd_ray.engines.base import Sampling


@ray.remote
class RolloutWorker:
    def __init__(self, cfg: RLKDConfig, index: int):
        set_threads(cfg.rollout.num_cpus, cfg.rollout.engine.cpu_threads)
        self.cfg = cfg
        path = resolve_model(cfg.model.student, cfg.paths.cache_dir)
        self.engine = make_engine(cfg.rollout.engine, path, cfg.model.dtype, seed=cfg.trainer.seed + index,
                                  gpus=cfg.rollout.num_gpus)

    @ray.method(num_returns=2)
    def generate(self, group: PromptGroup) -> Tuple[dict, PromptGroup]:
        """(a small summary for the driver, the group with its samples for the reward pool)."""
        r = self.cfg.rollout
        sampling = Sampling(n=r.group_size, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                            max_new_tokens=r.max_new_tokens, stop=list(r.stop), seed=group.seed)
        start = time.perf_counter()
        completions = self.engine.generate([group.prompt_ids], sampling)[0]
        group.samples = [Sample(c.token_ids, c.logprobs, c.text, c.finish_reason, self.engine.version)
                         for c in completions]
        group.timings["generate"] = time.perf_counter() - start
        summary = {"uid": group.uid, "version": self.engine.version,
                   "tokens": sum(len(s.token_ids) for s in group.samples)}
        return summary, group

    def generate_with(self, prompts: List[List[int]], sampling: Sampling):
        """Completions of any prompts with any sampling (evaluation, checks)."""
        return self.engine.generate(prompts, sampling)

    def load_weights(self, version: int, weights: List[ray.ObjectRef]) -> float:
        """`weights` is a one-element list holding the object-store reference of the full state dict
        (a list, so that Ray hands the reference over instead of resolving it in the driver)."""
        start = time.perf_counter()
        self.engine.load_weights(version, ray.get(weights[0]))
        return time.perf_counter() - start

    def sync_ranks(self) -> int:
        return self.engine.sync_ranks

    def join_weight_sync(self, host: str, port: int, first_rank: int, world_size: int, timeout_s: float) -> None:
        self.engine.join_weight_sync(host, port, first_rank, world_size, timeout_s)

    def receive_weights(self) -> float:
        """One broadcast sync (cluster.weight_sync: broadcast); returns the seconds it took here."""
        start = time.perf_counter()
        self.engine.receive_weights()
        return time.perf_counter() - start

    def leave_weight_sync(self) -> None:
        self.engine.leave_weight_sync()

    def version(self) -> int:
        return self.engine.version

    def close(self) -> None:
        self.engine.close()
