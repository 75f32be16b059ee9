"""Reward scoring: the call pattern of the RLKD release against ours, on the same GSRM/judge engine and
the same groups of real student paths.

- released: for every sample, the teacher's reasoning is decomposed again, then the student's path
  (one GSRM call each), then one judge call per compared field, one after another;
- ours (`GroupScorer.score`): the teacher structure decomposed once per problem and cached, the
  group's paths in one GSRM call, every comparison of the group in one judge call.

Both give each sample its structure reward through the same functions (`judge_requests`,
`score_from_verdicts`); the page reports how often the two rewards are equal (batching may change
greedy decoding in the last bits). The student paths are generated first (the config's student and
rollout settings, seeded); each problem's teacher structure is left to the GSRM, as for a dataset
without prepared structures.

    python benchmarks/reward_calls.py --config conf/arith_gsrm_local.yaml --groups 4
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path

import _report
from transformers import AutoTokenizer

from rlkd_ray.assets import resolve_model
from rlkd_ray.config import load_config
from rlkd_ray.controller.prompt_source import PromptSource
from rlkd_ray.controller.samples import Sample
from rlkd_ray.data.answers import think_text
from rlkd_ray.engines import make_engine
from rlkd_ray.engines.base import Sampling
from rlkd_ray.gsrm.reward import judge_requests, score_from_verdicts
from rlkd_ray.rewards.scoring import GroupScorer

ROOT = Path(__file__).resolve().parent.parent


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "conf" / "arith_gsrm_local.yaml"))
    p.add_argument("--groups", type=int, default=4, help="prompt groups scored by each pattern")
    p.add_argument("--threads", type=int, default=2)
    _report.add_output_args(p)
    return p.parse_args()


def student_groups(cfg, n: int, threads: int) -> list:
    """`n` prompt groups of the config's first training steps with their sampled completions."""
    source = PromptSource(cfg)
    groups = [source.group(i // cfg.trainer.prompts_per_step, i % cfg.trainer.prompts_per_step) for i in range(n)]
    r = cfg.rollout
    engine = make_engine(replace(r.engine, cpu_cores=None, cpu_threads=threads),
                         resolve_model(cfg.model.student, cfg.paths.cache_dir), "float32", seed=cfg.trainer.seed)
    try:
        for g in groups:
            sampling = Sampling(n=r.group_size, temperature=r.temperature, max_new_tokens=r.max_new_tokens, seed=g.seed)
            g.samples = [Sample(c.token_ids, c.logprobs, c.text, c.finish_reason, 0)
                         for c in engine.generate([g.prompt_ids], sampling)[0]]
            g.completion_prefix = source.completion_prefix
    finally:
        engine.close()
    for g in groups:  # no prepared structure: the GSRM decomposes the teacher's reasoning
        g.problem = replace(g.problem, teacher_structure=None)
    return groups


class Counted:
    """An engine that counts its calls and the prompts in them."""

    def __init__(self, engine):
        self.engine, self.calls, self.prompts = engine, 0, 0

    def generate(self, prompts, sampling):
        self.calls, self.prompts = self.calls + 1, self.prompts + len(prompts)
        return self.engine.generate(prompts, sampling)

    def score_choices(self, prompts, choices):
        self.calls, self.prompts = self.calls + 1, self.prompts + len(prompts)
        return self.engine.score_choices(prompts, choices)


def released(scorer: GroupScorer, group) -> list:
    """The release's pattern: per sample, teacher and student decomposed, each field judged alone."""
    rewards = []
    for sample in group.samples:
        teacher = scorer.decompose_pairs([(group.problem.problem, group.problem.teacher_reasoning)])[0]
        student = scorer.decompose_pairs([(group.problem.problem, think_text(group.completion_prefix + sample.text))])[0]
        requests = judge_requests(teacher, student)
        verdicts = [scorer.verdicts([r])[0] for r in requests]
        rewards.append(score_from_verdicts(teacher, student, requests, verdicts, scorer.cfg.normalize_structure).total)
    return rewards


def ours(scorer: GroupScorer, group) -> list:
    scorer.score_structure(group, {"judge_non_answers": 0, "student_parse_failures": 0})
    return [s.rewards["structure"] for s in group.samples]


def main() -> None:
    args = parse_args()
    cfg = load_config(args.config)
    if not cfg.reward.runs_gsrm_model():
        raise SystemExit(f"{args.config} runs no GSRM model (reward.gsrm_backend / reward.weights.structure)")
    groups = student_groups(cfg, args.groups, args.threads)
    path = resolve_model(cfg.model.gsrm, cfg.paths.cache_dir)
    base = make_engine(replace(cfg.reward.engine, cpu_cores=None, cpu_threads=args.threads), path, "float32", seed=0)
    tok = AutoTokenizer.from_pretrained(path)
    results = {}
    try:
        for name, pattern in (("released", released), ("ours", ours)):
            engine = Counted(base)
            scorer = GroupScorer(cfg.reward, engine, engine, tok, tok)
            for g in groups:
                for s in g.samples:
                    s.rewards = {}
            start, rewards = time.perf_counter(), []
            for i, g in enumerate(groups):
                rewards.append(pattern(scorer, g))
                print(f"{name}: group {i + 1}/{len(groups)} scored, {time.perf_counter() - start:.1f} s", flush=True)
            results[name] = (time.perf_counter() - start, engine.calls, engine.prompts, rewards)
    finally:
        base.close()
    samples = sum(len(g.samples) for g in groups)
    same = sum(a == b for ga, gb in zip(results["released"][3], results["ours"][3]) for a, b in zip(ga, gb))
    rows = [(name, len(groups) / secs, secs / len(groups), calls / samples, prompts / samples,
             _report.ratio(results["released"][0], secs))
            for name, (secs, calls, prompts, _) in results.items()]
    body = (f"{len(groups)} groups of {cfg.rollout.group_size} real student paths (`{os.path.relpath(args.config, ROOT)}`: "
            f"{cfg.model.gsrm} as GSRM and judge on {cfg.reward.engine.backend}, {args.threads} threads, greedy "
            f"decompositions of up to {cfg.reward.decompose_max_new_tokens} tokens). Structure rewards equal between "
            f"the two patterns: {same} of {samples}.\n\n"
            + _report.table(["pattern", "groups/s", "s per group", "engine calls per sample", "prompts per sample",
                             "speed-up vs released"], rows))
    _report.publish(args, "reward-calls", "Reward scoring: the release's call pattern vs ours", body)


if __name__ == "__main__":
    main()
