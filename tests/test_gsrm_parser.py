"""parse_structure: well-formed, loose and garbage input; it never raises."""

import string

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rlkd_ray.gsrm import Step, Structure, format_structure, parse_structure

WELL_FORMED = """[sub-think 1]: Find the width first, since both sides depend on it.
[Query 1]: What is w if 6w = 30?
[Answer 1]: w = 5
[sub-think 2]: Multiply the sides for the area.
[Query 2]: What is 10 * 5?
[Answer 2]: 50
So the final answer is: 50"""


def test_well_formed():
    s = parse_structure(WELL_FORMED)
    assert s.steps == [
        Step("Find the width first, since both sides depend on it.", "What is w if 6w = 30?", "w = 5"),
        Step("Multiply the sides for the area.", "What is 10 * 5?", "50"),
    ]
    assert s.final_answer == "50"
    assert s.errors == []


def test_case_spacing_missing_colon_and_bold():
    text = (
        "Here is the decomposition you asked for:\n\n"
        "**[SUB-THINK 1]:** Plan the first move.\n"
        "**[Query 1]**: First sub-problem?\n"
        "[ answer  1 ] first result\n"
        "[Sub Think 2]:Plan the second move.\n"
        "[query 2]  : Second sub-problem?\n"
        "[ANSWER 2]: **second result**\n"
        "**So the final answer is:** 42"
    )
    s = parse_structure(text)
    assert s.steps == [
        Step("Plan the first move.", "First sub-problem?", "first result"),
        Step("Plan the second move.", "Second sub-problem?", "second result"),
    ]
    assert s.final_answer == "42"
    assert s.errors == []


def test_multiline_fields_and_tags_sharing_a_line():
    text = (
        "[sub-think 1]: Line one of the plan.\nLine two of the plan.\n"
        "[Query 1]: q1 [Answer 1]: a1\n"
        "So the final answer is: x = 1\nand y = 2"
    )
    s = parse_structure(text)
    assert s.steps == [Step("Line one of the plan.\nLine two of the plan.", "q1", "a1")]
    assert s.final_answer == "x = 1\nand y = 2"
    assert s.errors == []


def test_missing_numbers_are_noted_and_steps_follow_text_order():
    text = (
        "[sub-think]: m1\n[Query]: q1\n[Answer]: a1\n"
        "[sub-think]: m2\n[Query]: q2\n[Answer]: a2\nSo the final answer is: 2"
    )
    s = parse_structure(text)
    assert [st.meta for st in s.steps] == ["m1", "m2"]
    assert [st.answer for st in s.steps] == ["a1", "a2"]
    assert len(s.errors) == 6
    assert "step 2: [Query] has no number" in s.errors


def test_out_of_order_numbers_are_noted_and_steps_follow_text_order():
    text = (
        "[sub-think 2]: m1\n[Query 2]: q1\n[Answer 2]: a1\n"
        "[sub-think 1]: m2\n[Query 1]: q2\n[Answer 1]: a2\nSo the final answer is: 7"
    )
    s = parse_structure(text)
    assert s.steps == [Step("m1", "q1", "a1"), Step("m2", "q2", "a2")]
    assert "step 1: [Query 2] is numbered 2, expected 1" in s.errors
    assert "step 2: [sub-think 1] is numbered 1, expected 2" in s.errors
    assert len(s.errors) == 6


def test_missing_field_is_empty_and_noted():
    text = (
        "[sub-think 1]: m1\n[Query 1]: q1\n[Answer 1]: a1\n"
        "[sub-think 2]: m2\n[Answer 2]: a2\nSo the final answer is: 3"
    )
    s = parse_structure(text)
    assert s.steps == [Step("m1", "q1", "a1"), Step("m2", "", "a2")]
    assert s.errors == ["step 2: missing [Query 2]"]


def test_repeated_field_opens_a_new_step():
    text = "[sub-think 1]: m1\n[sub-think 2]: m2\n[Query 2]: q2\n[Answer 2]: a2\nSo the final answer is: 1"
    s = parse_structure(text)
    assert s.steps == [Step("m1", "", ""), Step("m2", "q2", "a2")]
    assert s.errors == ["step 1: missing [Query 1]", "step 1: missing [Answer 1]"]


def test_fields_out_of_order_within_a_numbered_step():
    text = "[Query 1]: q1\n[sub-think 1]: m1\n[Answer 1]: a1\nSo the final answer is: 1"
    s = parse_structure(text)
    assert s.steps == [Step("m1", "q1", "a1")]
    assert s.errors == ["step 1: fields out of order"]


