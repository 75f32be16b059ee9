"""A procedural arithmetic domain with exact teacher structures (`data.train.kind: arith`).

Problems evaluate one integer expression stated in the problem text (`Compute 3 + 4 * (5 - 2).`):
`+ - * /` with operator precedence, left-to-right associativity and parentheses; every division is
exact, so every value is an integer. Everything is deterministic from `ArithConfig.seed`.

The teacher is a program that solves the expression the way it is taught at school, one operation
per step (`school_order`): the innermost parenthesised group first (the leftmost one when several),
inside a group multiplication and division before addition and subtraction, and among operations of
the same level the leftmost first. For every step it writes which operation comes next and why
(meta), the sub-problem (query) and its result (answer), each from at least five phrasings chosen
by the seeded RNG; `teacher_reasoning` (free text) and `teacher_structure` (GSRM tag format, see
`rlkd_ray.gsrm.parser`) come from the same list of steps.

Positions. The operators of the problem's expression are numbered 1, 2, ... left to right; each is
one node of the expression tree, so "operator k of the problem" names a sub-expression exactly. The
meta field of the teacher structure ends with `(operator k of the problem)`; the rule decomposer
(`rlkd_ray.gsrm.rule`) writes the same marker for a student's step, and the exact judge
(`rlkd_ray.gsrm.exact_judge`) compares these positions.

Splits: `train`, `arith_test` (held-out, the train distribution) and `arith_hard` (held-out, more
operations). Problems are distinct within a split and the eval splits never share a normalised
expression with `train` (`normalized_expression`; built so, and checked by `check_disjoint`). The eval
splits are drawn first; where the space of expressions is small (one operation on one-digit numbers
has about 250), drawing distinct problems thins out the small problems of the later splits.

Prompt format assumed: the problem is the user message; the system prompt is `SYSTEM_PROMPT`
(or any prompt that asks for the final answer in `\\boxed{}`): the accuracy reward
(`rlkd_ray.rewards.rules.accuracy_reward`) reads the last `\\boxed{}` and compares it with the
integer gold answer.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

# A short instruction with one worked example: the final answer in \boxed{} is what the project's
# accuracy reward reads, and SmolLM2-135M-Instruct boxed its answer only when shown an example (0 of
# 48 problems without one under four instruction wordings, 9 of 48 with this one).
SYSTEM_PROMPT = (
    "Solve the arithmetic problem one operation per line, following the order of operations. Example:\n"
    "Compute 2 + 3 * 4.\n3 * 4 = 12\n2 + 12 = 14\nThe answer is \\boxed{14}."
)

PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
OP_WORDS = {"+": "addition", "-": "subtraction", "*": "multiplication", "/": "division"}
ARITH_SPLITS = ("arith_test", "arith_hard")


# -- tokens -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Token:
    kind: str  # num | op | ( | )
    value: Optional[Fraction] = None  # num: its value
    text: str = ""  # num: as written; op: the ASCII operator + - * /
    index: int = 0  # op: its position among the operators of the problem (1-based); 0 = unknown

    def __str__(self) -> str:
        return self.text if self.kind in ("num", "op") else self.kind


def num(value: Fraction | int, text: Optional[str] = None) -> Token:
    value = Fraction(value)
    return Token("num", value, text if text is not None else format_value(value))


def format_value(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else str(value)


_EXPR_TOKEN = re.compile(r"\s*(?:(?P<num>\d+)|(?P<op>[-+*/×÷−])|(?P<par>[()]))")
_ASCII = {"×": "*", "÷": "/", "−": "-"}


def tokenize(expr: str) -> List[Token]:
    """Tokens of a clean expression (digits, `+ - * / × ÷ −`, parentheses, spaces); a `-` at the
    start, after an operator or after `(` is the sign of the number it precedes. Operators are
    numbered 1, 2, ... left to right. Raises ValueError on anything else."""
    tokens: List[Token] = []
    pos, sign = 0, ""
    expr = expr.rstrip()
    while pos < len(expr):
        m = _EXPR_TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"not an arithmetic expression at {expr[pos:pos + 10]!r}")
        pos = m.end()
        if m.group("num"):
            tokens.append(num(int(sign + m.group("num")), sign + m.group("num")))
            sign = ""
        elif m.group("op"):
            op = _ASCII.get(m.group("op"), m.group("op"))
            unary = op == "-" and (not tokens or tokens[-1].kind in ("op", "(")) and not sign
            if unary:
                sign = "-"
            else:
                tokens.append(Token("op", text=op))
        else:
            tokens.append(Token(m.group("par")))
        if sign and not m.group("op"):
            raise ValueError(f"a sign before {m.group(0).strip()!r} in {expr!r}")
    if sign:
        raise ValueError(f"{expr!r} ends with a sign")
    return number_operators(collapse(tokens))


def number_operators(tokens: Sequence[Token]) -> List[Token]:
    out, k = [], 0
    for t in tokens:
        if t.kind == "op":
            k += 1
            t = Token("op", text=t.text, index=k)
        out.append(t)
    return out


def collapse(tokens: Sequence[Token]) -> List[Token]:
    """`( n )` → `n`, repeatedly: a parenthesised number is that number."""
    out: List[Token] = []
    for t in tokens:
        out.append(t)
        while len(out) >= 3 and out[-1].kind == ")" and out[-2].kind == "num" and out[-3].kind == "(":
            out[-3:] = [out[-2]]
    return out


def render(tokens: Sequence[Token]) -> str:
    """`3 + 4 * (5 - 2)`: spaces around operators; a negative number after the first token in
    parentheses."""
    parts = []
    for i, t in enumerate(tokens):
        if t.kind == "num" and t.value < 0 and i > 0:
            parts.append(f"({t.text})")
        else:
            parts.append(str(t))
    return " ".join(parts).replace("( ", "(").replace(" )", ")")


def is_expression(tokens: Sequence[Token]) -> bool:
    """Well formed: numbers and binary operators alternate, parentheses balance and enclose an
    expression."""
    depth, expect_operand = 0, True
    for t in tokens:
        if expect_operand:
            if t.kind == "num":
                expect_operand = False
            elif t.kind == "(":
                depth += 1
            else:
                return False
        else:
            if t.kind == "op":
                expect_operand = True
            elif t.kind == ")" and depth > 0:
                depth -= 1
            else:
                return False
    return bool(tokens) and not expect_operand and depth == 0


# -- reduction -------------------------------------------------------------------------------------
def ready(tokens: Sequence[Token], p: int) -> bool:
    """The operator at `p` has two numbers as its operands in the expression tree: numbers on both
    sides, no operator on the left that binds its left number first (same or higher level, left to
    right), none on the right that binds its right number first (higher level)."""
    if not (0 < p < len(tokens) - 1 and tokens[p].kind == "op"):
        return False
    if tokens[p - 1].kind != "num" or tokens[p + 1].kind != "num":
        return False
    level = PRECEDENCE[tokens[p].text]
    left = tokens[p - 2] if p >= 2 else None
    right = tokens[p + 2] if p + 2 < len(tokens) else None
    if left is not None and left.kind == "op" and PRECEDENCE[left.text] >= level:
        return False
    if right is not None and right.kind == "op" and PRECEDENCE[right.text] > level:
        return False
    return True


def apply(op: str, a: Fraction, b: Fraction) -> Optional[Fraction]:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b != 0 else None


def reduce(tokens: Sequence[Token], p: int, result: Optional[Token] = None) -> List[Token]:
    """The expression with the ready operation at `p` replaced by `result` (default: its value)."""
    if result is None:
        value = apply(tokens[p].text, tokens[p - 1].value, tokens[p + 1].value)
        if value is None:
            raise ZeroDivisionError(render(tokens[p - 1 : p + 2]))
        result = num(value)
    return collapse(list(tokens[: p - 1]) + [result] + list(tokens[p + 2 :]))


@dataclass(frozen=True)
class Choice:
    """Why the school order takes an operation next."""

    in_parentheses: bool  # it is inside the innermost parenthesised group
    before_lower: bool  # it is * or / and its group also holds + or -
    left_to_right: bool  # its group holds more operations of the same level, to its right
    last: bool  # it is the only operation left


def next_operation(tokens: Sequence[Token]) -> Tuple[int, Choice]:
    """The position of the operator the school order takes next, and why."""
    close = next((i for i, t in enumerate(tokens) if t.kind == ")"), None)
    if close is None:
        start, end = 0, len(tokens)
    else:
        start = max(i for i in range(close) if tokens[i].kind == "(") + 1
        end = close
    ops = [i for i in range(start, end) if tokens[i].kind == "op"]
    high = [i for i in ops if PRECEDENCE[tokens[i].text] == 2]
    p = (high or ops)[0]
    same = [i for i in (high or ops) if i > p]
    return p, Choice(
        in_parentheses=close is not None,
        before_lower=bool(high) and len(high) < len(ops),
        left_to_right=bool(same),
        last=sum(t.kind == "op" for t in tokens) == 1,
    )


@dataclass(frozen=True)
class Operation:
    """One step of a solution: operator `index` of the problem, taken on the current expression."""

    index: int  # position of the operator in the problem's expression (1-based)
    op: str
    a: Fraction
    b: Fraction
    result: Fraction
    before: str  # the expression before this step
    after: str  # the expression after it
    choice: Choice


def school_order(expr: str | Sequence[Token]) -> List[Operation]:
    """The teacher's solution: one operation per step, in school order, to a single number."""
    tokens = tokenize(expr) if isinstance(expr, str) else list(expr)
    steps = []
    while len(tokens) > 1:
        p, choice = next_operation(tokens)
        t, tokens = tokens, reduce(tokens, p)
        a, op, b = t[p - 1].value, t[p].text, t[p + 1].value
        steps.append(Operation(t[p].index, op, a, b, apply(op, a, b), render(t), render(tokens), choice))
    return steps


