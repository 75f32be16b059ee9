"""The rule decomposer and the exact judge: real student phrasings, wrong and skipped steps, garbage,
empty text, per-field verdicts, and the full structure reward through reward.py's functions."""

from __future__ import annotations

import random
import time
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlkd_ray.data import arith
from rlkd_ray.gsrm.exact_judge import (
    exact_judge,
    exact_verdicts,
    operation_in,
    position,
    rule_structure_score,
    value_in,
    verdict,
)
from rlkd_ray.gsrm.parser import parse_structure
from rlkd_ray.gsrm.reward import judge_requests, score_from_verdicts, structure_reward
from rlkd_ray.gsrm.rule import decompose, operations

PROBLEM = "Compute 3 + 4 * (5 - 2)."
TEACHER_TEXT = arith.teacher_solution(random.Random(0), "3 + 4 * (5 - 2)")[1]
TEACHER = parse_structure(TEACHER_TEXT)
RIGHT = [("5 - 2", "3", 3), ("4 * 3", "12", 2), ("3 + 12", "15", 1)]  # query, answer, operator of the problem


def steps_of(text: str, problem: str = PROBLEM):
    s = decompose(problem, text)
    return [(x.query, x.answer, position(x.meta)) for x in s.steps], s.final_answer


@pytest.mark.parametrize("text, final", [
    # the style SmolLM2-135M-Instruct writes unprompted
    ("5 - 2 = 3\n4 * 3 = 12\n3 + 12 = 15", None),
    ("5-2=3\n4*3=12\n3+12=15\nSo the answer is 15.", "15"),
    ("To solve this, we follow the order of operations (PEMDAS).\n\n1. First, the parentheses: 5 - 2 = 3\n"
     "2. Then multiply: 4 * 3 = 12\n3. Finally, add: 3 + 12 = 15\n\nSo, the answer is 15.", "15"),
    ("Step 1: 5 - 2 = 3.\nStep 2: 4 × 3 = 12.\nStep 3: 3 + 12 = 15.\n\\boxed{15}", "15"),
    ("5 − 2 = 3, then 4 ⋅ 3 = 12, then 3 + 12 = 15", None),
    ("$5 - 2 = 3$, $4 \\times 3 = 12$, $3 + 12 = 15$. The final answer is $\\boxed{15}$.", "15"),
    ("5 minus 2 is 3. 4 times 3 equals 12. 3 plus 12 is equal to 15. The answer is 15", "15"),
    ("Subtract 2 from 5 to get 3. Multiply 4 by 3 to get 12. Add 3 and 12 to get 15.", None),
    ("The difference of 5 and 2 is 3, the product of 4 and 3 is 12, and the sum of 3 and 12 is 15.", None),
    ("- 5 - 2 = 3\n- 4 x 3 = 12\n- 3 + 12 = 15\nAnswer: 15", "15"),
    ("3 + 4 * (5 - 2) = 3 + 4 * 3 = 3 + 12 = 15", None),
    ("First (5 - 2) = 3. Now we have 3 + 4 * 3. Since multiplication comes first, 4 * 3 = 12, "
     "which gives 3 + 12. Then 3 + 12, which is 15. **The answer is 15**", "15"),
])
def test_real_phrasings_give_the_three_operations(text, final):
    steps, answer = steps_of(text)
    assert steps == RIGHT
    assert answer == final
    assert rule_structure_score(PROBLEM, TEACHER_TEXT, text).total == 3.0


def test_operands_of_plus_and_times_in_the_other_order_take_the_same_operators():
    text = "5 - 2 = 3\n3 * 4 = 12\n12 + 3 = 15"
    steps, _ = steps_of(text)
    assert steps == [("5 - 2", "3", 3), ("3 * 4", "12", 2), ("12 + 3", "15", 1)]
    assert rule_structure_score(PROBLEM, TEACHER_TEXT, text).total == 3.0
    # not for - and /: 2 - 5 is no operation of the problem
    assert steps_of("2 - 5 = -3")[0] == [("2 - 5", "-3", 0)]


