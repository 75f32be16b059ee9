"""The structured reward mechanism: step-by-step comparison of two decompositions by a yes/no judge.

Two phases, so that a caller can send every comparison of a sample (or of a whole group) to the
judge engine in one batched call:

    requests = judge_requests(teacher, student)          # all kinds, every aligned step
    verdicts = <judge each request>                       # True / False / None (no answer)
    score = score_from_verdicts(teacher, student, requests, verdicts)

`structure_reward` does both with a judge callable, one call per kind.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .judge import JUDGE_KINDS
from .parser import Structure

Verdict = Optional[bool]  # None: the judge gave no answer (counted; closes the meta gate, halves nothing)
Judge = Callable[[List[Tuple[str, str]], str], List[Verdict]]


@dataclass(frozen=True)
class JudgeRequest:
    kind: str  # meta | query | answer: compares step.meta, step.query or step.answer
    step: int  # 0-based index of the aligned step
    teacher_text: str
    student_text: str


@dataclass
class StructureScore:
    total: float  # sum of per_step, divided by teacher_steps if normalised
    per_step: List[float]  # one per step of the longer side; unaligned steps score 0
    reason: Optional[str]  # why the score is 0 without judging (a side without steps), else None
    judgements: List[Dict[str, Verdict]]  # per aligned step: {"meta": v, "query": v, "answer": v}
    judge_non_answers: int
    teacher_steps: int
    student_steps: int


def judge_requests(teacher: Structure, student: Structure) -> List[JudgeRequest]:
    """One request per kind for every aligned step (step i of both sides, i < the shorter length)."""
    return [
        JudgeRequest(kind, i, getattr(t, kind), getattr(s, kind))
        for i, (t, s) in enumerate(zip(teacher.steps, student.steps))
        for kind in JUDGE_KINDS
    ]


def _step_scores(judgements: Sequence[Dict[str, Verdict]]) -> List[float]:
    # docs/design.md "Structured reward mechanism": a meta-reasoning match is needed to keep this and
    # every later step (a non-answer is no match); a surviving step is halved for an explicit sub-problem
    # "no" and halved for an explicit sub-answer "no" (a non-answer does not halve, as in the RLKD release).
    scores, gate_open = [], True
    for v in judgements:
        gate_open = gate_open and v["meta"] is True
        score = 1.0 if gate_open else 0.0
        if v["query"] is False:
            score *= 0.5
        if v["answer"] is False:
            score *= 0.5
        scores.append(score)
    return scores


def score_from_verdicts(
    teacher: Structure,
    student: Structure,
    requests: Sequence[JudgeRequest],
    verdicts: Sequence[Verdict],
    normalize: bool = False,
) -> StructureScore:
    """The structure score from the verdicts of `judge_requests(teacher, student)` (any order)."""
    n_t, n_s = len(teacher.steps), len(student.steps)
    n_aligned = min(n_t, n_s)
    if len(verdicts) != len(requests):
        raise ValueError(f"got {len(verdicts)} verdicts for {len(requests)} judge requests")
    judgements: List[Dict[str, Verdict]] = [{} for _ in range(n_aligned)]
    for r, v in zip(requests, verdicts):
        if v is not None and not isinstance(v, bool):
            raise TypeError(f"verdict for {r.kind} of step {r.step} must be True, False or None, got {v!r}")
        if r.kind not in JUDGE_KINDS or not 0 <= r.step < n_aligned:
            raise ValueError(f"judge request ({r.kind}, step {r.step}) is not one of this pair's requests")
        if r.kind in judgements[r.step]:
            raise ValueError(f"two verdicts for {r.kind} of step {r.step}")
        judgements[r.step][r.kind] = v
    for i, j in enumerate(judgements):
        missing = [k for k in JUDGE_KINDS if k not in j]
        if missing:
            raise ValueError(f"no verdict for {', '.join(missing)} of step {i}")
    if n_aligned == 0:
        side = "teacher and student have" if n_t == n_s else ("teacher has" if n_t == 0 else "student has")
        return StructureScore(0.0, [0.0] * max(n_t, n_s), f"{side} no steps", [], 0, n_t, n_s)

    per_step = _step_scores(judgements) + [0.0] * (max(n_t, n_s) - n_aligned)
    total = sum(per_step) / n_t if normalize else sum(per_step)
    non_answers = sum(v is None for j in judgements for v in j.values())
    ordered = [{k: j[k] for k in JUDGE_KINDS} for j in judgements]
    return StructureScore(total, per_step, None, ordered, non_answers, n_t, n_s)


def structure_reward(
    teacher: Structure, student: Structure, judge: Judge, normalize: bool = False
) -> StructureScore:
    """Structure reward of `student` against `teacher`; `judge(pairs, kind)` returns one verdict
    per (teacher_text, student_text) pair and is called once per kind."""
    requests = judge_requests(teacher, student)
    verdicts: List[Verdict] = [None] * len(requests)
    for kind in JUDGE_KINDS:
        idx = [i for i, r in enumerate(requests) if r.kind == kind]
        if not idx:
            continue
        out = list(judge([(requests[i].teacher_text, requests[i].student_text) for i in idx], kind))
        if len(out) != len(idx):
            raise ValueError(f"judge returned {len(out)} verdicts for {len(idx)} '{kind}' pairs")
        for i, v in zip(idx, out):
            verdicts[i] = v
    return score_from_verdicts(teacher, student, requests, verdicts, normalize)
