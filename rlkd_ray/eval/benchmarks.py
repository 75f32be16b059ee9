"""Benchmarks: a file (or a packaged split) plus a column mapping and an answer layout.

A benchmark is named on the command line as `math500`, `gsm8k` (packaged), `arith_test`,
`arith_hard` (generated from `data.arith`) or `PATH[:key=value...]`, e.g.

    aime24.jsonl:layout=aime                       integer answers (columns problem, answer)
    gpqa_diamond.csv:layout=gpqa                   GPQA's own columns (Question, Correct Answer, ...)
    mmlu.parquet:layout=choice:choices=choices     a list of options; answer = letter, index or text
    my.jsonl:name=mine:problem=question:answer=final

Keys: name, layout (math | integer | choice, or the presets aime | gpqa), id, problem, answer,
choices, correct, incorrect (columns separated by `|`). A column is matched exactly, else by a unique
case-insensitive match. Layouts:

- math: the gold is LaTeX, scored by math-verify against the last boxed answer.
- integer (AIME): the gold is an integer; the boxed answer must be the same integer.
- choice (GPQA): options are shown as `A) ...`; the boxed answer must be the gold letter. With
  `correct` + `incorrect` columns the options are shuffled by a hash of the problem id (fixed).
"""

from __future__ import annotations

import csv
import hashlib
import random
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from rlkd_ray.config import ArithConfig
from rlkd_ray.data import BadRow, DataError, eval_split
from rlkd_ray.data.arith import ARITH_SPLITS
from rlkd_ray.data.readers import read_file
from rlkd_ray.rewards.rules import Accuracy, accuracy_reward, extract_answer