def test_numbers_with_signs_thousands_and_division_words():
    assert [(a.text, o.text, b.text, c.text) for a, o, b, c in operations(
        "3 - 10 = -7; -7 + 2 = -5. 1,200 / 4 = 300 and 12 divided by 4 is 3, 7 − −2 = 9, 12 ÷ 4 = 3")] == [
        ("3", "-", "10", "-7"), ("-7", "+", "2", "-5"), ("1200", "/", "4", "300"), ("12", "/", "4", "3"),
        ("7", "-", "-2", "9"), ("12", "/", "4", "3")]
    steps, _ = steps_of("4 * 2 = 8\n3 - 8 = -5\n-5 - 1 = -6", "Compute 3 - 4 * 2 - 1.")
    assert steps == [("4 * 2", "8", 2), ("3 - 8", "-5", 1), ("-5 - 1", "-6", 3)]


@pytest.mark.parametrize("text", ["The answer is -6.", "answer: -6", "Answer = -6", "the answer is: -6"])
def test_a_negative_final_answer_keeps_its_sign(text):
    assert decompose("Compute 3 - 4 * 2 - 1.", text).final_answer == "-6"


def test_a_wrong_result_is_carried_forward_and_the_structure_reward_gates_and_halves():
    steps, answer = steps_of("5 - 2 = 3\n4 * 3 = 13\n3 + 13 = 16\nSo the answer is 16.")
    assert steps == [("5 - 2", "3", 3), ("4 * 3", "13", 2), ("3 + 13", "16", 1)]  # same nodes, wrong values
    student = decompose(PROBLEM, "5 - 2 = 3\n4 * 3 = 13\n3 + 13 = 16\nSo the answer is 16.")
    requests = judge_requests(TEACHER, student)
    score = score_from_verdicts(TEACHER, student, requests, exact_verdicts(requests))
    assert score.judgements == [
        {"meta": True, "query": True, "answer": True},
        {"meta": True, "query": True, "answer": False},
        {"meta": True, "query": False, "answer": False},
    ]
    assert score.per_step == [1.0, 0.5, 0.25] and score.total == 1.75 and score.judge_non_answers == 0
    assert structure_reward(TEACHER, student, exact_judge).total == 1.75


def test_a_wrong_order_closes_the_gate_at_its_step():
    text = "5 - 2 = 3\n3 + 4 = 7\n7 * 3 = 21\nThe answer is 21"
    steps, _ = steps_of(text)
    assert steps == [("5 - 2", "3", 3), ("3 + 4", "7", 0), ("7 * 3", "21", 0)]  # 3 + 4 is not ready
    score = rule_structure_score(PROBLEM, TEACHER_TEXT, text)
    assert score.judgements[1] == {"meta": False, "query": False, "answer": False}
    assert score.per_step == [1.0, 0.0, 0.0] and score.total == 1.0
    # precedence ignored from the first step: nothing is earned
    assert rule_structure_score(PROBLEM, TEACHER_TEXT, "3 + 4 = 7\n7 * 3 = 21").total == 0.0


def test_a_skipped_step_shifts_the_alignment_and_later_steps_earn_nothing():
    text = "5 - 2 = 3\n3 + 12 = 15\nSo the answer is 15."  # 4 * 3 done silently
    steps, answer = steps_of(text)
    assert steps == [("5 - 2", "3", 3), ("3 + 12", "15", 0)] and answer == "15"
    score = rule_structure_score(PROBLEM, TEACHER_TEXT, text)
    assert score.per_step == [1.0, 0.0, 0.0] and score.teacher_steps == 3 and score.student_steps == 2


def test_a_whole_expression_equal_to_a_number_is_no_step():
    steps, answer = steps_of("3 + 4 * (5 - 2) = 15. So the answer is 15.")
    assert steps == [] and answer == "15"


@pytest.mark.parametrize("text", ["", "   \n ", "I don't know.", "asdf ((( = = 3 -- x", "= = =", "1 2 3 4",
                                  "(((((", "-", "The answer is", "\\boxed{}", "5 - = 3", "x = 3"])
def test_garbage_and_empty_text_give_no_steps(text):
    structure = decompose(PROBLEM, text)
    assert structure.steps == [] and "no operations found" in structure.errors
    score = rule_structure_score(PROBLEM, TEACHER_TEXT, text)
    assert score.total == 0.0 and score.reason == "student has no steps"


