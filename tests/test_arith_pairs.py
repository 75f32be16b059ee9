"""GSRM training pairs of the arithmetic domain (rlkd_ray/offline/arith_pairs.py)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from fractions import Fraction

from rlkd_ray.config import load_config
from rlkd_ray.data import arith
from rlkd_ray.gsrm import parse_structure
from rlkd_ray.gsrm.exact_judge import position, value_in
from rlkd_ray.gsrm.rule import decompose
from rlkd_ray.offline.arith_pairs import TEACHER_EVERY, pairs, student_like_path
from rlkd_ray.offline.sft import gsrm_example

CFG = load_config("conf/arith_gsrm_sft.yaml")
ROWS = arith.split_rows(CFG.data.arith, "train")[1000:1300]


def test_pairs_are_deterministic_and_every_target_trains():
    records = list(pairs(ROWS, 0, "math"))
    assert records == list(pairs(ROWS, 0, "math"))
    assert records != list(pairs(ROWS, 1, "math"))
    for r in records:  # the same check `rlkd sft` makes when it reads the annotations
        gsrm_example(r["id"], r["problem"], r["reasoning"], r["target"], "math", 0)
    teacher = [r for r in records if r["id"].endswith("/teacher")]
    assert len(teacher) == len(ROWS) // TEACHER_EVERY
    assert all(r["target"] == row["teacher_structure"] for r, row in zip(teacher, ROWS[::TEACHER_EVERY]))
    student = [r for r in records if r["id"].endswith("/student")]
    assert len(student) > len(ROWS) / 2  # paths without a final answer or a step are left out, not most
    for r in student:
        assert parse_structure(r["target"]).steps == decompose(r["problem"], r["reasoning"]).steps


def test_student_like_paths_hold_the_slips_a_student_makes():
    rng = random.Random(0)
    wrong_value = out_of_order = unmatched = 0
    for row in ROWS:
        expr = arith.normalized_expression(row["problem"])
        teacher = [position(s.meta) for s in parse_structure(row["teacher_structure"]).steps]
        steps = decompose(row["problem"], student_like_path(rng, expr)).steps
        for s in steps:
            a, op, b = s.query.replace("(", "").replace(")", "").rsplit(" ", 2)
            exact = arith.apply(op, Fraction(a), Fraction(b))
            wrong_value += exact is not None and value_in(s.answer) != exact
            unmatched += position(s.meta) == 0
        out_of_order += bool(steps) and position(steps[0].meta) != teacher[0]
    assert wrong_value > 20 and out_of_order > 10 and unmatched > 5, (wrong_value, out_of_order, unmatched)


def test_the_command_writes_the_annotations_and_refuses_more_problems_than_there_are(tmp_path):
    out = tmp_path / "pairs.jsonl"
    cmd = [sys.executable, "-m", "rlkd_ray.offline.arith_pairs", "--config", "conf/arith_gsrm_sft.yaml",
           "--output", str(out), "--skip", "10"]
    done = subprocess.run(cmd + ["--n", "20"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    train_ids = {r["id"] for r in arith.split_rows(CFG.data.arith, "train")[10:30]}
    assert records and {r["id"].rsplit("/", 1)[0] for r in records} <= train_ids
    done = subprocess.run(cmd + ["--n", "999999"], capture_output=True, text=True)
    assert done.returncode != 0 and "train problems" in done.stderr and not list(tmp_path.glob("*.tmp"))
