"""The arithmetic domain: gold answers against Python's own evaluation, the school-order teacher,
determinism from the seed, disjoint splits, varied phrasings, exact teacher structures, wiring."""

from __future__ import annotations

import random
import re
from dataclasses import replace
from fractions import Fraction

import pytest

from rlkd_ray.config import ArithConfig, ConfigError, DataConfig, SourceConfig, load_config
from rlkd_ray.data import arith, build_source, eval_split, load_split, prepare_data
from rlkd_ray.data.sources import FEATURES
from rlkd_ray.gsrm.exact_judge import exact_verdicts, rule_structure_score
from rlkd_ray.gsrm.parser import parse_structure
from rlkd_ray.gsrm.reward import judge_requests, score_from_verdicts
from rlkd_ray.gsrm.rule import decompose

SMALL = ArithConfig(seed=7, train_size=300, test_size=120, hard_size=60)


def python_value(expr: str) -> Fraction:
    """Python's own evaluation (its parser's precedence and associativity), exact: every literal a Fraction."""
    return eval(re.sub(r"\d+", lambda m: f"Fraction({m.group(0)})", expr), {"Fraction": Fraction})


@pytest.fixture(scope="module")
def splits():
    return arith.build_splits(ArithConfig())


def test_gold_answers_equal_python_eval_for_thousands_of_expressions():
    rng = random.Random(2026)
    checked = 0
    for n_ops in range(1, 7):
        for digits in (1, 2, 3):
            for depth in (0, 1, 2, 3):
                for _ in range(40):
                    expr = arith.random_expression(rng, n_ops, digits, depth)
                    value = arith.evaluate(expr)
                    assert value == python_value(expr), expr
                    assert value.denominator == 1, expr
                    if n_ops <= 3 and digits == 1:  # small enough for floats to be exact
                        assert value == eval(expr), expr
                    checked += 1
    assert checked == 6 * 3 * 4 * 40


def test_random_expression_respects_its_knobs():
    rng = random.Random(5)
    for n_ops, digits, depth in [(1, 1, 0), (3, 1, 0), (4, 2, 1), (6, 3, 2)]:
        for _ in range(100):
            expr = arith.random_expression(rng, n_ops, digits, depth)
            tokens = arith.tokenize(expr)
            assert sum(t.kind == "op" for t in tokens) == n_ops
            assert arith.paren_depth(expr) <= depth
            literals = [int(t.text) for t in tokens if t.kind == "num"]
            assert all(1 <= v < 10 ** digits for v in literals), expr
            # every intermediate value is an integer: all divisions are exact
            assert all(s.result.denominator == 1 for s in arith.school_order(expr)), expr


def test_the_expression_text_parses_back_to_the_values_and_form():
    for expr in ["3 + 4 * (5 - 2)", "8 - (3 - 2)", "2 * (3 + 4) / 7", "9 / 3 / 3", "1 - 2 - 3"]:
        assert arith.normalized_expression(f"Compute {expr.replace(' ', '')}.") == expr
        assert arith.evaluate(expr) == python_value(expr)
    assert arith.normalized_expression("no numbers here") is None
    assert arith.render(arith.tokenize("3 - -7 * (2)")) == "3 - (-7) * 2"


@pytest.mark.parametrize("expr, order, reasons", [
    # (operators of the problem in the teacher's order, why each: paren / before_lower / left / last)
    ("3 + 4 * (5 - 2)", [3, 2, 1], ["paren", "before_lower", "last"]),
    ("8 - 3 - 2", [1, 2], ["left", "last"]),
    ("8 / 2 * 3 + 1", [1, 2, 3], ["before_lower", "before_lower", "last"]),
    ("6 - 2 + 1 * 3", [3, 1, 2], ["before_lower", "left", "last"]),
    ("(1 + 2) * (3 + 4)", [1, 3, 2], ["paren", "paren", "last"]),
])
def test_the_teacher_takes_operations_in_school_order(expr, order, reasons):
    steps = arith.school_order(expr)
    assert [s.index for s in steps] == order
    why = []
    for s in steps:
        c = s.choice
        why.append("paren" if c.in_parentheses else "before_lower" if c.before_lower
                   else "left" if c.left_to_right else "last" if c.last else "?")
    assert why == reasons
    assert steps[-1].after == arith.format_value(python_value(expr))


