"""Rule rewards of the paper's recipe: accuracy (math-verify), format and tag count.

A completion is expected in the R1 layout `<think>\\n…\\n</think>\\n<answer>\\n…\\n</answer>`,
with the final answer in `\\boxed{…}`.
"""

from __future__ import annotations

import re
import threading
from typing import NamedTuple, Optional

import math_verify

from rlkd_ray.data.answers import last_boxed

# math-verify's timeouts use SIGALRM, which only the main thread may set.
_MAIN_THREAD_TIMEOUT_S = 5

# R1 format reward, as Open-R1 and the RLKD release: the completion starts with
# `<think>\n…\n</think>\n<answer>\n…\n</answer>` and `</answer>` ends a line (MULTILINE `$`), so text
# on the lines after `</answer>` still scores 1 (docs/recipe.md, "Departures ... decided").
_FORMAT = re.compile(r"^<think>\n.*?\n</think>\n<answer>\n.*?\n</answer>$", re.DOTALL | re.MULTILINE)

# R1 tag-count reward: 0.25 for each of these tags found exactly once.
_TAGS = ("<think>\n", "\n</think>\n", "\n<answer>\n", "\n</answer>")



class Accuracy(NamedTuple):
    score: Optional[float]  # 1.0 / 0.0; None when the gold answer cannot be scored
    predicted: Optional[str]  # content of the boxed answer, None when there is none
    reason: Optional[str]  # why the score is not 1.0; None when correct


def answer_section(completion: str) -> Optional[str]:
    """Text after the last `<answer>` up to `</answer>` (or the end), or None without the tag."""
    start = completion.rfind("<answer>")
    if start == -1:
        return None
    end = completion.find("</answer>", start)
    return completion[start + len("<answer>") : end if end != -1 else len(completion)]


def extract_answer(completion: str) -> Optional[str]:
    """The last boxed answer of the `<answer>` section; if it has none, of the whole completion."""
    section = answer_section(completion)
    boxed = last_boxed(section) if section is not None else None
    return boxed if boxed is not None else last_boxed(completion)


def _timeout() -> Optional[int]:
    return _MAIN_THREAD_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse(latex: str) -> list:
    return math_verify.parse(f"\\boxed{{{latex}}}", parsing_timeout=_timeout())


def _verify(gold: list, predicted: list) -> bool:
    return math_verify.verify(gold, predicted, timeout_seconds=_timeout())


def _has_expression(parsed: list) -> bool:
    """math-verify appends the raw string as a fallback; only a parsed expression counts."""
    return any(not isinstance(p, str) for p in parsed)


def accuracy_reward(completion: str, gold: str) -> Accuracy:
    """1.0 iff the boxed answer equals the gold (bare LaTeX, e.g. `\\frac{1}{2}`) by math-verify."""
    gold_parsed = _parse(gold)
    if not _has_expression(gold_parsed):
        return Accuracy(None, extract_answer(completion), f"unscorable gold: {gold!r} does not parse")
    predicted = extract_answer(completion)
    if predicted is None:
        return Accuracy(0.0, None, "no \\boxed{} answer in the completion")
    predicted_parsed = _parse(predicted)
    if not predicted_parsed:
        return Accuracy(0.0, predicted, "boxed answer does not parse")
    if _verify(gold_parsed, predicted_parsed):
        return Accuracy(1.0, predicted, None)
    return Accuracy(0.0, predicted, "boxed answer differs from the gold")


def format_reward(completion: str) -> float:
    """1.0 iff the completion starts with `<think>\\n…\\n</think>\\n<answer>\\n…\\n</answer>` at a line end."""
    return 1.0 if _FORMAT.match(completion) else 0.0


def tag_count_reward(completion: str) -> float:
    """0.25 for each R1 tag that occurs exactly once (with its newlines)."""
    return 0.25 * sum(completion.count(tag) == 1 for tag in _TAGS)
