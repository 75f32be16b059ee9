"""Gold answers out of reference solutions: the last `\\boxed{…}` (MATH) and `#### n` (GSM8K); the
reasoning of a trace (`think_text`)."""

from __future__ import annotations

import re
from typing import Optional

_BOX_START = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K calculator annotations, e.g. `<<16-3-4=9>>`
_GSM8K_FINAL = re.compile(r"\n?####\s*(.*?)\s*$", re.DOTALL)
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")  # `2,125` → `2125`


def _braced(text: str, open_at: int) -> Optional[str]:
    """Content of the group opened by `text[open_at] == '{'`; escaped `\\{` `\\}` do not count."""
    depth, i = 0, open_at
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return text[open_at + 1 : i]
        i += 1
    return None


def last_boxed(text: str) -> Optional[str]:
    """Content of the last `\\boxed{…}` / `\\fbox{…}` with balanced braces (also `\\boxed 5`),
    or None when there is none (an empty box counts as none)."""
    for match in reversed(list(_BOX_START.finditer(text))):
        rest = match.end()
        while rest < len(text) and text[rest] == " ":
            rest += 1
        if rest < len(text) and text[rest] == "{":
            content = _braced(text, rest)
        elif rest > match.end():  # `\boxed 5`: one space-delimited token
            content = re.match(r"[^\s$]*", text[rest:]).group(0)
        else:
            content = None
        if content:
            return content.strip()
    return None


def strip_calculator_annotations(solution: str) -> str:
    """GSM8K solution text without its `<<expr=value>>` annotations."""
    return _CALCULATOR.sub("", solution)


def without_thousands_separators(number: str) -> str:
    """`2,125` → `2125`: a comma between digit groups would read as a tuple to math-verify."""
    return _THOUSANDS.sub("", number)


def gsm8k_final_answer(solution: str) -> Optional[str]:
    """The answer after `####` at the end of a GSM8K solution, thousands separators removed."""
    match = _GSM8K_FINAL.search(solution)
    return without_thousands_separators(match.group(1)) if match and match.group(1) else None


def gsm8k_reasoning(solution: str) -> str:
    """The worked solution of a GSM8K answer: no calculator annotations, no final `#### n` line."""
    return _GSM8K_FINAL.sub("", strip_calculator_annotations(solution)).strip()


def think_text(completion: str) -> str:
    """The reasoning of a trace or completion: the `<think>` content when tagged, else the whole text.
    The GSRM decomposes this text on both sides: the teacher's (cut once, where data rows are built)
    and the student's (forced prefix + completion).

    An unclosed `<think>` runs to the end; a `</think>` without an opening tag starts at the top
    (chat templates that put `<think>` in the prompt).
    """
    open_at = completion.find("<think>")
    start = open_at + len("<think>") if open_at != -1 else 0
    end = completion.find("</think>", start)
    return completion[start : end if end != -1 else len(completion)].strip()
