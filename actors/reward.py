"""RewardWorker: holds the GSRM decomposer and the judge (one engine when they are the same model)
and scores whole prompt groups. The pool of these scales independently of the rollout pool.
Without a generative structure reward (`reward.gsrm_backend: rule`, or `reward.weights.structure` 0)
it loads no model at all."""

from __future__ import annotations

from typing import List

import ray

from actors._common import set_threads
from rlkd_ray.assets import resolve_model
from rlkd_ray.config import RLKDConfig
from rlkd_ray.controller.samples import PromptGroup
from rlkd_ray.engines import make_engine
from rlkd_ray.gsrm import Structure
from rlkd_ray.rewards.scoring import GroupScorer


@ray.remote
class RewardWorker:
    def __init__(self, cfg: RLKDConfig, index: int):
        from transformers import AutoTokenizer

        set_threads(cfg.reward.num_cpus, cfg.reward.engine.cpu_threads)
        self.engines = []
        if not cfg.reward.runs_gsrm_model():
            self.scorer = GroupScorer(cfg.reward)
            return
        cache = cfg.paths.cache_dir
        gsrm_path = resolve_model(cfg.model.gsrm, cache)
        judge_path = resolve_model(cfg.model.judge, cache) if cfg.model.judge else gsrm_path
        paths = [gsrm_path] + ([judge_path] if judge_path != gsrm_path else [])
        gpus = cfg.reward.num_gpus / len(paths)  # a separate judge engine shares the worker's GPU(s)
        self.engines = [make_engine(cfg.reward.engine, p, cfg.model.dtype, seed=index, gpus=gpus) for p in paths]
        gsrm_tok = AutoTokenizer.from_pretrained(gsrm_path)
        judge_tok = gsrm_tok if judge_path == gsrm_path else AutoTokenizer.from_pretrained(judge_path)
        self.scorer = GroupScorer(cfg.reward, self.engines[0], self.engines[-1], gsrm_tok, judge_tok)

    def score(self, group: PromptGroup) -> PromptGroup:
        return self.scorer.score(group)

    def decompose(self, problem: str, reasonings: List[str]) -> List[Structure]:
        """GSRM decompositions of reasoning paths of one problem (one batched, greedy call)."""
        return self.scorer.decompose(problem, reasonings)

    def close(self) -> None:
        for engine in self.engines:
            engine.close()
