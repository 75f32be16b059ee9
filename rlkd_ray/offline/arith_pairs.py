"""GSRM training pairs of the arithmetic domain (rlkd_ray/data/arith.py) for `rlkd sft` (task gsrm):
reasoning paths of train problems with their structures, written as the accepted records of
`rlkd annotate` (JSON lines: id, problem, reasoning, domain, target, annotator).

Two kinds of path:
- the teacher's trace with the teacher structure (what a perfect annotator would give `rlkd annotate`),
  for one problem in `TEACHER_EVERY`;
- a student-like path for every problem: operations written as the student writes them (`a op b = c`
  lines, `×`/`÷`, words, a chain that rewrites the expression, a boxed answer) with the slips a student
  makes (a wrong result carried forward, an operation out of the school order or against precedence, an operand swapped, a
  repeated line, a made-up operation, a whole expression equated to a number), with the structure the
  rule decomposer (rlkd_ray/gsrm/rule.py) reads from it: the target a trained GSRM is measured against
  (scripts/gsrm_agreement.py). Paths the rule decomposer reads no step or no final answer from are left
  out (a GSRM target must parse cleanly, `rlkd_ray.offline.sft.gsrm_example`).

    python -m rlkd_ray.offline.arith_pairs --config conf/arith_gsrm_sft.yaml [--skip 1000] [--n 4000]

writes `sft.annotations` (or `--output`). Deterministic from `--seed`. `--skip` leaves out the first train problems,
whose student paths measure the trained GSRM (scripts/gsrm_agreement.py reads the first 200).
"""

from __future__ import annotations

import argparse
import json
import random
from fractions import Fraction
from pathlib import Path
from typing import Dict, Iterator, List

from rlkd_ray.data import arith
from rlkd_ray.gsrm import format_structure
from rlkd_ray.gsrm.rule import decompose

TEACHER_EVERY = 4  # one problem in four also gives its teacher trace
ANNOTATOR = "rule decomposer on generated paths (rlkd_ray/offline/arith_pairs.py)"

_SYMBOL = {"*": ["*", "*", "×", "x"], "/": ["/", "/", "÷"], "+": ["+"], "-": ["-"]}
_WORD = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}
_LINE = ["{a} {op} {b} = {c}", "{a} {op} {b} = {c}", "{a}{op}{b}={c}", "{a} {op} {b} = {c}.",
         "{a} {word} {b} equals {c}", "{a} {word} {b} is {c}", "First, {a} {op} {b} = {c}.",
         "Then {a} {op} {b} = {c}.", "Step {i}: {a} {op} {b} = {c}", "We have {a} {op} {b} = {c}."]
_FINAL = ["\\boxed{{{v}}}", "\\boxed{{{v}}}", "The answer is \\boxed{{{v}}}.", "The answer is {v}.", "{v}"]


def _slip(rng: random.Random, value: Fraction) -> Fraction:
    """A wrong result, as a student gets one: off by a little, or an operand-sized mistake."""
    return value + rng.choice([-10, -2, -1, 1, 2, 3, 10])


