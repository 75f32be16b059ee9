"""The yes/no step judge: prompts per compared field, and strict readers of its verdict.

A verdict is read either from the first word of a greedy completion (`verdict_from_text`) or by
comparing the log-probabilities of "yes" and "no" at the first generated position
(`verdict_from_logprobs`); never by searching the text for a substring. `None` means the judge
gave no usable answer; the structure reward counts it, and it keeps no meta-reasoning gate open
but halves no step (only an explicit "no" does; `rlkd_ray/gsrm/reward.py`).
"""

from __future__ import annotations

import math
import re
from typing import Dict, List, Optional

JUDGE_KINDS = ("meta", "query", "answer")

_SYSTEM = (
    "You compare one step of a teacher's reasoning with the same step of a student's reasoning. "
    "Reply with exactly one word: yes or no."
)

_QUESTIONS = {
    "meta": (
        "meta-reasoning (what to do next and why)",
        "Do the two express the same reasoning intent and strategy, i.e. do they choose the same "
        "next move for the same reason?",
    ),
    "query": (
        "sub-problem",
        "Do the two pose the same sub-problem, even if worded differently?",
    ),
    "answer": (
        "sub-problem result",
        "Do the two give the same result, or mathematically equivalent results?",
    ),
}


def build_judge_messages(kind: str, teacher_text: str, student_text: str) -> List[Dict[str, str]]:
    """Chat messages asking whether the student's `kind` text of a step matches the teacher's."""
    if kind not in _QUESTIONS:
        raise ValueError(f"unknown judge kind {kind!r}; choose one of {', '.join(JUDGE_KINDS)}")
    what, question = _QUESTIONS[kind]
    user = (
        f"Teacher's {what}:\n{teacher_text}\n\n"
        f"Student's {what}:\n{student_text}\n\n"
        f"{question} Answer with one word: yes or no."
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def verdict_from_logprobs(yes_logprob: float, no_logprob: float, margin: float = 0.0) -> Optional[bool]:
    """True if log p(yes) > log p(no) + margin, else False; None if neither word is possible
    (both -inf or NaN). A NaN on one side counts as -inf (that word was not possible)."""
    yes = -math.inf if math.isnan(yes_logprob) else yes_logprob
    no = -math.inf if math.isnan(no_logprob) else no_logprob
    if yes == math.inf or no == math.inf:
        raise ValueError(f"log-probabilities must be finite or -inf, got yes={yes_logprob}, no={no_logprob}")
    if yes == -math.inf and no == -math.inf:
        return None
    return yes > no + margin


_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")


def verdict_from_text(text: str) -> Optional[bool]:
    """Strict: the first word, stripped of surrounding punctuation and lower-cased, must be
    exactly "yes" (True) or "no" (False); anything else is None."""
    words = text.split(maxsplit=1)
    if not words:
        return None
    word = _EDGE_PUNCT.sub("", words[0]).lower()
    return {"yes": True, "no": False}.get(word)