def test_splits_are_deterministic_from_the_seed():
    a, b = arith.build_splits(SMALL), arith.build_splits(SMALL)
    assert a == b
    other = arith.build_splits(replace(SMALL, seed=8))
    assert a["arith_test"] != other["arith_test"] and a["train"] != other["train"]
    # eval splits do not depend on the train size
    bigger = arith.build_splits(replace(SMALL, train_size=500))
    assert bigger["arith_test"] == a["arith_test"] and bigger["arith_hard"] == a["arith_hard"]


def test_eval_splits_never_overlap_train_and_have_their_sizes(splits):
    cfg = ArithConfig()
    train, test, hard = (arith.expressions(splits[k]) for k in ("train", "arith_test", "arith_hard"))
    assert len(splits["arith_test"]) == cfg.test_size >= 1000
    assert len(splits["arith_hard"]) == cfg.hard_size and len(splits["train"]) == cfg.train_size
    assert len(train) == cfg.train_size and len(test) == cfg.test_size and len(hard) == cfg.hard_size  # distinct
    assert None not in train | test | hard
    assert not train & test and not train & hard and not test & hard
    for name, (lo, hi) in [("train", (cfg.min_ops, cfg.ops)), ("arith_test", (cfg.min_ops, cfg.ops)),
                           ("arith_hard", (cfg.ops + 1, cfg.hard_ops))]:
        counts = {len(arith.school_order(arith.normalized_expression(r["problem"]))) for r in splits[name]}
        assert counts == set(range(lo, hi + 1)), name


def test_a_space_too_small_for_the_split_sizes_is_an_error():
    with pytest.raises(ValueError, match="distinct problems"):
        arith.build_splits(ArithConfig(min_ops=1, ops=1, hard_ops=2, test_size=2000))


def test_teacher_phrasings_vary():
    metas, queries, answers, reasoning = set(), set(), set(), set()
    for seed in range(200):
        for t in arith.teacher_steps(random.Random(seed), "3 + 4 * (5 - 2)"):
            metas.add(t.meta.replace("4 * 3", "X").replace("5 - 2", "X").replace("3 + 12", "X"))
            queries.add(re.sub(r"[\d+*() -]+", "X", t.query))
            answers.add(re.sub(r"[\d+*=() -]+", "X", t.answer))
        reasoning.add(arith.teacher_solution(random.Random(seed), "3 + 4 * (5 - 2)")[0])
    assert len(queries) >= 5 and len(answers) >= 5 and len(metas) >= 5 * 3
    assert len(reasoning) > 150  # the teacher text is not one fixed string


def test_teacher_structure_is_the_program_steps_exactly(splits):
    for row in splits["arith_test"][:300] + splits["arith_hard"][:100]:
        expr = arith.normalized_expression(row["problem"])
        structure = parse_structure(row["teacher_structure"])
        program = arith.school_order(expr)
        assert structure.errors == []
        assert structure.final_answer == row["answer"] == arith.format_value(python_value(expr))
        assert len(structure.steps) == len(program)
        for step, op in zip(structure.steps, program):
            sub = arith.operation_text(op.op, op.a, op.b)
            assert step.meta.endswith(arith.position_marker(op.index))
            assert sub in step.meta and sub in step.query
            assert step.answer == arith.format_value(op.result)
            assert f"{sub} = {step.answer}" in row["teacher_reasoning"] or \
                f"{sub} equals {step.answer}" in row["teacher_reasoning"]


def test_the_teacher_reasoning_read_by_the_rule_decomposer_gives_the_teacher_structure(splits):
    for row in splits["arith_test"][:300]:
        teacher = parse_structure(row["teacher_structure"])
        student = decompose(row["problem"], row["teacher_reasoning"])
        assert [s.query for s in student.steps] == [arith.normalized_expression(s.query) for s in teacher.steps]
        assert [s.answer for s in student.steps] == [s.answer for s in teacher.steps]
        assert [s.meta[s.meta.rfind("("):] for s in student.steps] == \
            [s.meta[s.meta.rfind("("):] for s in teacher.steps]


