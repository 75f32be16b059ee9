"""The decomposition prompt, its few-shots, format_structure and the judge prompts."""

import re

import pytest

from rlkd_ray.config import _CHOICES
from rlkd_ray.gsrm import (
    DOMAINS,
    JUDGE_KINDS,
    Step,
    Structure,
    build_decompose_messages,
    build_judge_messages,
    format_structure,
    parse_structure,
)
from rlkd_ray.gsrm.prompts import FEW_SHOTS, INSTRUCTION

EXPECTED_STEPS = {"math": (4, 3), "code": (3, 3), "science": (3, 4), "puzzle": (3, 3)}


def test_domains_match_the_config_choices():
    assert DOMAINS == _CHOICES["reward.domain"]
    assert tuple(FEW_SHOTS) == DOMAINS


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_few_shot_parses_into_its_steps(domain):
    examples = FEW_SHOTS[domain]
    assert len(examples) == 2
    for ex, n_steps in zip(examples, EXPECTED_STEPS[domain]):
        parsed = parse_structure(format_structure(ex.structure))
        assert parsed.errors == []
        assert len(parsed.steps) == n_steps
        assert parsed.steps == ex.structure.steps
        assert parsed.final_answer == ex.structure.final_answer


@pytest.mark.parametrize("domain", DOMAINS)
def test_few_shot_meta_reasoning_does_not_state_the_result(domain):
    for ex in FEW_SHOTS[domain]:
        for step in ex.structure.steps:
            assert not re.search(rf"(?<!\w){re.escape(step.answer)}(?!\w)", step.meta, re.IGNORECASE)
            assert step.meta and step.query and step.answer


def test_format_structure_exact_text():
    s = Structure([Step("plan a", "q a", "1"), Step("plan b", "", "2\n3")], "3", [])
    assert format_structure(s) == (
        "[sub-think 1]: plan a\n[Query 1]: q a\n[Answer 1]: 1\n"
        "[sub-think 2]: plan b\n[Query 2]:\n[Answer 2]: 2\n3\n"
        "So the final answer is: 3"
    )
    no_final = Structure([Step("m", "q", "a")], None, [])
    assert format_structure(no_final) == "[sub-think 1]: m\n[Query 1]: q\n[Answer 1]: a"


def test_instruction_uses_the_one_tag_set():
    for line in ["[sub-think i]:", "[Query i]:", "[Answer i]:", "So the final answer is:"]:
        assert line in INSTRUCTION
    assert "<sub-think" not in INSTRUCTION and "[Sub-problem" not in INSTRUCTION


@pytest.mark.parametrize("n_examples", [0, 1, 2])
def test_decompose_messages_layout(n_examples):
    msgs = build_decompose_messages("What is 1 + 1?", "1 + 1 = 2, so 2.", "science", n_examples)
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * n_examples + ["user"]
    assert msgs[0]["content"] == INSTRUCTION
    assert msgs[-1]["content"] == (
        "Problem:\nWhat is 1 + 1?\n\nReasoning path:\n1 + 1 = 2, so 2.\n\nDecompose this reasoning path."
    )
    for ex, user, assistant in zip(FEW_SHOTS["science"], msgs[1:-1:2], msgs[2:-1:2]):
        assert ex.problem in user["content"] and ex.reasoning in user["content"]
        assert assistant["content"] == format_structure(ex.structure)


def test_decompose_messages_default_is_math_with_two_examples():
    msgs = build_decompose_messages("p", "r")
    assert len(msgs) == 6
    assert FEW_SHOTS["math"][1].problem in msgs[3]["content"]


def test_decompose_messages_bad_arguments():
    with pytest.raises(ValueError, match="unknown decomposition domain 'poetry'"):
        build_decompose_messages("p", "r", domain="poetry")
    with pytest.raises(ValueError, match="n_examples must be between 0 and 2, got 3"):
        build_decompose_messages("p", "r", n_examples=3)


@pytest.mark.parametrize("kind", JUDGE_KINDS)
def test_judge_messages(kind):
    msgs = build_judge_messages(kind, "TEACHER TEXT", "STUDENT TEXT")
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert user.index("TEACHER TEXT") < user.index("STUDENT TEXT")
    assert user.endswith("Answer with one word: yes or no.")
    assert "yes or no" in msgs[0]["content"]


def test_judge_questions_differ_by_kind():
    keywords = {"meta": "intent", "query": "sub-problem", "answer": "result"}
    users = {k: build_judge_messages(k, "t", "s")[1]["content"] for k in JUDGE_KINDS}
    assert len(set(users.values())) == 3
    for kind, word in keywords.items():
        assert word in users[kind]


def test_judge_unknown_kind():
    with pytest.raises(ValueError, match="unknown judge kind 'final'"):
        build_judge_messages("final", "t", "s")
