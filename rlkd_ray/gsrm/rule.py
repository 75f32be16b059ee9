"""The rule decomposer: the exact stand-in for the generative GSRM in domains whose steps can be
checked (here the arithmetic domain, rlkd_ray/data/arith.py), used to study the RL mechanism. The
generative GSRM (rlkd_ray/gsrm/prompts.py) stays the default for math and is the one the paper
describes.

`decompose(problem, reasoning)` reads a student's free text and returns the operations it performs,
in text order, as the `Structure` / `Step` objects `parse_structure` returns for a GSRM output:

    meta    which sub-expression the step takes, ending with `(operator k of the problem)` (k numbers
            the operators of the problem's expression left to right; `(no operator of the problem)`
            when the operation is not one the expression offers at that point)
    query   the operation `a op b`, operands as written, operator in ASCII
    answer  the value `c` as written
    final   the last `\\boxed{...}`, else the number after the last "answer is" / "answer:"

An operation is read from an equality: `a op b = c` and the usual ways of writing it (`3*4=12`,
`8 + 7 = 15`, `4 × 3 = 12`, `12 ÷ 4 − 1`, `a divided by b is c`, `a plus b equals c`, `4 x 3 = 12`,
`multiply 4 by 3 to get 12`, `subtract 2 from 5 ...`, `the sum of a and b is c`, LaTeX `\\times`,
negative numbers, thousands separators) and from a chain that rewrites the expression
(`3 + 4 * 2 = 3 + 8 = 11` is two operations: 4 * 2 → 8, then 3 + 8 → 11). An equality whose left
side holds several operations and whose right side is one number (`3 + 4 * 2 = 11`) shows no single
operation and yields no step. Lines, sentences and prose separate equalities; no output format is
asked of the student.

Which sub-expression (the meta position): the decomposer replays the student's operations on the
problem's expression. An operation is matched to a ready operation of the current expression (both
operands numbers in the expression tree) with the same operator and operand values (either order for
`+` and `*`); when several match, the one the school order takes next, else the leftmost. The matched
operator is replaced by the student's result as written (a wrong result is carried forward, so the
next step is matched against the student's own expression); an unmatched operation leaves the
expression as it is. The decomposer never raises; empty text and garbage give zero steps.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import List, Optional, Sequence, Tuple

from rlkd_ray.data import arith
from rlkd_ray.data.answers import last_boxed
from rlkd_ray.data.arith import Token
from rlkd_ray.gsrm.parser import Step, Structure

MAX_PART_TOKENS = 200  # a side of an equality longer than this is not read (bounds the work per text)

Operation = Tuple[Token, Token, Token, Token]  # a, op, b, c (num, op, num, num)

_N = r"\(?-?\d+(?:\.\d+)?\)?"  # an operand in a verbal form
_REWRITES: Sequence[Tuple[re.Pattern, str]] = [
    (re.compile(p, re.IGNORECASE), r)
    for p, r in (
        (r"\\times|\\cdot|[×✕✖⋅·∗]", " * "),
        (r"\\div|÷", " / "),
        (r"[−–]", "-"),
        (r"\\boxed|\\fbox|\\text|\\left|\\right|\\[()\[\]]|\$|\*\*|[{}]", " "),
        (r"(?<=\d),(?=\d{3}(?!\d))", ""),  # thousands separators
        (rf"\bsubtract(?:ing)?\s+({_N})\s+from\s+({_N})", r"\2 - \1"),
        (rf"\badd(?:ing)?\s+({_N})\s+(?:and|to|plus)\s+({_N})", r"\1 + \2"),
        (rf"\bmultiply(?:ing)?\s+({_N})\s+(?:by|and|with|times)\s+({_N})", r"\1 * \2"),
        (rf"\bdivid(?:e|ing)\s+({_N})\s+by\s+({_N})", r"\1 / \2"),
        (rf"\bthe\s+sum\s+of\s+({_N})\s+and\s+({_N})", r"\1 + \2"),
        (rf"\bthe\s+difference\s+(?:of|between)\s+({_N})\s+and\s+({_N})", r"\1 - \2"),
        (rf"\bthe\s+product\s+of\s+({_N})\s+and\s+({_N})", r"\1 * \2"),
        (rf"\bthe\s+quotient\s+of\s+({_N})\s+and\s+({_N})", r"\1 / \2"),
        (r"\bmultiplied\s+by\b|\btimes\b", " * "),
        (r"\bdivided\s+by\b", " / "),
        (r"\bplus\b", " + "),
        (r"\bminus\b", " - "),
        (r"(?<=[\d)])[ \t]*[xX][ \t]*(?=[\d(])", " * "),
        (r",?[ \t]*\b(?:which|that|this)[ \t]+(?:is|gives|equals|makes|results[ \t]+in)(?:[ \t]+us)?\b", " = "),
        (r"\bis[ \t]+equal[ \t]+to\b|\bequals?\b|\bis\b|\b(?:gives|makes|gets)(?:[ \t]+us)?\b|\byields\b"
         r"|\bresults[ \t]+in\b|\b(?:to|we)[ \t]+(?:get|obtain)\b"
         r"|==|=>|→|⇒", " = "),
    )
]
_TOKEN = re.compile(r"(?P<num>\d{1,100}(?:\.\d{1,100})?)|(?P<sym>[-+*/()=])|(?P<nl>\n)|(?P<word>[^\W\d_]+|\S)")


def normalize(text: str) -> str:
    """Unicode, LaTeX and verbal operations and equalities rewritten to `+ - * / =`."""
    for pattern, replacement in _REWRITES:
        text = pattern.sub(replacement, text)
    return text


def tokens(text: str) -> List[Token]:
    """Numbers, operators, parentheses, `=`, and `|` for anything else (a word, punctuation, a line
    break), which separates equalities. A `-` directly before a digit is a sign unless it follows a
    number or `)`; a `-` after a word or at the start that is not a sign (a bullet) is a separator.
    A parenthesised number is that number."""
    out: List[Token] = []
    for m in _TOKEN.finditer(normalize(text)):
        prev = out[-1].kind if out else "|"
        if m.group("num"):
            sign = "-" if out and out[-1].kind == "sign" else ""
            if sign:
                out.pop()
            out.append(arith.num(Fraction(sign + m.group("num")), sign + m.group("num")))
        elif m.group("sym") == "-" and prev in ("|", "op", "(", "=") and _digit_next(m):
            out.append(Token("sign"))
        elif m.group("sym") in ("(", ")", "="):
            out.append(Token(m.group("sym")))
        elif m.group("sym") and not (m.group("sym") == "-" and prev == "|"):
            out.append(Token("op", text=m.group("sym")))
        elif prev != "|":
            out.append(Token("|"))
    return arith.collapse([t for t in out if t.kind != "sign"])


def _digit_next(m: re.Match) -> bool:
    end = m.end()
    return end < len(m.string) and m.string[end].isdigit()


def _longest_prefix(part: Sequence[Token]) -> List[Token]:
    for end in range(len(part), 0, -1):
        if arith.is_expression(part[:end]):
            return arith.collapse(part[:end])
    return []


def _longest_suffix(part: Sequence[Token]) -> List[Token]:
    for start in range(len(part)):
        if arith.is_expression(part[start:]):
            return arith.collapse(part[start:])
    return []


def _reductions(src: Sequence[Token], dst: Sequence[Token]) -> Optional[List[Operation]]:
    """The operations that turn `src` into `dst`: each replaces `a op b` (or `(a op b)`) of `src` by
    one number of `dst`, the rest being equal; None when `dst` is not such a rewrite of `src`."""
    memo = {}

    def match(i: int, j: int) -> Optional[List[Operation]]:
        if (i, j) in memo:
            return memo[(i, j)]
        memo[(i, j)] = None
        if i == len(src) and j == len(dst):
            memo[(i, j)] = []
            return []
        found = None
        if i < len(src) and j < len(dst) and _same(src[i], dst[j]):
            found = match(i + 1, j + 1)
        if found is None and j < len(dst) and dst[j].kind == "num":
            for width, off in ((5, 1), (3, 0)):  # (a op b) or a op b
                w = src[i : i + width]
                if len(w) == width and (width == 3 or (w[0].kind == "(" and w[4].kind == ")")) and \
                        w[off].kind == "num" and w[off + 1].kind == "op" and w[off + 2].kind == "num":
                    rest = match(i + width, j + 1)
                    if rest is not None:
                        found = [(w[off], w[off + 1], w[off + 2], dst[j])] + rest
                        break
        memo[(i, j)] = found
        return found

    steps = match(0, 0)
    return steps or None


def _same(a: Token, b: Token) -> bool:
    return a.kind == b.kind and (a.value == b.value if a.kind == "num" else a.text == b.text)


def operations(text: str) -> List[Operation]:
    """The operations written in `text`, in order (see the module docstring)."""
    found: List[Operation] = []
    segment: List[Token] = []
    for t in tokens(text) + [Token("|")]:
        if t.kind != "|":
            segment.append(t)
            continue
        parts: List[List[Token]] = [[]]
        for s in segment:
            if s.kind == "=":
                parts.append([])
            else:
                parts[-1].append(s)
        segment = []
        for left, right in zip(parts, parts[1:]):
            if not left or not right or len(left) > MAX_PART_TOKENS or len(right) > MAX_PART_TOKENS:
                continue
            src, dst = _longest_suffix(left), _longest_prefix(right)
            if src and dst:
                found.extend(_reductions(src, dst) or [])
    return found


def operation_text(a: Token, op: str, b: Token) -> str:
    """`a op b`, numbers as written (a negative right operand in parentheses)."""
    return arith.render([a, Token("op", text=op), b])


def _matches(state: Sequence[Token], p: int, op: str, a: Fraction, b: Fraction) -> bool:
    x, y = state[p - 1].value, state[p + 1].value
    return state[p].text == op and ((x, y) == (a, b) or (op in "+*" and (x, y) == (b, a)))


def _take(state: List[Token], op: Operation) -> Tuple[int, List[Token]]:
    """The operator of the problem a step takes (0: none) and the expression after it."""
    a, o, b, c = op
    candidates = [p for p in range(len(state)) if arith.ready(state, p) and _matches(state, p, o.text, a.value, b.value)]
    if not candidates:
        return 0, state
    school, _ = arith.next_operation(state)
    p = school if school in candidates else candidates[0]
    return state[p].index, arith.reduce(state, p, c)


def problem_expression(problem: str) -> Optional[List[Token]]:
    """The tokens of the expression in a problem text, operators numbered; None when there is none."""
    expr = arith.normalized_expression(problem) if isinstance(problem, str) else None
    return arith.tokenize(expr) if expr else None


_ANSWER_IS = re.compile(r"answer[^\w-]{0,3}(?:is[^\w-]{0,3}|:|=)\s*\**\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def final_answer(text: str) -> Optional[str]:
    """The last `\\boxed{...}`, else the number after the last "answer is" / "answer:"."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    found = _ANSWER_IS.findall(normalize(text).replace(" = ", " is "))
    return found[-1] if found else None


def decompose(problem: str, reasoning: str) -> Structure:
    """The operations of `reasoning` as GSRM steps (module docstring); `problem` locates each step in
    the problem's expression. Never raises."""
    if not isinstance(reasoning, str):
        return Structure([], None, [f"input is {type(reasoning).__name__}, not str"])
    state = problem_expression(problem)
    errors = [] if state is not None else ["no arithmetic expression in the problem; steps are not located"]
    steps = []
    for op in operations(reasoning):
        a, o, b, c = op
        sub = operation_text(a, o.text, b)
        if state is None:
            meta = f"Takes {sub} next."
        else:
            index, state = _take(state, op)
            where = "next" if index else "next, which is not an operation of the expression at this point"
            meta = f"Takes {sub} {where} {arith.position_marker(index)}"
        steps.append(Step(meta, sub, c.text))
    answer = final_answer(reasoning)
    if not steps:
        errors.append("no operations found")
    if answer is None:
        errors.append("no final answer")
    return Structure(steps, answer, errors)

