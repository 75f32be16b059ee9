"""docs/reliability.md is generated from the scenario tests' records (scripts/reliability_table.py):
the committed page lists every scenario test that exists, and the renderer puts each record in its
area's table and every test that did not run in a table of its own."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def table_script():
    spec = importlib.util.spec_from_file_location("reliability_table", REPO / "scripts" / "reliability_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_page_lists_every_scenario_test():
    script = table_script()
    tests = script.scenario_tests()
    assert len(tests) >= 10 and "tests/test_bad_input.py::test_unreadable_and_empty_files_name_the_file" in tests
    page = (REPO / "docs" / "reliability.md").read_text()
    missing = [t for t in tests if f"`{t}`" not in page and f"`{t}[" not in page]
    assert missing == [], f"docs/reliability.md lacks {missing}; run `make reliability-doc`"


def test_render_puts_records_by_area_and_lists_tests_not_run():
    script = table_script()
    tests = {"tests/test_a.py::test_x": "x doc", "tests/test_a.py::test_y": "y doc", "tests/test_b.py::test_z": "z doc"}
    records = [
        {"test": "tests/test_a.py::test_x[1]", "outcome": "passed", "seconds": 1.5, "area": "fault",
         "scenario": "a worker | killed", "survived": "the step", "lost": "nothing", "numbers": {"resent": 2}},
        {"test": "tests/test_b.py::test_z", "outcome": "failed", "seconds": 0.1, "area": "", "scenario": "",
         "survived": "", "lost": "", "numbers": {}},
        {"test": "tests/test_gone.py::test_old", "outcome": "passed", "seconds": 1, "area": "fault", "scenario": "old",
         "survived": "", "lost": "", "numbers": {}},
    ]
    page = script.render(tests, records)
    faults = page.split("## Faults")[1].split("##")[0]
    assert "| a worker \\| killed | `tests/test_a.py::test_x[1]` | the step | nothing | resent=2 | passed (1.5 s) |" in faults
    rest = page.split("## Not run here, or failed before recording")[1]
    assert "| y doc | `tests/test_a.py::test_y` | | | | not run |" in rest
    assert "| z doc | `tests/test_b.py::test_z` |" in rest and "failed (0.1 s)" in rest
    assert "test_old" not in page  # a record of a test that no longer exists is dropped
