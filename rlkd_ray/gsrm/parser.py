"""Parse a GSRM decomposition into steps.

The tag set below is the only one in the project: the decomposition prompt, its few-shots, the
GSRM training target (`prompts.format_structure`) and this parser all use these constants.

    [sub-think 1]: <meta-reasoning: what to do next and why, without the result>
    [Query 1]: <the one sub-problem of this step>
    [Answer 1]: <its short result>
    ...
    So the final answer is: <answer>

The parser is tolerant (case, spacing, a missing colon, markdown bold, missing or wrong numbers,
missing fields, text before the first tag, multi-line fields) and never raises: every deviation
from the format is noted in `Structure.errors`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Optional

META_TAG = "sub-think"
QUERY_TAG = "Query"
ANSWER_TAG = "Answer"
FINAL_ANSWER_PREFIX = "So the final answer is:"

# Step fields in their canonical order, each with its tag.
FIELDS = ("meta", "query", "answer")
FIELD_TAGS = {"meta": META_TAG, "query": QUERY_TAG, "answer": ANSWER_TAG}


def tag(field_name: str, number: int | str) -> str:
    """The opening of a field line, e.g. `tag("query", 2) == "[Query 2]:"`."""
    return f"[{FIELD_TAGS[field_name]} {number}]:"


@dataclass
class Step:
    meta: str  # meta-reasoning: which sub-problem next, and why
    query: str  # the sub-problem
    answer: str  # its result


@dataclass
class Structure:
    steps: List[Step]
    final_answer: Optional[str]
    errors: List[str] = field(default_factory=list)


# A tag starts a line or follows whitespace or markdown bold (so `dp[query]` in code is not a tag).
# Quantifiers are bounded or anchored on a literal so that no input makes the scan quadratic.
_TAG_RE = re.compile(
    r"(?<![^\s*])\[[ \t]{0,3}(?P<kind>sub[ \t_-]?think|query|answer)"
    r"[ \t]{0,3}(?P<num>[0-9]{1,9})?[ \t]{0,3}\]"
    r"[ \t]{0,3}(?:\*\*[ \t]{0,3})?:?",
    re.IGNORECASE,
)
_FINAL_RE = re.compile(
    r"(?<![^\s*])so[ \t]{1,3}the[ \t]{1,3}final[ \t]{1,3}answer[ \t]{1,3}is\b[ \t]{0,3}(?:\*\*[ \t]{0,3})?:?",
    re.IGNORECASE,
)


def _kind(raw: str) -> str:
    raw = raw.lower()
    return "meta" if raw.startswith("sub") else raw


_EDGE_RE = re.compile(r"(?:\s|\*\*)*")  # whitespace and markdown bold markers


def _clean(content: str) -> str:
    """Field content without surrounding whitespace and markdown bold markers (linear time)."""
    start = _EDGE_RE.match(content).end()
    end = len(content) - _EDGE_RE.match(content[::-1]).end()
    return content[start:end] if start < end else ""


def parse_structure(text: str) -> Structure:
    """Steps in text order; a field absent from a step is '' and noted in `errors`. Never raises."""
    if not isinstance(text, str):
        return Structure([], None, [f"input is {type(text).__name__}, not str"])
    marks = [(m.start(), m.end(), _kind(m.group("kind")), m.group("num")) for m in _TAG_RE.finditer(text)]
    marks += [(m.start(), m.end(), "final", None) for m in _FINAL_RE.finditer(text)]
    marks.sort()

    steps: List[dict] = []  # per step, in text order: field -> (content, number or None)
    final_answer: Optional[str] = None
    n_final = 0
    tags_after_final = False
    for i, (_, end, kind, num) in enumerate(marks):
        content = _clean(text[end : marks[i + 1][0] if i + 1 < len(marks) else len(text)])
        if kind == "final":
            n_final += 1
            final_answer = content
            continue
        tags_after_final = tags_after_final or n_final > 0
        number = int(num) if num is not None else None
        if not steps or _starts_new_step(steps[-1], kind, number):
            steps.append({})
        steps[-1][kind] = (content, number)

    errors: List[str] = []
    for j, fields in enumerate(steps, start=1):
        errors.extend(_step_errors(j, fields))
    if not steps:
        errors.append("no step tags found")
    if final_answer is None:
        errors.append(f"no '{FINAL_ANSWER_PREFIX}' line")
    elif not final_answer:
        errors.append("the final answer line is empty")
    if n_final > 1:
        errors.append(f"{n_final} final answer lines; the last one is used")
    if tags_after_final:
        errors.append("step tags after the final answer line")
    result = [Step(*(fields.get(f, ("", None))[0] for f in FIELDS)) for fields in steps]
    return Structure(result, final_answer, errors)


def _starts_new_step(current: dict, kind: str, number: Optional[int]) -> bool:
    """A field opens a new step if the current step already has it, or if it comes before a field
    the current step already has, unless its number says it belongs to the current step."""
    if kind in current:
        return True
    if FIELDS.index(kind) > max(FIELDS.index(k) for k in current):
        return False
    current_numbers = {n for _, n in current.values() if n is not None}
    return not (number is not None and current_numbers == {number})


def _step_errors(j: int, fields: dict) -> List[str]:
    errors = []
    for f in FIELDS:
        name = FIELD_TAGS[f]
        if f not in fields:
            errors.append(f"step {j}: missing [{name} {j}]")
            continue
        content, number = fields[f]
        if number is None:
            errors.append(f"step {j}: [{name}] has no number")
        elif number != j:
            errors.append(f"step {j}: [{name} {number}] is numbered {number}, expected {j}")
        if not content:
            errors.append(f"step {j}: [{name}] is empty")
    if list(fields) != [f for f in FIELDS if f in fields]:
        errors.append(f"step {j}: fields out of order")
    return errors