def test_empty_field_and_final_answer_problems():
    s = parse_structure("[sub-think 1]:\n[Query 1]: q\n[Answer 1]: a\nSo the final answer is:")
    assert s.steps == [Step("", "q", "a")]
    assert s.final_answer == ""
    assert s.errors == ["step 1: [sub-think] is empty", "the final answer line is empty"]

    s = parse_structure("[sub-think 1]: m\n[Query 1]: q\n[Answer 1]: a")
    assert s.final_answer is None
    assert s.errors == ["no 'So the final answer is:' line"]

    s = parse_structure(
        "So the final answer is: 1\n[sub-think 1]: m\n[Query 1]: q\n[Answer 1]: a\nSo the final answer is: 2"
    )
    assert s.final_answer == "2"
    assert s.steps == [Step("m", "q", "a")]
    assert s.errors == ["2 final answer lines; the last one is used", "step tags after the final answer line"]


def test_brackets_inside_words_are_not_tags():
    text = (
        "[sub-think 1]: Memoise.\n[Query 1]: What does dp[answer] hold?\n"
        "[Answer 1]: memo[query] = x\nSo the final answer is: ok"
    )
    s = parse_structure(text)
    assert s.steps == [Step("Memoise.", "What does dp[answer] hold?", "memo[query] = x")]
    assert s.errors == []


def test_garbage_gives_no_steps_and_says_why():
    for text in ["", "   \n\t", "[[[[]]]]", "Just prose, no tags.", "[Queryx 1]: no", "\x00\ud7ff\U0010ffff"]:
        s = parse_structure(text)
        assert s.steps == [] and s.final_answer is None
        assert s.errors == ["no step tags found", "no 'So the final answer is:' line"]


def test_non_string_input_is_reported_not_raised():
    for value in [None, b"[Query 1]: q", 3]:
        s = parse_structure(value)
        assert s.steps == [] and s.final_answer is None
        assert s.errors == [f"input is {type(value).__name__}, not str"]


def test_huge_inputs():
    n = 20_000
    many = "\n".join(f"[sub-think {i}]: m{i}\n[Query {i}]: q{i}\n[Answer {i}]: a{i}" for i in range(1, n + 1))
    s = parse_structure(many + "\nSo the final answer is: done")
    assert len(s.steps) == n and s.errors == [] and s.steps[-1] == Step(f"m{n}", f"q{n}", f"a{n}")
    for junk in ["*" * 1_000_000, "[" * 1_000_000, "[ query " * 200_000, " " * 1_000_000 + "]"]:
        assert parse_structure(junk).steps == []
    interleaved = parse_structure("So the final answer is: 1 [Query]: q " * 50_000)
    assert len(interleaved.steps) == 50_000 and interleaved.final_answer == "1"
    assert "50000 final answer lines; the last one is used" in interleaved.errors


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises_on_random_unicode(text):
    s = parse_structure(text)
    assert isinstance(s, Structure)
    assert all(isinstance(x, str) for step in s.steps for x in (step.meta, step.query, step.answer))


FRAGMENTS = [
    "[sub-think 1]:", "[Query 2]", "[ANSWER]:", "**", "[answer 9999999999]", "So the final answer is",
    "\n", " ", ":", "[", "]", "x", "sub think", "[sub_think 3]**:**", "é", "\u200b", "3",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=5)), max_size=40))
def test_never_raises_on_tag_fragments(parts):
    s = parse_structure("".join(parts))
    assert isinstance(s, Structure)
    assert s.final_answer is None or isinstance(s.final_answer, str)


CONTENT = st.text(alphabet=string.ascii_letters + string.digits + " .,:;()=+-/\n", max_size=30).map(str.strip)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.lists(st.tuples(CONTENT, CONTENT, CONTENT), min_size=1, max_size=6), CONTENT)
def test_format_then_parse_round_trips(steps, final):
    assume(all("final answer is" not in " ".join(x.lower().split()) for s in steps for x in s))
    structure = Structure([Step(*s) for s in steps], final, [])
    parsed = parse_structure(format_structure(structure))
    assert parsed.steps == structure.steps
    assert parsed.final_answer == final


def test_bold_markers_stripped_but_single_stars_kept():
    s = parse_structure(
        "[sub-think 1]: **plan**\n[Query 1]: 2 * 3\n[Answer 1]: *args\n**\nSo the final answer is: ****6****"
    )
    assert s.steps == [Step("plan", "2 * 3", "*args")]
    assert s.final_answer == "6"
    assert s.errors == []
    assert parse_structure("[Query 1]: " + "*" * 1_000_000).steps == [Step("", "", "")]