def _written(value: Fraction) -> Fraction:
    """A student writes a whole number: an inexact quotient (after an earlier slip) is cut."""
    return Fraction(value.numerator // value.denominator)


def student_like_path(rng: random.Random, expr: str) -> str:
    """A terse path for `expr` with the student's phrasings and slips (module docstring)."""
    tokens = arith.tokenize(expr)
    if rng.random() < 0.12:  # the whole expression equated to a number: no single operation in it
        lines = [f"{arith.render(tokens)} = {arith.format_value(_slip(rng, arith.evaluate(expr)))}"]
        return "\n".join(lines + [rng.choice(_FINAL).format(v=lines[0].rsplit(" ", 1)[-1])])
    chain = rng.random() < 0.12  # one line that rewrites the expression step by step
    forms, lines, value = [arith.render(tokens)], [], None
    while len(tokens) > 1 and len(lines) < 8:
        p, _ = arith.next_operation(tokens)
        if rng.random() < 0.15:  # out of the school order: any operator between two numbers (precedence slips)
            p = rng.choice([q for q in range(1, len(tokens) - 1)
                            if tokens[q].kind == "op" and tokens[q - 1].kind == tokens[q + 1].kind == "num"])
        a, op, b = tokens[p - 1], tokens[p], tokens[p + 1]
        exact = arith.apply(op.text, a.value, b.value)
        if exact is None:  # a division by zero, after an earlier slip
            value = Fraction(rng.randint(0, 9))
        else:
            value = _written(_slip(rng, exact) if rng.random() < 0.2 else exact)
        tokens = arith.reduce(tokens, p, arith.num(value))
        forms.append(arith.render(tokens))
        x, y = (b, a) if op.text in "+*" and rng.random() < 0.15 else (a, b)
        line = rng.choice(_LINE).format(a=x.text, op=rng.choice(_SYMBOL[op.text]), word=_WORD[op.text], b=y.text,
                                        c=arith.format_value(value), i=len(lines) + 1)
        lines.append(line)
        if rng.random() < 0.08:
            lines.append(line)  # a repeated line
        if rng.random() < 0.08:  # a made-up operation on numbers of the problem's size
            lines.append(f"{rng.randint(1, 9)} {rng.choice('+-*')} {rng.randint(1, 9)} = {rng.randint(0, 30)}")
    if chain:
        lines = [" = ".join(forms)]
    final = value if value is not None else arith.evaluate(expr)
    if rng.random() < 0.2:
        final = _slip(rng, final)
    return "\n".join(lines + [rng.choice(_FINAL).format(v=arith.format_value(final))])


def pairs(rows: List[Dict[str, str]], seed: int, domain: str) -> Iterator[Dict[str, str]]:
    """Annotation records of `rows` (train problems): a student-like path each, the teacher's trace for
    one in `TEACHER_EVERY`; paths without a clean structure are left out."""
    rng = random.Random(f"rlkd-arith-pairs/{seed}")
    for n, row in enumerate(rows):
        expr = arith.normalized_expression(row["problem"])
        if n % TEACHER_EVERY == 0:
            yield {"id": f"{row['id']}/teacher", "problem": row["problem"], "reasoning": row["teacher_reasoning"],
                   "domain": domain, "target": row["teacher_structure"], "annotator": "the domain's teacher"}
        text = student_like_path(rng, expr)
        structure = decompose(row["problem"], text)
        if structure.errors:
            continue
        yield {"id": f"{row['id']}/student", "problem": row["problem"], "reasoning": text, "domain": domain,
               "target": format_structure(structure), "annotator": ANNOTATOR}


def main() -> None:
    from rlkd_ray.config import load_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/arith_gsrm_sft.yaml")
    p.add_argument("--skip", type=int, default=1000, help="leave out the first train problems")
    p.add_argument("--n", type=int, default=4000, help="train problems to take after them")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", help="default: the config's sft.annotations")
    args = p.parse_args()
    cfg = load_config(args.config)
    if cfg.data.train.kind != "arith":
        raise SystemExit(f"{args.config}: data.train.kind is {cfg.data.train.kind!r}; these pairs are of the arith domain")
    rows = arith.split_rows(cfg.data.arith, "train")
    if args.skip + args.n > len(rows):
        raise SystemExit(f"--skip {args.skip} + --n {args.n} > the {len(rows)} train problems (data.arith.train_size)")
    out = Path(args.output or cfg.sft.annotations or cfg.annotate.output)
    records = list(pairs(rows[args.skip:args.skip + args.n], args.seed, cfg.reward.domain))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tmp.replace(out)
    teacher = sum(r["id"].endswith("/teacher") for r in records)
    print(f"{len(records)} pairs ({teacher} teacher traces, {len(records) - teacher} student-like paths of "
          f"{args.n} problems) -> {out}")


if __name__ == "__main__":
    main()
