"""Scores a prompt group: GSRM decomposition of each student path, the structured reward against the
teacher's structure (all judge comparisons of the group in one batched, greedy call, read from the
log-probs of "yes" and "no"), the rule rewards, and the weighted total.

`reward.gsrm_backend: rule` puts the rule decomposer and the exact judge (rlkd_ray/gsrm/rule.py,
exact_judge.py), the exact stand-in for the generative GSRM and judge in domains whose steps can be
checked, in place of the two models; the scoring (prefix gating, x0.5 penalties) is the same. With
`reward.weights.structure` 0 no path is decomposed or judged: the scorer needs no engine.

`actors/reward.py` holds one `GroupScorer`; it runs the same in a test without Ray.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence, Tuple

from rlkd_ray.config import RewardConfig
from rlkd_ray.controller.samples import Problem, PromptGroup
from rlkd_ray.data.answers import think_text
from rlkd_ray.engines.base import Engine, PromptTooLong, Sampling, build_prompt_ids
from rlkd_ray.gsrm import (
    Structure,
    build_decompose_messages,
    build_judge_messages,
    exact_judge,
    judge_requests,
    parse_structure,
    rule,
    score_from_verdicts,
    verdict_from_logprobs,
)
from rlkd_ray.rewards.registry import RuleRewards

# The first token of the judge's reply, read case-insensitively: p(yes) = p("yes") + p("Yes").
YES, NO = ("yes", "Yes"), ("no", "No")
# Why a path gets no steps without a GSRM call: the only error of its structure starts with one of these.
NO_REASONING = "no reasoning to decompose"
TOO_LONG = "decomposition prompt too long"


def has_reasoning(text: str) -> bool:
    """A path without a letter or digit has no reasoning (the few-shot prompt would invent steps for it)."""
    return any(c.isalnum() for c in text)


def no_steps_reason(structure: Structure) -> str:
    """Why a structure has no steps: `empty` (no reasoning), `too_long` (over the GSRM context) or `parse`."""
    first = structure.errors[0] if structure.errors else ""
    return "empty" if first == NO_REASONING else "too_long" if first.startswith(TOO_LONG) else "parse"


def _logsumexp(xs: List[float]) -> float:
    m = max(xs)
    return m if m == -math.inf else m + math.log(sum(math.exp(x - m) for x in xs))


def scores_structure(cfg: RewardConfig) -> bool:
    """Whether samples get the `structure` component: when it is weighted, and always with the rule
    backend (free to compute; with weight 0 it is a diagnostic of the outcome-only baseline)."""
    return cfg.weights.structure != 0 or cfg.gsrm_backend == "rule"


class GroupScorer:
    """`gsrm` / `judge` (engines) and their tokenizers are used only when `cfg.runs_gsrm_model()`."""

    def __init__(self, cfg: RewardConfig, gsrm: Optional[Engine] = None, judge: Optional[Engine] = None,
                 gsrm_tokenizer=None, judge_tokenizer=None):
        self.cfg = cfg
        self.gsrm, self.judge = gsrm, judge
        self.gsrm_tok, self.judge_tok = gsrm_tokenizer, judge_tokenizer
        self.rules = RuleRewards(cfg)
        self.teacher_cache: Dict[str, Structure] = {}  # problem id -> structure, decomposed once

    # -- GSRM ----------------------------------------------------------------------------------
    def decompose(self, problem: str, reasonings: List[str]) -> List[Structure]:
        """The structures of several paths of one problem (`decompose_pairs`)."""
        return self.decompose_pairs([(problem, text) for text in reasonings])

    def decompose_pairs(self, pairs: Sequence[Tuple[str, str]]) -> List[Structure]:
        """One greedy GSRM call for all (problem, reasoning) pairs; a path without reasoning, or whose
        prompt is over the context limit, gets no steps without a call. The rule backend reads the
        operations of each path instead (no model)."""
        if self.cfg.gsrm_backend == "rule":
            return [rule.decompose(problem, text) for problem, text in pairs]
        if self.gsrm is None:
            raise RuntimeError("no GSRM engine was loaded (reward.weights.structure is 0); set it to decompose")
        prompts, slots = [], []
        structures: List[Structure] = [Structure([], None, []) for _ in pairs]
        limit = self.gsrm_limit()
        for i, (problem, text) in enumerate(pairs):
            if not has_reasoning(text):
                structures[i] = Structure([], None, [NO_REASONING])
                continue
            try:
                prompts.append(build_prompt_ids(
                    self.gsrm_tok, build_decompose_messages(problem, text, self.cfg.domain, self.cfg.decompose_examples), limit))
                slots.append(i)
            except PromptTooLong as e:
                structures[i] = Structure([], None, [f"{TOO_LONG}: {e}"])
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
        if self.cfg.gsrm_backend == "rule":
            return exact_judge.exact_verdicts(requests)
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
        counters = {"judge_non_answers": 0, "student_parse_failures": 0, "teacher_parse_failures": 0,
                    "unscorable_accuracy": 0}
        for j, sample in enumerate(group.samples):  # format and tags on the text as the model sees it
            sample.rewards = self.rules.components(
                {"id": f"{group.uid}/{j}", "problem_id": problem.id, "completion": group.completion_prefix + sample.text,
                 "answer": problem.answer, "problem": problem.problem, "teacher_reasoning": problem.teacher_reasoning})
            counters["unscorable_accuracy"] += sample.rewards["accuracy"] is None
        if scores_structure(self.cfg):  # the generative outcome-only baseline decomposes and judges nothing
            self.score_structure(group, counters)
        for sample in group.samples:
            sample.total = self.rules.total(sample.rewards)
        group.counters.update(counters)
        group.timings["reward"] = time.perf_counter() - start
        return group

    def score_structure(self, group: PromptGroup, counters: Dict[str, int]) -> None:
        """The `structure` component and record of every sample: one decomposition call for the group's
        paths, one judge call for all their comparisons."""
        problem = group.problem
        teacher = self.teacher_structure(problem)
        # the text as the model sees it: what the chat template forced into the answer + the completion
        texts = [group.completion_prefix + s.text for s in group.samples]
        students = self.decompose(problem.problem, [think_text(t) for t in texts])
        per_sample = [judge_requests(teacher, st) for st in students]
        flat = self.verdicts([r for reqs in per_sample for r in reqs])
        counters.update(student_too_long=0, student_empty_paths=0)
        pos = 0
        for sample, student, reqs in zip(group.samples, students, per_sample):
            verdicts, pos = flat[pos: pos + len(reqs)], pos + len(reqs)
            score = score_from_verdicts(teacher, student, reqs, verdicts, self.cfg.normalize_structure)
            sample.rewards["structure"] = score.total
            sample.structure = asdict(score) | {
                "student_steps_parsed": [asdict(s) for s in student.steps],
                "teacher_steps_parsed": [asdict(s) for s in teacher.steps],
                "student_parse_errors": student.errors[:5],
            }
            counters["judge_non_answers"] += score.judge_non_answers
            if not student.steps:
                counters[{"empty": "student_empty_paths", "too_long": "student_too_long",
                          "parse": "student_parse_failures"}[no_steps_reason(student)]] += 1
        teacher_failure = no_steps_reason(teacher) if not teacher.steps else None
        counters["teacher_too_long"] = int(teacher_failure == "too_long")
        counters["teacher_parse_failures"] = int(teacher_failure in ("empty", "parse"))