def evaluate(expr: str) -> Fraction:
    """The value of `expr` with precedence (school order reduction)."""
    tokens = tokenize(expr)
    if not is_expression(tokens):
        raise ValueError(f"not a well-formed expression: {expr!r}")
    return tokenize(school_order(tokens)[-1].after)[0].value if len(tokens) > 1 else tokens[0].value


def normalized_expression(text: str) -> Optional[str]:
    """The canonical form of the expression in a problem text (`Compute 3+4*(5-2).` →
    `3 + 4 * (5 - 2)`): the key by which splits are kept apart. None when there is none."""
    m = re.search(r"[-(\d][-+*/×÷−()\d\s]*[\d)]", text)
    if not m:
        return None
    try:
        tokens = tokenize(m.group(0))
    except ValueError:
        return None
    return render(tokens) if is_expression(tokens) else None


# -- generation ------------------------------------------------------------------------------------
@dataclass
class _Node:
    op: Optional[str] = None  # None: a literal
    value: int = 0
    left: Optional["_Node"] = None
    right: Optional["_Node"] = None


def _tree(rng: random.Random, n_ops: int, max_literal: int) -> _Node:
    if n_ops == 0:
        return _Node(value=rng.randint(1, max_literal))
    k = rng.randint(0, n_ops - 1)
    return _Node(rng.choice("+-*/"), 0, _tree(rng, k, max_literal), _tree(rng, n_ops - 1 - k, max_literal))