PACKAGED = ("math500", "gsm8k") + ARITH_SPLITS
LAYOUTS = ("math", "integer", "choice")
PRESETS: Dict[str, Dict[str, Any]] = {
    "aime": {"layout": "integer"},
    "gpqa": {"layout": "choice", "problem": "Question", "correct": "Correct Answer",
             "incorrect": ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")},
}
SPEC_KEYS = ("name", "layout", "id", "problem", "answer", "choices", "correct", "incorrect")
CHOICE_INSTRUCTION = "Answer with the letter of the correct option in \\boxed{}."


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    path: Optional[str]  # None = a packaged split
    layout: str = "math"
    id: Optional[str] = None  # None = the row number
    problem: str = "problem"
    answer: str = "answer"
    choices: Optional[str] = None  # a column holding the list of options
    correct: Optional[str] = None  # or: the correct option's column ...
    incorrect: Tuple[str, ...] = ()  # ... and the wrong options' columns


@dataclass
class EvalProblem:
    id: str
    problem: str  # the user message (with the lettered options for layout choice)
    answer: str  # the gold: LaTeX (math), an integer (integer), a letter (choice)


@dataclass
class Benchmark:
    spec: BenchmarkSpec
    source: str  # where the problems came from
    problems: List[EvalProblem]
    left_out: Dict[str, int] = field(default_factory=dict)  # reason -> problems not evaluated

    @property
    def name(self) -> str:
        return self.spec.name

    def score(self, completion: str, gold: str) -> Accuracy:
        return SCORERS[self.spec.layout](completion, gold)


def parse_benchmark_spec(text: str) -> BenchmarkSpec:
    """`math500` | `gsm8k` | `PATH[:key=value...]` (see the module docstring)."""
    head, *pairs = text.strip().split(":")
    if not head:
        raise DataError(f"benchmark {text!r}: no name or file")
    if head in PACKAGED:
        if pairs:
            raise DataError(f"benchmark {text!r}: packaged benchmark {head!r} takes no options")
        return BenchmarkSpec(name=head, path=None)
    options: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in SPEC_KEYS or not value:
            raise DataError(f"benchmark {text!r}: {pair!r} is not key=value with a key of {', '.join(SPEC_KEYS)}")
        options[key] = tuple(value.split("|")) if key == "incorrect" else value
    layout = options.pop("layout", "math")
    preset = PRESETS.get(layout, {"layout": layout})
    options = {**preset, **options}
    if options["layout"] not in LAYOUTS:
        raise DataError(f"benchmark {text!r}: layout {layout!r} is not one of {', '.join(LAYOUTS + tuple(PRESETS))}")
    options.setdefault("name", Path(head).name.split(".")[0])
    spec = BenchmarkSpec(path=head, **options)
    if spec.layout == "choice" and not spec.choices and not (spec.correct and spec.incorrect):
        raise DataError(f"benchmark {text!r}: layout choice needs choices=COLUMN or correct=COLUMN:incorrect=A|B|C")
    return spec


def load_benchmark(spec: BenchmarkSpec, limit: Optional[int] = None,
                   arith_cfg: Optional[ArithConfig] = None) -> Benchmark:
    """The first `limit` problems of a benchmark; a bad row raises an error naming file, row and field.
    `arith_cfg` (`data.arith`; None = its defaults) generates `arith_test` and `arith_hard`."""
    if limit is not None and limit < 1:
        raise DataError(f"benchmark {spec.name}: limit must be >= 1, got {limit}")
    if spec.path is None:
        rows = eval_split(spec.name, arith_cfg)
        if limit is not None:
            rows = rows.select(range(min(limit, len(rows))))
        problems, source = [EvalProblem(r["id"], r["problem"], r["answer"]) for r in rows], f"packaged:{spec.name}"
    else:
        problems, source = _read_problems(spec, limit), spec.path
    left_out = {}
    if spec.layout == "math":  # a gold math-verify cannot parse would score every completion as wrong
        scorable = [p for p in problems if accuracy_reward("", p.answer).score is not None]
        left_out["unscorable_gold"] = len(problems) - len(scorable)
        problems = scorable
    if not problems:
        raise DataError(f"benchmark {spec.name} ({source}): no problems to evaluate")
    return Benchmark(spec, source, problems, left_out)


# -- files -----------------------------------------------------------------------------------------
def _records(path: Path) -> Iterator[Tuple[int, Any]]:
    if not path.is_file():
        raise DataError(f"benchmark file {path} not found (packaged benchmarks: {', '.join(PACKAGED)})")
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            yield from enumerate(csv.DictReader(f), start=1)
    else:
        yield from read_file(path).rows


def _column(record: Dict[str, Any], column: str, where: str) -> str:
    """The record's key for `column`: exact, else the one key equal to it ignoring case."""
    if column in record:
        return column
    folded = [k for k in record if k.lower() == column.lower()]
    if len(folded) == 1:
        return folded[0]
    raise BadRow(f"{where}: field '{column}' is missing (fields: {', '.join(map(str, record))})")


def _value(record: Any, column: str, where: str) -> Any:
    if isinstance(record, BadRow):
        raise record
    if not isinstance(record, dict):
        raise BadRow(f"{where}: expected an object, got {type(record).__name__}")
    value = record[_column(record, column, where)]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadRow(f"{where}: field '{column}' is empty")
    return value


def _text(record: Any, column: str, where: str) -> str:
    value = _value(record, column, where)
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise BadRow(f"{where}: field '{column}' has type {type(value).__name__}, expected text")
    return str(value).strip()


def _read_problems(spec: BenchmarkSpec, limit: Optional[int]) -> List[EvalProblem]:
    problems: List[EvalProblem] = []
    seen: Dict[str, str] = {}
    for row_no, record in _records(Path(spec.path).expanduser()):
        if limit is not None and len(problems) >= limit:
            break
        where = f"{spec.path} row {row_no}"
        pid = _text(record, spec.id, where) if spec.id else str(row_no)
        if pid in seen:
            raise BadRow(f"{where}: field '{spec.id}' value {pid!r} repeats {seen[pid]}")
        seen[pid] = where
        question = _text(record, spec.problem, where)
        if spec.layout == "choice":
            options, gold = _options(spec, record, pid, where)
            problems.append(EvalProblem(pid, _choice_prompt(question, options), gold))
        elif spec.layout == "integer":
            gold = _text(record, spec.answer, where)
            value = as_integer(gold)
            if value is None:
                raise BadRow(f"{where}: field '{spec.answer}' is {gold!r}, not an integer (layout integer)")
            problems.append(EvalProblem(pid, question, str(value)))
        else:
            problems.append(EvalProblem(pid, question, _text(record, spec.answer, where)))
    return problems


def _options(spec: BenchmarkSpec, record: Any, pid: str, where: str) -> Tuple[List[str], str]:
    """The options in display order and the gold letter."""
    if spec.choices:
        options = _value(record, spec.choices, where)
        if not isinstance(options, (list, tuple)) or not all(isinstance(o, str) for o in options):
            raise BadRow(f"{where}: field '{spec.choices}' must be a list of strings")
        options = [o.strip() for o in options]
        if not 2 <= len(options) <= 26:
            raise BadRow(f"{where}: field '{spec.choices}' has {len(options)} options, expected 2 to 26")
        return options, _gold_letter(_value(record, spec.answer, where), options, spec.answer, where)
    correct = _text(record, spec.correct, where)
    options = [correct] + [_text(record, c, where) for c in spec.incorrect]
    random.Random(int.from_bytes(hashlib.sha256(pid.encode()).digest()[:8], "little")).shuffle(options)
    return options, string.ascii_uppercase[options.index(correct)]


def _gold_letter(answer: Any, options: List[str], column: str, where: str) -> str:
    """A letter (`B`), a 0-based index (`1`, as a number) or the text of an option."""
    letters = string.ascii_uppercase[: len(options)]
    if isinstance(answer, int) and not isinstance(answer, bool):
        if 0 <= answer < len(options):
            return letters[answer]
    elif isinstance(answer, str):
        text = answer.strip()
        if len(text) == 1 and text.upper() in letters:
            return text.upper()
        if text in options:
            return letters[options.index(text)]
    raise BadRow(f"{where}: field '{column}' is {answer!r}: not a letter {letters[0]}-{letters[-1]}, "
                 f"a 0-based index or the text of an option")


def _choice_prompt(question: str, options: List[str]) -> str:
    lines = [f"{letter}) {option}" for letter, option in zip(string.ascii_uppercase, options)]
    return f"{question}\n\n" + "\n".join(lines) + f"\n\n{CHOICE_INSTRUCTION}"


# -- scoring ---------------------------------------------------------------------------------------
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\{([^{}]*)\}")
_NOISE = re.compile(r"\$|\\[,!;]|\{,\}|\s")
_INTEGER = re.compile(r"([+-]?\d+)(?:\.0*)?")
_LETTER = re.compile(r"\(?([A-Za-z])\)?[.:]?|\(?([A-Z])[).:]\s+\S.*", re.DOTALL)


def _plain(answer: str) -> str:
    """A boxed answer without `\\text{}`-like wrappers, `$`, LaTeX spaces and whitespace."""
    return _NOISE.sub("", _TEXT_WRAP.sub(r"\1", answer))


def as_integer(answer: str) -> Optional[int]:
    """`033`, `1,000`, `\\text{12}`, `7.0` → an int; anything else → None."""
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", _plain(answer))
    match = _INTEGER.fullmatch(text)
    return int(match.group(1)) if match else None


def _boxed_score(completion: str, gold, read: Callable[[str], Any], what: str) -> Accuracy:
    """1.0 iff the last boxed answer, read by `read` (None: not a `what`), equals `gold`."""
    predicted = extract_answer(completion)
    if predicted is None:
        return Accuracy(0.0, None, "no \\boxed{} answer in the completion")
    value = read(predicted)
    if value is None:
        return Accuracy(0.0, predicted, f"boxed answer is not {what}")
    if value != gold:
        return Accuracy(0.0, predicted, "boxed answer differs from the gold")
    return Accuracy(1.0, predicted, None)


def integer_score(completion: str, gold: str) -> Accuracy:
    """1.0 iff the last boxed answer is the gold integer (AIME-style answers)."""
    return _boxed_score(completion, int(gold), as_integer, "an integer")


def choice_letter(answer: str) -> Optional[str]:
    """`B`, `(B)`, `b.`, `\\text{B}`, `B) its text` → `B`; anything else → None."""
    match = _LETTER.fullmatch(_TEXT_WRAP.sub(r"\1", answer).replace("$", "").strip())
    return (match.group(1) or match.group(2)).upper() if match else None


def choice_score(completion: str, gold: str) -> Accuracy:
    """1.0 iff the last boxed answer names the gold option letter (GPQA-style multiple choice)."""
    return _boxed_score(completion, gold, choice_letter, "an option letter")


SCORERS = {"math": accuracy_reward, "integer": integer_score, "choice": choice_score}
