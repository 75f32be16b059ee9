"""How closely one decomposer's structures agree with a reference decomposer's on the same reasoning
paths: in the arithmetic domain, a generative GSRM (a prompted or fine-tuned model) against the rule
decomposer, which reads the operations exactly. Measured three ways, per path:

- step count: the two structures have the same number of steps;
- fields: for each kind (meta, query, answer), the share of step positions (of the longer side) where
  both sides have a step and the exact judge (rlkd_ray/gsrm/exact_judge.py) finds the two fields equal;
- reward: the structure reward each gives against the teacher's structure (exact judge, the paper's
  gating and x0.5 penalties): how often the two are equal (over all paths, and over the paths the
  reference rewards at all: two zeros agree without telling much), and their mean absolute difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import mean
from typing import Dict, Sequence

from rlkd_ray.gsrm.exact_judge import exact_verdicts, verdict
from rlkd_ray.gsrm.judge import JUDGE_KINDS
from rlkd_ray.gsrm.parser import Structure
from rlkd_ray.gsrm.reward import judge_requests, score_from_verdicts


@dataclass
class Agreement:
    paths: int
    parsed: float  # share of paths where the candidate gave at least one step
    same_step_count: float  # share of paths with as many candidate steps as reference steps
    fields: Dict[str, float]  # kind -> share of step positions where the candidate's field matches
    same_reward: float  # share of paths whose structure reward is the same from both
    same_nonzero_reward: float  # the same, over the paths whose reference reward is > 0 (0 if none)
    reward_abs_diff: float  # mean |candidate's reward - reference's reward|


def exact_score(teacher: Structure, student: Structure) -> float:
    """The structure reward of `student` against `teacher` with the exact judge."""
    requests = judge_requests(teacher, student)
    return score_from_verdicts(teacher, student, requests, exact_verdicts(requests)).total


def agreement(teachers: Sequence[Structure], reference: Sequence[Structure],
              candidate: Sequence[Structure]) -> Agreement:
    """`candidate[i]` against `reference[i]`, both decompositions of path i of a problem whose
    teacher structure is `teachers[i]`."""
    if not len(teachers) == len(reference) == len(candidate) > 0:
        raise ValueError(f"need as many teachers, reference and candidate structures (> 0), got "
                         f"{len(teachers)}, {len(reference)}, {len(candidate)}")
    matched = {kind: 0 for kind in JUDGE_KINDS}
    positions = 0
    for ref, cand in zip(reference, candidate):
        positions += max(len(ref.steps), len(cand.steps))
        for r, c in zip(ref.steps, cand.steps):
            for kind in JUDGE_KINDS:
                matched[kind] += verdict(kind, getattr(r, kind), getattr(c, kind)) is True
    rewards = [(exact_score(t, r), exact_score(t, c)) for t, r, c in zip(teachers, reference, candidate)]
    return Agreement(
        paths=len(reference),
        parsed=mean(bool(c.steps) for c in candidate),
        same_step_count=mean(len(r.steps) == len(c.steps) for r, c in zip(reference, candidate)),
        fields={kind: matched[kind] / positions if positions else 0.0 for kind in JUDGE_KINDS},
        same_reward=mean(a == b for a, b in rewards),
        same_nonzero_reward=mean([a == b for a, b in rewards if a > 0] or [0.0]),
        reward_abs_diff=mean(abs(a - b) for a, b in rewards),
    )