def test_no_text_and_no_problem_expression_are_handled():
    assert decompose(PROBLEM, None).steps == []
    s = decompose("What is the capital of France?", "4 * 3 = 12")
    assert [(x.query, x.answer, position(x.meta)) for x in s.steps] == [("4 * 3", "12", None)]
    assert s.errors[0].startswith("no arithmetic expression")


def test_exact_judge_meta():
    assert verdict("meta", "Parentheses first (operator 3 of the problem)", "Takes 5 - 2 (operator 3 of the problem)")
    assert verdict("meta", "x (operator 3 of the problem)", "y (operator 2 of the problem)") is False
    assert verdict("meta", "x (operator 3 of the problem)", "y (no operator of the problem)") is False
    assert verdict("meta", "x (operator 3 of the problem)", "takes 5 - 2 next") is None  # no operation in meta
    # without a position, the operations named in the metas are compared
    assert verdict("meta", "Parentheses first: 5 - 2 (operator 3 of the problem)", "Takes 5 - 2 next.") is True
    assert verdict("meta", "Parentheses first: 5 - 2", "Takes 3 + 4 next.") is False


def test_exact_judge_query():
    assert verdict("query", "What is 4 * 3?", "4 * 3") is True
    assert verdict("query", "Compute 4 * 3.", "3*4") is True  # either order for * and +
    assert verdict("query", "Find 5 - 2.", "2 - 5") is False
    assert verdict("query", "Find 6 / 2.", "6 / 3") is False
    assert verdict("query", "Find 6 / 2.", "6 * 2") is False
    assert verdict("query", "We need 9 - (-5).", "9 - -5") is True
    assert verdict("query", "Find 6 / 2.", "nothing") is None
    assert operation_in("So 4 × 3 = 12.") == (Fraction(4), "*", Fraction(3))


def test_exact_judge_answer():
    assert verdict("answer", "12", "12") is True
    assert verdict("answer", "12", "12.0") is True
    assert verdict("answer", "-3", "3") is False
    assert verdict("answer", "3", "5 - 2 = 3") is True
    assert verdict("answer", "1200", "1,200") is True
    assert verdict("answer", "3", "three") is None
    assert value_in("") is None
    with pytest.raises(ValueError):
        verdict("tone", "a", "b")


def test_judge_non_answers_are_counted_as_mismatches():
    from rlkd_ray.gsrm.parser import Step, Structure

    student = Structure([Step("hmm", "nothing", "unsure")], None, [])
    requests = judge_requests(TEACHER, student)
    score = score_from_verdicts(TEACHER, student, requests, exact_verdicts(requests))
    assert score.judge_non_answers == 3 and score.total == 0.0


def test_teacher_structures_of_every_phrasing_match_the_right_student():
    text = "5 - 2 = 3\n4 * 3 = 12\n3 + 12 = 15"
    for seed in range(50):
        teacher = arith.teacher_solution(random.Random(seed), "3 + 4 * (5 - 2)")[1]
        assert rule_structure_score(PROBLEM, teacher, text).total == 3.0
        assert rule_structure_score(PROBLEM, teacher, text, normalize=True).total == 1.0


def test_long_text_is_read_quickly():
    text = ("4 * 3 = 12 and some words " * 300) + ("1 + " * 3000) + "= 5"
    start = time.perf_counter()
    decompose(PROBLEM, text)
    assert time.perf_counter() - start < 5.0


_ARITH_CHARS = "0123456789+-*/()=xX×÷−–., \n$\\{}abisqwnrt*"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text(alphabet=_ARITH_CHARS, max_size=200)), st.text(max_size=60))
def test_random_text_never_raises(text, problem):
    for p in (PROBLEM, problem):
        structure = decompose(p, text)
        assert all(isinstance(f, str) for s in structure.steps for f in (s.meta, s.query, s.answer))
    for kind in ("meta", "query", "answer"):
        assert verdict(kind, text, problem) in (True, False, None)
        assert verdict(kind, TEACHER.steps[0].meta, text) in (True, False, None)
    score = rule_structure_score(PROBLEM, TEACHER_TEXT, text)
    assert 0.0 <= score.total <= 3.0


