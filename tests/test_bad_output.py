"""Bad model output (issue: reliability, item 3): GSRM replies without tags, out of order, with 500
steps; judge replies that are neither yes nor no; empty and all-padding completions; and property
tests that random text never makes the parser, the answer extraction or a reward raise or leave its
range. Every test records its scenario for docs/reliability.md."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlkd_ray.algo.losses import grpo_loss
from rlkd_ray.config import RewardWeights
from rlkd_ray.controller.batching import build_batch
from rlkd_ray.controller.samples import Problem, PromptGroup, Sample
from rlkd_ray.data.answers import gsm8k_final_answer, last_boxed, think_text
from rlkd_ray.gsrm import (
    Step,
    Structure,
    format_structure,
    judge_requests,
    parse_structure,
    score_from_verdicts,
    verdict_from_text,
)
from rlkd_ray.rewards import accuracy_reward, extract_answer, format_reward, rule_components, tag_count_reward
from rlkd_ray.rewards.registry import total_reward

TEACHER = Structure([Step(f"plan {i}", f"q {i}", f"a {i}") for i in range(3)], "3")


def _score(reply: str, verdict: bool | None = True):
    student = parse_structure(reply)
    requests = judge_requests(TEACHER, student)
    return student, score_from_verdicts(TEACHER, student, requests, [verdict] * len(requests))


def test_gsrm_replies_without_tags_out_of_order_and_with_500_steps(scenario):
    """model output: a GSRM reply with no tags, tags out of order, 500 steps"""
    student, score = _score("I think the student first adds, then checks. The answer is 4.")
    assert student.steps == [] and "no step tags found" in student.errors
    assert (score.total, score.reason) == (0.0, "student has no steps")  # scored 0, with the reason

    student, score = _score("[Answer 1]: 4\n[Query 1]: what is 2+2?\n[sub-think 1]: add\nSo the final answer is: 4")
    assert any("out of order" in e or "missing" in e for e in student.errors)
    assert 0.0 <= score.total <= 3.0

    long_reply = format_structure(Structure([Step(f"m{i}", f"q{i}", f"a{i}") for i in range(500)], "x"))
    student, score = _score(long_reply)
    assert len(student.steps) == 500 and student.errors == []
    assert score.total == 3.0 and len(score.per_step) == 500 and score.per_step[3:] == [0.0] * 497
    assert score.student_steps == 500 and score.teacher_steps == 3
    scenario.record("bad input", "model output: GSRM reply with no tags / tags out of order / 500 steps",
                    survived="a structure score in range with the reason or parse errors noted (counted per "
                             "group as student_parse_failures)", lost="nothing", steps_parsed=len(student.steps))


@pytest.mark.parametrize("reply", ["Maybe.", "", "Yesterday", "The answer is yes", "n o", "YES!", "no."])
def test_judge_reply_that_is_neither_yes_nor_no_is_a_counted_mismatch(reply, scenario):
    """model output: a judge reply that is neither yes nor no"""
    verdict = verdict_from_text(reply)
    assert verdict == {"YES!": True, "no.": False}.get(reply)  # first word only, never a substring search
    _, score = _score(format_structure(TEACHER), verdict)
    if verdict is None:
        assert score.judge_non_answers == 9 and score.total == 0.0  # counted, and a mismatch
    scenario.record("bad input", f"model output: judge replies {reply!r}",
                    survived="a strict verdict: a non-answer counts in count/judge_non_answers and is a mismatch",
                    lost="nothing", non_answers=score.judge_non_answers)


def test_empty_and_all_padding_completions_train_as_zero_reward(scenario):
    """model output: a completion that is empty or all padding"""
    pad = 0
    texts = {"empty": ("", []), "padding": ("<|endoftext|>" * 8, [pad] * 8)}
    for text, _ in texts.values():
        components = rule_components({"completion": text, "answer": "4"})
        assert components == {"accuracy": 0.0, "format": 0.0, "tag_count": 0.0}
        assert think_text(text) == text.strip()
        assert parse_structure(think_text(text)).steps == []
    samples = [Sample(ids, [-0.5] * len(ids), text, "stop", 0, total=0.0, advantage=0.0)
               for text, ids in texts.values()]
    group = PromptGroup("s0-p0", 0, Problem("p", "2+2?", "4"), [5, 6, 7], seed=1, samples=samples)
    batch = build_batch([group], pad_id=pad)
    assert batch.num_tokens == 8 and batch.loss_mask[0].sum() == 0
    logp = torch.zeros_like(batch.behaviour_logprobs)
    loss, metrics = grpo_loss(logp, batch.behaviour_logprobs, None, batch.advantages, batch.loss_mask, clip_eps=0.2,
                              kl_beta=0.0, kl_estimator="k3", num_tokens=batch.num_tokens)
    assert torch.isfinite(loss) and all(math.isfinite(v) for v in metrics.values())
    empty_only = build_batch([PromptGroup("s0-p1", 0, group.problem, [5], 1, samples=samples[:1])], pad_id=pad)
    behaviour = empty_only.behaviour_logprobs
    loss, _ = grpo_loss(torch.zeros_like(behaviour), behaviour, None, empty_only.advantages,
                        empty_only.loss_mask, clip_eps=0.2, kl_beta=0.0, kl_estimator="k3",
                        num_tokens=empty_only.num_tokens)
    assert empty_only.num_tokens == 0 and loss.item() == 0.0  # no token to learn from: a zero loss, not NaN
    scenario.record("bad input", "model output: empty or all-padding completion",
                    survived="rewards 0 (no answer, no format, no steps), a finite loss; the step trains",
                    lost="nothing")


# -- properties: random text never raises, scores stay in range (run by one scenario test below) ----
TEXT = st.text(alphabet=st.sampled_from(list("\\boxed{}fbox 12x$#<>/thinkanswer\n")) | st.characters(), max_size=200)


@settings(max_examples=150, deadline=None)
@given(TEXT)
def answer_extraction_never_raises_and_returns_a_piece_of_the_text(text):
    for found in (last_boxed(text), extract_answer(text)):
        assert found is None or (isinstance(found, str) and found and found in text)
    answer = gsm8k_final_answer(text)
    assert answer is None or isinstance(answer, str)


@settings(max_examples=150, deadline=None)
@given(TEXT)
def rule_rewards_stay_in_range_on_random_text(text):
    assert format_reward(text) in (0.0, 1.0)
    assert tag_count_reward(text) in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert isinstance(think_text(text), str)


@settings(max_examples=25, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("\\boxed{}12x+-/^()ab ")), max_size=30),
       st.sampled_from(["4", r"\frac{1}{2}", "x^2", "not an answer"]))
def accuracy_is_one_zero_or_unscorable_on_random_text(completion, gold):
    score = accuracy_reward(completion, gold).score
    assert score in (0.0, 1.0) or (score is None and gold == "not an answer")


STEP = st.builds(Step, st.text(max_size=8), st.text(max_size=8), st.text(max_size=8))


@settings(max_examples=150, deadline=None)
@given(st.lists(STEP, max_size=6), st.lists(STEP, max_size=6), st.lists(st.sampled_from([True, False, None]),
       min_size=18, max_size=18), st.booleans())
def structure_and_total_reward_stay_in_range(teacher_steps, student_steps, verdicts, normalize):
    teacher, student = Structure(teacher_steps, "x"), Structure(student_steps, "x")
    requests = judge_requests(teacher, student)
    score = score_from_verdicts(teacher, student, requests, verdicts[: len(requests)], normalize)
    aligned = min(len(teacher_steps), len(student_steps))
    assert all(s in (0.0, 0.25, 0.5, 1.0) for s in score.per_step)
    assert 0.0 <= score.total <= (aligned / len(teacher_steps) if normalize and teacher_steps else aligned)
    components = {"accuracy": None, "format": 1.0, "tag_count": 0.5, "structure": score.total}
    total = total_reward(components, RewardWeights(), {})
    assert math.isfinite(total) and 0.0 <= total <= 15 + 10 + 10 + 15 * max(aligned, 1)


PROPERTIES = {  # property -> examples drawn
    answer_extraction_never_raises_and_returns_a_piece_of_the_text: 150,
    rule_rewards_stay_in_range_on_random_text: 150,
    accuracy_is_one_zero_or_unscorable_on_random_text: 25,
    structure_and_total_reward_stay_in_range: 150,
}


def test_random_text_never_raises_and_scores_stay_in_range(scenario):
    """model output: random text (hypothesis) into answer extraction and every reward"""
    for prop in PROPERTIES:
        prop()  # each runs its @given examples; a counterexample fails here, shrunk
    scenario.record("bad input", "model output: random text (hypothesis) into answer extraction and every reward",
                    survived="no exception; a boxed answer is a piece of the text, format in {0, 1}, tag count in "
                             "quarters, accuracy 0/1/None, structure in [0, aligned steps], total finite",
                    lost="nothing", **{p.__name__.split("_")[0] + "_examples": n for p, n in PROPERTIES.items()},
                    parser_examples="600 (tests/test_gsrm_parser.py)")
