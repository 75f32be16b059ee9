"""The exact judge: the exact stand-in for the generative yes/no judge (rlkd_ray/gsrm/judge.py) in
domains whose steps can be checked (the arithmetic domain, rlkd_ray/data/arith.py), used to study the
RL mechanism. The generative judge stays the default for math and is the one the paper describes.

It gives the verdicts of the two-phase API of rlkd_ray/gsrm/reward.py, so the prefix gating and the
x0.5 penalties stay exactly the paper's:

    requests = judge_requests(teacher, student)
    verdicts = exact_verdicts(requests)
    score = score_from_verdicts(teacher, student, requests, verdicts)

(or `structure_reward(teacher, student, exact_judge)`; `rule_structure_score` does it all from the
texts). Step i of the teacher is compared with step i of the student, one verdict per field:

    meta    True iff both take the same operator of the problem's expression, i.e. the same node of
            its expression tree: the `(operator k of the problem)` markers that the teacher program
            (rlkd_ray/data/arith.py) and the rule decomposer (rlkd_ray/gsrm/rule.py) write are equal.
            The operand values are not compared here (a wrong earlier result carried forward still
            takes the same sub-expression). A student step marked `(no operator of the problem)` is
            False. Without a marker on either side (e.g. a generative decomposition), the operations
            named in the two texts are compared as for the query.
    query   True iff the first operation written in each text (`a op b`) has the same operator and the
            same operand values, in the same order (either order for + and *).
    answer  True iff the last number of each text has the same value.

A side whose field holds nothing to compare (no operation, no number) gives None: no verdict,
counted as a judge non-answer and scored as a mismatch by `score_from_verdicts`.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import List, Optional, Sequence, Tuple

from rlkd_ray.gsrm.judge import JUDGE_KINDS
from rlkd_ray.gsrm.parser import Structure, parse_structure
from rlkd_ray.gsrm.reward import JudgeRequest, StructureScore, Verdict, judge_requests, score_from_verdicts
from rlkd_ray.gsrm.rule import decompose, operations, tokens

_POSITION = re.compile(r"\((?:operator\s+(\d+)|(no)\s+operator)\s+of\s+the\s+problem\)", re.IGNORECASE)

OperationKey = Tuple[Fraction, str, Fraction]


def position(text: str) -> Optional[int]:
    """The operator of the problem a meta field names (the last marker); 0 for none; None without one."""
    found = _POSITION.findall(text)
    if not found:
        return None
    number, none = found[-1]
    return 0 if none else int(number)


def operation_in(text: str) -> Optional[OperationKey]:
    """The first `a op b` written in `text` (alone, or as the left side of an equality); a position
    marker is not read."""
    toks = tokens(_POSITION.sub(" ", text))
    for i in range(len(toks) - 2):
        a, op, b = toks[i : i + 3]
        if a.kind == "num" and op.kind == "op" and b.kind == "num":
            before = toks[i - 1] if i > 0 else None
            after = toks[i + 3] if i + 3 < len(toks) else None
            if (before is None or before.kind in ("|", "=", "(")) and (after is None or after.kind in ("|", "=", ")")):
                return a.value, op.text, b.value
    found = operations(text)
    if found:
        a, op, b, _ = found[0]
        return a.value, op.text, b.value
    return None


def value_in(text: str) -> Optional[Fraction]:
    """The value of the last number written in `text`."""
    numbers = [t.value for t in tokens(_POSITION.sub(" ", text)) if t.kind == "num"]
    return numbers[-1] if numbers else None


def same_operation(x: OperationKey, y: OperationKey) -> bool:
    (a, op, b), (c, op2, d) = x, y
    return op == op2 and ((a, b) == (c, d) or (op in "+*" and (a, b) == (d, c)))


def verdict(kind: str, teacher_text: str, student_text: str) -> Verdict:
    """The exact verdict for one field of one aligned step (module docstring)."""
    if kind not in JUDGE_KINDS:
        raise ValueError(f"unknown judge kind {kind!r}; choose one of {', '.join(JUDGE_KINDS)}")
    if kind == "meta":
        t, s = position(teacher_text), position(student_text)
        if t is not None and s is not None:
            return t == s and t != 0
        if s == 0:
            return False
        kind = "query"
    if kind == "query":
        x, y = operation_in(teacher_text), operation_in(student_text)
        return None if x is None or y is None else same_operation(x, y)
    u, v = value_in(teacher_text), value_in(student_text)
    return None if u is None or v is None else u == v


def exact_verdicts(requests: Sequence[JudgeRequest]) -> List[Verdict]:
    """One verdict per request of `judge_requests`, in order."""
    return [verdict(r.kind, r.teacher_text, r.student_text) for r in requests]


def exact_judge(pairs: Sequence[Tuple[str, str]], kind: str) -> List[Verdict]:
    """A `Judge` for `structure_reward`: one verdict per (teacher_text, student_text) pair."""
    return [verdict(kind, t, s) for t, s in pairs]


def rule_structure_score(problem: str, teacher_structure: str | Structure, reasoning: str,
                         normalize: bool = False) -> StructureScore:
    """The structure reward of a student's reasoning: the rule decomposer, the exact judge and the
    paper's scoring (`score_from_verdicts`), from the texts."""
    teacher = parse_structure(teacher_structure) if isinstance(teacher_structure, str) else teacher_structure
    student = decompose(problem, reasoning)
    requests = judge_requests(teacher, student)
    return score_from_verdicts(teacher, student, requests, exact_verdicts(requests), normalize)