# Real greedy completions of SmolLM2-135M-Instruct on arith_test problems (the starting student):
# (problem, completion, [(query, answer, operator of the problem)], final answer, structure reward)
REAL = [
    ("Compute (6 + 8) * 4.",
     "To compute (6 + 8) * 4, we need to multiply 6 by 4 and then add 8. This is a classic example of a "
     "multiplication problem with a carry factor. To solve this problem, we can use the distributive property of "
     "multiplication over addition.\n\nFirst, we multiply 6 by 4: 6 * 4 = 12. Now we have 12 * 4 = 48.\n\nNext, "
     "we add 8 to this result: 12 + 8 = 20.\n\nSo, (6 + 8) * 4 = 12 * 4 = 48.\n\nThe answer is 48.",
     [("6 * 4", "12", 0), ("12 * 4", "48", 0), ("12 + 8", "20", 0), ("6 + 8", "12", 1), ("12 * 4", "48", 2)],
     "48", 0.0),
    ("Compute 5 * 4 + 7 * 8.",
     "To solve this problem, we need to follow the order of operations:\n\nFirst, we add 5 and 7, which gives us "
     "11.\nNext, we multiply 11 by 8, which gives us 88.\nFinally, we add 11 and 88, which gives us 100.\n\nSo, "
     "the answer is 100.",
     [("5 + 7", "11", 0), ("11 * 8", "88", 0), ("11 + 88", "100", 0)], "100", 0.0),
    ("Compute 9 - (2 - 7).",
     "To compute 9 - (2 - 7), we need to first find the difference between the two given numbers.\n\nThe "
     "difference between 2 and 7 is 2, so we add 2 to 9.\n\nSo, 9 - 2 = 7.\n\nSo, the answer is 7.",
     [("2 - 7", "2", 2), ("9 - 2", "7", 1)], "7", 0.5 + 0.25),  # right order, wrong values
    ("Compute (8 + 6) / 7.",
     "To solve this problem, we need to first find the remainder of 8 + 6 when divided by 7. We can do this by "
     "performing the division of 8 + 6 with 7. \n\n8 + 6 = 14, which is the remainder.\n\nSo, the answer is 14.",
     [("8 + 6", "14", 1)], "14", 1.0),  # a right first step, then no second step
]


@pytest.mark.parametrize("problem, completion, expected, final, reward", REAL)
def test_real_student_completions(problem, completion, expected, final, reward):
    steps, answer = steps_of(completion, problem)
    assert steps == expected and answer == final
    expr = arith.normalized_expression(problem)
    teacher = arith.teacher_solution(random.Random(1), expr)[1]
    assert rule_structure_score(problem, teacher, completion).total == reward


def test_agreement_of_a_candidate_decomposer_with_the_rule_decomposer():
    from rlkd_ray.gsrm.agreement import agreement
    from rlkd_ray.gsrm.parser import Step, Structure

    right = "5 - 2 = 3\n4 * 3 = 12\n3 + 12 = 15\n\\boxed{15}"
    reference = decompose(PROBLEM, right)
    same = parse_structure("\n".join(f"[sub-think {i}] next: {s.query}\n[Query {i}] {s.query}\n[Answer {i}] {s.answer}"
                                     for i, s in enumerate(reference.steps, 1)))
    # a candidate that reads the first step, gets the second step's result wrong and misses the third
    partial = Structure([Step("first the parentheses, 5 - 2", "5 - 2", "3"), Step("then 4 * 3", "4 * 3", "13")], "15")
    empty = Structure([], None, ["no tags"])
    a = agreement([TEACHER] * 3, [reference] * 3, [same, partial, empty])
    assert a.paths == 3 and a.parsed == pytest.approx(2 / 3) and a.same_step_count == pytest.approx(1 / 3)
    # 9 step positions: 3 (same) + 3 (partial: the longer side) + 3 (empty)
    assert a.fields["query"] == pytest.approx(5 / 9) and a.fields["answer"] == pytest.approx(4 / 9)
    assert a.fields["meta"] == pytest.approx(5 / 9)  # no position markers: the operations named are compared
    assert a.same_reward == pytest.approx(1 / 3) and a.same_nonzero_reward == pytest.approx(1 / 3)
    assert a.reward_abs_diff > 0
    with pytest.raises(ValueError, match="as many"):
        agreement([TEACHER], [reference], [])