def test_the_structure_reward_of_the_teacher_against_itself_is_maximal(splits):
    for row in splits["arith_test"][:200]:
        teacher = parse_structure(row["teacher_structure"])
        requests = judge_requests(teacher, teacher)
        verdicts = exact_verdicts(requests)
        assert verdicts and all(v is True for v in verdicts)
        score = score_from_verdicts(teacher, teacher, requests, verdicts)
        assert score.total == len(teacher.steps) and score.per_step == [1.0] * len(teacher.steps)
        assert score_from_verdicts(teacher, teacher, requests, verdicts, normalize=True).total == 1.0
        assert rule_structure_score(row["problem"], row["teacher_structure"], row["teacher_reasoning"]).total \
            == len(teacher.steps)


def test_gold_answers_are_graded_by_the_accuracy_reward(splits):
    from rlkd_ray.rewards.rules import accuracy_reward

    for row in splits["arith_test"][:20]:
        gold = row["answer"]
        assert accuracy_reward(f"<think>\nx\n</think>\n<answer>\n\\boxed{{{gold}}}\n</answer>", gold).score == 1.0
        assert accuracy_reward(f"\\boxed{{{int(gold) + 1}}}", gold).score == 0.0


def test_data_train_kind_arith_builds_the_schema_and_prepares(tmp_path):
    dataset, stats = build_source(SourceConfig(kind="arith", limit=100), arith_cfg=SMALL)
    assert dataset.features == FEATURES and len(dataset) == 100 == stats.kept
    assert dataset[0]["problem"].startswith("Compute ") and dataset[0]["teacher_structure"]
    test = eval_split("arith_test", SMALL)
    assert len(test) == SMALL.test_size and test.features == FEATURES
    assert not arith.expressions(dataset) & arith.expressions(test)

    cfg = DataConfig(name="arith", train=SourceConfig(kind="arith"), eval=["arith_test", "arith_hard"], arith=SMALL)
    prepared = prepare_data(cfg, tmp_path)
    assert prepared.rows == {"train": 300, "arith_test": 120, "arith_hard": 60}
    hard = [r["problem"] for r in arith.build_splits(SMALL)["arith_hard"]]
    assert load_split(tmp_path, cfg, "arith_hard")["problem"] == hard
    assert not prepare_data(replace(cfg, arith=replace(SMALL, seed=9)), tmp_path).reused  # knobs are in the key


def test_arith_benchmarks_and_config():
    from rlkd_ray.eval.benchmarks import load_benchmark, parse_benchmark_spec

    bench = load_benchmark(parse_benchmark_spec("arith_test"), limit=10, arith_cfg=SMALL)
    assert bench.name == "arith_test" and len(bench.problems) == 10 and bench.left_out["unscorable_gold"] == 0
    assert bench.score(f"\\boxed{{{bench.problems[0].answer}}}", bench.problems[0].answer).score == 1.0

    cfg = load_config(overrides=["data.train.kind=arith", "data.arith.ops=4", "trainer.eval_benchmarks=[arith_test]"])
    assert cfg.data.train.kind == "arith" and cfg.data.arith.ops == 4
    for bad in ("data.arith.min_ops=0", "data.arith.hard_ops=3", "data.arith.digits=0", "data.arith.test_size=0"):
        with pytest.raises(ConfigError, match="data.arith"):
            load_config(overrides=[bad])


def test_every_knob_of_arith_config_reaches_the_generator():
    import dataclasses

    assert arith._Knobs._fields == tuple(f.name for f in dataclasses.fields(ArithConfig))
    assert arith.split_rows(SMALL, "arith_hard") == arith.build_splits(SMALL)["arith_hard"]
    assert arith.split_rows(replace(SMALL, digits=2), "arith_hard") != arith.split_rows(SMALL, "arith_hard")


def test_check_disjoint_raises_on_a_shared_expression():
    rows = arith.build_splits(SMALL)
    arith.check_disjoint(rows)
    unspaced = arith.normalized_expression(rows["arith_test"][3]["problem"]).replace(" ", "")
    leaked = dict(rows, train=rows["train"] + [dict(rows["arith_test"][3], problem=f"Compute {unspaced}.")])
    with pytest.raises(ValueError, match="is also in train"):
        arith.check_disjoint(leaked)
