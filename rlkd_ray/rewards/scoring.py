"""Scores a prompt group: GSRM decomposition of each student path, the structured reward against the
teacher's structure (all judge comparisons of the group in one batched, greedy call, read from the
log-probs of "yes" and "no"), the rule rewards, and the weighted total.

`actors/reward.py` holds one `GroupScorer`; it runs the same in a test without Ray.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Dict, List, Optional

from rlkd_ray.config import RewardConfig
from rlkd_ray.controller.samples import Problem, PromptGroup
from rlkd_ray.engines.base import Engine, PromptTooLong, Sampling, build_prompt_ids
from rlkd_ray.gsrm import (
    Structure,
    build_decompose_messages,
    build_judge_messages,
    judge_requests,
    parse_structure,
    score_from_verdicts,
    verdict_from_logprobs,
)
from rlkd_ray.rewards.registry import RuleRewards
from rlkd_ray.rewards.rules import think_text

# The first token of the judge's reply, read case-insensitively: p(yes) = p("yes") + p("Yes").
YES, NO = ("yes", "Yes"), ("no", "No")


def _logsumexp(xs: List[float]) -> float:
    m = max(xs)
    return m if m == -math.inf else m + math.log(sum(math.exp(x - m) for x in xs))


class GroupScorer:
    def __init__(self, cfg: RewardConfig, gsrm: Engine, judge: Engine, gsrm_tokenizer, judge_tokenizer):
        self.cfg = cfg
        self.gsrm, self.judge = gsrm, judge
        self.gsrm_tok, self.judge_tok = gsrm_tokenizer, judge_tokenizer
        self.rules = RuleRewards(cfg)
        self.teacher_cache: Dict[str, Structure] = {}  # problem id -> structure, decomposed once

    # -- GSRM ----------------------------------------------------------------------------------
    def decompose(self, problem: str, reasonings: List[str]) -> List[Structure]:
        """One greedy GSRM call for all paths; a prompt over the context limit yields no steps."""
        prompts, slots = [], []
        structures: List[Structure] = [Structure([], None, []) for _ in reasonings]
        limit = self.gsrm_limit()
        for i, text in enumerate(reasonings):
            try:
                prompts.append(build_prompt_ids(
                    self.gsrm_tok, build_decompose_messages(problem, text, self.cfg.domain, self.cfg.decompose_examples), limit))
                slots.append(i)
            except PromptTooLong as e:
                structures[i] = Structure([], None, [f"decomposition prompt too long: {e}"])
        if prompts:
            sampling = Sampling(n=1, temperature=0.0, max_new_tokens=self.cfg.decompose_max_new_tokens)
            for i, out in zip(slots, self.gsrm.generate(prompts, sampling)):
                structures[i] = parse_structure(out[0].text)
        return structures

    def gsrm_limit(self) -> int:
        return self.cfg.engine.max_model_len - self.cfg.decompose_max_new_tokens

    def teacher_structure(self, problem: Problem) -> Structure:
        if problem.id not in self.teacher_cache:
            if problem.teacher_structure:
                self.teacher_cache[problem.id] = parse_structure(problem.teacher_structure)
            else:
                self.teacher_cache[problem.id] = self.decompose(problem.problem, [problem.teacher_reasoning])[0]
        return self.teacher_cache[problem.id]

    # -- judge ---------------------------------------------------------------------------------
    def verdicts(self, requests) -> List[Optional[bool]]:
        """All comparisons in one batched call; a verdict is None when p(yes) + p(no) is below
        `judge_min_prob` (the judge would have answered something else)."""
        if not requests:
            return []
        prompts = [build_prompt_ids(self.judge_tok, build_judge_messages(r.kind, r.teacher_text, r.student_text),
                                    self.cfg.engine.max_model_len - 1) for r in requests]
        rows = self.judge.score_choices(prompts, YES + NO)
        out = []
        for row in rows:
            yes, no = _logsumexp(row[: len(YES)]), _logsumexp(row[len(YES):])
            mass = math.exp(yes) + math.exp(no)
            out.append(verdict_from_logprobs(yes, no) if mass >= self.cfg.judge_min_prob else None)
        return out

    # -- the whole group -----------------------------------------------------------------------
    def score(self, group: PromptGroup) -> PromptGroup:
        start = time.perf_counter()
        problem = group.problem
        teacher = self.teacher_structure(problem)
        students = self.decompose(problem.problem, [think_text(s.text) for s in group.samples])
        per_sample = [judge_requests(teacher, st) for st in students]
        flat = self.verdicts([r for reqs in per_sample for r in reqs])
        counters = {"judge_non_answers": 0, "student_parse_failures": 0, "teacher_parse_failures": 0,
                    "unscorable_accuracy": 0}
        pos = 0
        for j, (sample, student, reqs) in enumerate(zip(group.samples, students, per_sample)):
            verdicts, pos = flat[pos: pos + len(reqs)], pos + len(reqs)
            score = score_from_verdicts(teacher, student, reqs, verdicts, self.cfg.normalize_structure)
            components = self.rules.components(
                {"id": f"{group.uid}/{j}", "problem_id": problem.id, "completion": sample.text,
                 "answer": problem.answer, "problem": problem.problem, "teacher_reasoning": problem.teacher_reasoning})
            components["structure"] = score.total
            sample.rewards = components
            sample.total = self.rules.total(components)
            sample.structure = asdict(score) | {
                "student_steps_parsed": [asdict(s) for s in student.steps],
                "teacher_steps_parsed": [asdict(s) for s in teacher.steps],
                "student_parse_errors": student.errors[:5],
            }
            counters["judge_non_answers"] += score.judge_non_answers
            counters["student_parse_failures"] += not student.steps
            counters["unscorable_accuracy"] += components["accuracy"] is None
        counters["teacher_parse_failures"] = int(not teacher.steps)
        group.counters.update(counters)
        group.timings["reward"] = time.perf_counter() - start
        return group