def _exact(rng: random.Random, node: _Node, max_literal: int) -> Optional[Fraction]:
    """Make every division exact by changing a literal operand; the value, or None if not possible."""
    if node.op is None:
        return Fraction(node.value)
    a = _exact(rng, node.left, max_literal)
    b = _exact(rng, node.right, max_literal)
    if a is None or b is None:
        return None
    if node.op == "/" and (b == 0 or a % b != 0):
        if node.right.op is None:  # a divisor of a; not 1 or a itself (x / x, x / 1) unless forced
            divisors = [d for d in range(2, max_literal + 1) if a % d == 0]
            divisors = [d for d in divisors if d != abs(a)] or divisors
            node.right.value = rng.choice(divisors) if divisors else 1
        elif node.left.op is None and b > 0 and b <= max_literal:  # a multiple of b, not b unless forced
            node.left.value = b * rng.randint(min(2, max_literal // int(b)), max_literal // int(b))
        else:
            return None
        return _exact(rng, node, max_literal)
    return apply(node.op, a, b)


def _render_tree(node: _Node) -> str:
    """Only the parentheses the tree needs: a lower-level left operand; a right operand of the same
    or a lower level (so the text parses back, left to right, to this tree)."""
    if node.op is None:
        return str(node.value)
    level = PRECEDENCE[node.op]
    left, right = _render_tree(node.left), _render_tree(node.right)
    if node.left.op is not None and PRECEDENCE[node.left.op] < level:
        left = f"({left})"
    if node.right.op is not None and PRECEDENCE[node.right.op] <= level:
        right = f"({right})"
    return f"{left} {node.op} {right}"


def paren_depth(expr: str) -> int:
    depth = deepest = 0
    for c in expr:
        depth += (c == "(") - (c == ")")
        deepest = max(deepest, depth)
    return deepest


def random_expression(rng: random.Random, n_ops: int, digits: int, max_paren_depth: int) -> str:
    """An expression with `n_ops` operators, literals of 1..`digits` digits (no zero), at most
    `max_paren_depth` nested parentheses and integer values throughout (exact divisions)."""
    max_literal = 10 ** digits - 1
    for _ in range(1000):
        root = _tree(rng, n_ops, max_literal)
        if _exact(rng, root, max_literal) is None:
            continue
        text = _render_tree(root)
        if paren_depth(text) <= max_paren_depth:
            return text
    raise ValueError(f"no expression with {n_ops} operations and parentheses depth <= {max_paren_depth} "
                     f"found in 1000 tries")


# -- the teacher -----------------------------------------------------------------------------------
_PAREN = (
    "parentheses come first",
    "what is inside the parentheses is worked out first",
    "the parentheses have to be done before anything outside them",
    "brackets are evaluated before the rest",
    "we always start inside the parentheses",
)
_BEFORE_LOWER = (
    "{word} comes before addition and subtraction",
    "{word} is done before any addition or subtraction",
    "{word} has higher precedence than addition and subtraction",
    "multiplication and division go before addition and subtraction",
    "by the order of operations, {word} is done first",
)
_LEFT_TO_RIGHT = (
    "operations of the same level are done from left to right",
    "we work from left to right",
    "it is the leftmost operation of its level",
    "same-level operations go in order from the left",
    "reading left to right, it comes first",
)
_LAST = (
    "it is the only operation left",
    "just one operation remains",
    "this is the last operation",
    "only this operation is left to do",
    "nothing else remains to be done",
)
_META = (
    "{Reason}, so the next operation is {sub}.",
    "Next comes {sub}, because {reason}.",
    "Since {reason}, we take {sub} now.",
    "{Reason}; so we work on {sub}.",
    "We do {sub} next: {reason}.",
)
_QUERY = (
    "What is {sub}?",
    "Compute {sub}.",
    "We need {sub}.",
    "Evaluate {sub}.",
    "Find {sub}.",
)
_ANSWER = (
    "{sub} = {c}.",
    "So {sub} = {c}.",
    "That gives {sub} = {c}.",
    "Working it out: {sub} = {c}.",
    "{sub} equals {c}.",
)
_NOW = (
    "Now we have {expr}.",
    "The expression becomes {expr}.",
    "This leaves {expr}.",
    "Now the expression is {expr}.",
    "We are left with {expr}.",
)
_FINAL = (
    "So the answer is {g}.",
    "The final answer is {g}.",
    "Therefore the value is {g}.",
    "So the expression equals {g}.",
    "The result is {g}.",
)


def operation_text(op: str, a: Fraction, b: Fraction) -> str:
    return render([num(a), Token("op", text=op), num(b)])


def position_marker(index: int) -> str:
    """The machine-readable end of a meta field: which operator of the problem the step takes
    (0: none of them)."""
    return f"(operator {index} of the problem)" if index else "(no operator of the problem)"


def _reason(rng: random.Random, s: Operation) -> str:
    parts = []
    if s.choice.in_parentheses:
        parts.append(rng.choice(_PAREN))
    if s.choice.before_lower:
        parts.append(rng.choice(_BEFORE_LOWER).format(word=OP_WORDS[s.op]))
    elif s.choice.left_to_right:
        parts.append(rng.choice(_LEFT_TO_RIGHT))
    if not parts:
        parts.append(rng.choice(_LAST))
    return ", and ".join(parts) if len(parts) < 2 else f"{parts[0]}, and inside them {parts[1]}"


@dataclass(frozen=True)
class TeacherStep:
    operation: Operation
    meta: str  # the meta-reasoning sentence of the reasoning text
    query: str
    answer: str  # the answer sentence of the reasoning text
    now: str  # the expression after the step, as a sentence ("" after the last step)


def teacher_steps(rng: random.Random, expr: str) -> List[TeacherStep]:
    out = []
    ops = school_order(expr)
    for i, s in enumerate(ops):
        sub = operation_text(s.op, s.a, s.b)
        reason = _reason(rng, s)
        meta = rng.choice(_META).format(sub=sub, reason=reason, Reason=reason[0].upper() + reason[1:])
        query = rng.choice(_QUERY).format(sub=sub)
        answer = rng.choice(_ANSWER).format(sub=sub, c=format_value(s.result))
        now = rng.choice(_NOW).format(expr=s.after) if i + 1 < len(ops) else ""
        out.append(TeacherStep(s, meta, query, answer, now))
    return out


def teacher_solution(rng: random.Random, expr: str) -> Tuple[str, str, str]:
    """(teacher_reasoning, teacher_structure, gold answer) of `expr`, from one list of steps."""
    from rlkd_ray.gsrm.parser import Step, Structure
    from rlkd_ray.gsrm.prompts import format_structure

    steps = teacher_steps(rng, expr)
    gold = format_value(evaluate(expr))
    lines = []
    for t in steps:
        lines.append(" ".join(x for x in (t.meta, t.answer, t.now) if x))
    lines.append(rng.choice(_FINAL).format(g=gold))
    structure = Structure(
        [Step(f"{t.meta} {position_marker(t.operation.index)}", t.query, format_value(t.operation.result))
         for t in steps], gold, [])
    return "\n".join(lines), format_structure(structure), gold


def problem_text(expr: str) -> str:
    return f"Compute {expr}."


# -- splits ----------------------------------------------------------------------------------------
def _rows(name: str, seed: int, size: int, ops: Tuple[int, int], digits: int, max_paren_depth: int,
          exclude: Set[str]) -> List[Dict[str, str]]:
    """`size` distinct problems, none of whose expressions is in `exclude`; deterministic."""
    rng = random.Random(f"rlkd-arith/{seed}/{name}")
    rows, seen, tries = [], set(), 0
    while len(rows) < size:
        tries += 1
        if tries > 50 * size + 1000:
            raise ValueError(f"arith split {name}: only {len(rows)} distinct problems of {size} found; "
                             f"allow more operations or digits, or ask for fewer problems")
        expr = random_expression(rng, rng.randint(*ops), digits, max_paren_depth)
        key = normalized_expression(expr)
        if key in seen or key in exclude:
            continue
        seen.add(key)
        reasoning, structure, gold = teacher_solution(rng, expr)
        rows.append(dict(id=f"arith/{name}/{len(rows)}", problem=problem_text(expr), answer=gold,
                         teacher_reasoning=reasoning, teacher_structure=structure))
    return rows


class _Knobs(NamedTuple):
    seed: int
    min_ops: int
    ops: int
    digits: int
    paren_depth: int
    train_size: int
    test_size: int
    hard_ops: int
    hard_size: int


def build_splits(cfg) -> Dict[str, List[Dict[str, str]]]:
    """`train`, `arith_test`, `arith_hard` of an `ArithConfig`: the eval splits first, then train
    without their expressions (so the eval splits do not depend on `train_size`)."""
    test = _rows("arith_test", cfg.seed, cfg.test_size, (cfg.min_ops, cfg.ops), cfg.digits, cfg.paren_depth, set())
    held = {normalized_expression(r["problem"]) for r in test}
    hard = _rows("arith_hard", cfg.seed, cfg.hard_size, (cfg.ops + 1, cfg.hard_ops), cfg.digits,
                 cfg.paren_depth, held)
    held |= {normalized_expression(r["problem"]) for r in hard}
    train = _rows("train", cfg.seed, cfg.train_size, (cfg.min_ops, cfg.ops), cfg.digits, cfg.paren_depth, held)
    splits = {"train": train, "arith_test": test, "arith_hard": hard}
    check_disjoint(splits)
    return splits


def check_disjoint(splits: Dict[str, List[Dict[str, str]]]) -> None:
    """Raise if a split repeats a problem or two splits share a normalised expression."""
    seen: Dict[Optional[str], str] = {}
    for name, rows in splits.items():
        for row in rows:
            key = normalized_expression(row["problem"])
            if key is None or key in seen:
                raise ValueError(f"arith split {name}: {row['problem']!r} "
                                 + ("has no expression" if key is None else f"is also in {seen[key]}"))
            seen[key] = name


@functools.lru_cache(maxsize=4)
def _cached_splits(knobs: Tuple) -> Dict[str, List[Dict[str, str]]]:
    return build_splits(_Knobs(*knobs))


def split_rows(cfg, name: str) -> List[Dict[str, str]]:
    """One split (`train`, `arith_test`, `arith_hard`) of an `ArithConfig` (all three are built
    together, once per configuration and process)."""
    if name not in ("train",) + ARITH_SPLITS:
        raise ValueError(f"unknown arith split {name!r}")
    knobs = tuple(getattr(cfg, f) for f in _Knobs._fields)
    return [dict(r) for r in _cached_splits(knobs)[name]]


def expressions(rows: Iterable[Dict[str, str]]) -> Set[Optional[str]]:
    return {normalized_expression(r["problem"]) for r in rows}
