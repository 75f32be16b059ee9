"""Reliability scenarios: a test that takes the `scenario` fixture records the fault or bad input it
tried, what survived and what was lost (which must be nothing, or only the bad input itself, counted),
with its numbers. Each record lands as one JSON file in `$RLKD_RELIABILITY_RESULTS` (default
`runs/reliability/`), with the test's outcome; `scripts/reliability_table.py` renders the records
into `docs/reliability.md` (`make reliability-doc`). Every such test is also marked `reliability`,
so `pytest -m reliability` runs them all.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Dict, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
RESULTS_ENV = "RLKD_RELIABILITY_RESULTS"
AREAS = ("fault", "bad input", "security", "load")


def results_dir() -> Path:
    return Path(os.environ.get(RESULTS_ENV) or REPO / "runs" / "reliability")


def record_path(nodeid: str) -> Path:
    return results_dir() / (re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid) + ".json")


class Scenario:
    def __init__(self) -> None:
        self.fields: Optional[Dict[str, Any]] = None

    def record(self, area: str, scenario: str, survived: str, lost: str = "nothing", **numbers: Any) -> None:
        """What this test tried (`scenario`, in `area`), what survived, what was lost, and the numbers
        that show it (counters, sizes, seconds)."""
        if area not in AREAS:
            raise ValueError(f"scenario area {area!r}; choose one of {', '.join(AREAS)}")
        self.fields = {"area": area, "scenario": scenario, "survived": survived, "lost": lost, "numbers": numbers}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or report.outcome != "passed":
        item.stash.setdefault(_REPORTS, {})[report.when] = report


_REPORTS = pytest.StashKey[Dict[str, Any]]()


def pytest_collection_modifyitems(items):
    for item in items:
        if "scenario" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def scenario(request):
    """Record a reliability scenario: `scenario.record(area, scenario, survived, lost, **numbers)`."""
    s = Scenario()
    start = time.perf_counter()
    yield s
    reports = request.node.stash.get(_REPORTS, {})
    failed = next((r for r in reports.values() if r.outcome == "failed"), None)
    skipped = next((r for r in reports.values() if r.outcome == "skipped"), None)
    outcome = "failed" if failed else "skipped" if skipped else "passed"
    if outcome == "skipped":
        return  # a skipped test leaves the record of its last run (or none) in place
    path = record_path(request.node.nodeid)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = s.fields or {"area": "", "scenario": "", "survived": "", "lost": "", "numbers": {}}
    path.write_text(json.dumps({"test": request.node.nodeid, "outcome": outcome,
                                "seconds": round(time.perf_counter() - start, 1), **fields}, indent=1) + "\n")
