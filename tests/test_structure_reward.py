"""The structured reward mechanism with a deterministic judge, and the strict verdict readers."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlkd_ray.gsrm import (
    JUDGE_KINDS,
    JudgeRequest,
    Step,
    Structure,
    judge_requests,
    score_from_verdicts,
    structure_reward,
    verdict_from_logprobs,
    verdict_from_text,
)


def S(*steps):
    """A Structure from (meta, query, answer) triples."""
    return Structure([Step(*s) for s in steps], None, [])


class EqualityJudge:
    """Verdict = exact string equality; "?" in the student text means the judge gave no answer."""

    def __init__(self):
        self.calls = []

    def __call__(self, pairs, kind):
        self.calls.append((kind, list(pairs)))
        return [None if "?" in s else t == s for t, s in pairs]


TEACHER4 = S(("m1", "q1", "a1"), ("m2", "q2", "a2"), ("m3", "q3", "a3"), ("m4", "q4", "a4"))


def reward(teacher, student, normalize=False):
    return structure_reward(teacher, student, EqualityJudge(), normalize=normalize)


def test_all_match_scores_the_step_count():
    r = reward(TEACHER4, TEACHER4)
    assert r.total == 4.0
    assert r.per_step == [1.0, 1.0, 1.0, 1.0]
    assert r.reason is None and r.judge_non_answers == 0
    assert (r.teacher_steps, r.student_steps) == (4, 4)
    assert r.judgements == [{"meta": True, "query": True, "answer": True}] * 4


@pytest.mark.parametrize(
    "student, expected",
    [
        (("m1", "other", "a1"), 0.5),  # sub-problem mismatch
        (("m1", "q1", "other"), 0.5),  # sub-answer mismatch
        (("m1", "other", "other"), 0.25),  # both
        (("other", "q1", "a1"), 0.0),  # meta mismatch
    ],
)
def test_step_penalties(student, expected):
    r = reward(S(("m1", "q1", "a1")), S(student))
    assert r.total == expected and r.per_step == [expected]


def test_prefix_gating_zeroes_every_later_step():
    student = S(("m1", "q1", "a1"), ("X", "q2", "a2"), ("m3", "q3", "a3"), ("m4", "q4", "a4"))
    r = reward(TEACHER4, student)
    assert r.per_step == [1.0, 0.0, 0.0, 0.0]
    assert r.total == 1.0
    assert r.judgements[2] == {"meta": True, "query": True, "answer": True}  # judged, then gated


def test_penalties_then_gating():
    student = S(("m1", "X", "a1"), ("m2", "q2", "X"), ("X", "q3", "a3"), ("m4", "q4", "a4"))
    r = reward(TEACHER4, student)
    assert r.per_step == [0.5, 0.5, 0.0, 0.0]
    assert r.total == 1.0


def test_longer_student_extra_steps_score_zero():
    teacher = S(("m1", "q1", "a1"), ("m2", "q2", "a2"))
    r = reward(teacher, TEACHER4)
    assert r.per_step == [1.0, 1.0, 0.0, 0.0]
    assert r.total == 2.0 and (r.teacher_steps, r.student_steps) == (2, 4)
    assert len(r.judgements) == 2
    assert reward(teacher, TEACHER4, normalize=True).total == 1.0


def test_longer_teacher_missing_steps_score_zero():
    student = S(("m1", "q1", "a1"), ("m2", "q2", "X"))
    r = reward(TEACHER4, student)
    assert r.per_step == [1.0, 0.5, 0.0, 0.0]
    assert r.total == 1.5 and (r.teacher_steps, r.student_steps) == (4, 2)
    assert reward(TEACHER4, student, normalize=True).total == 1.5 / 4


@pytest.mark.parametrize(
    "teacher, student, reason, per_step",
    [
        (S(), TEACHER4, "teacher has no steps", [0.0] * 4),
        (TEACHER4, S(), "student has no steps", [0.0] * 4),
        (S(), S(), "teacher and student have no steps", []),
    ],
)
def test_empty_side_scores_zero_with_reason(teacher, student, reason, per_step):
    judge = EqualityJudge()
    for normalize in (False, True):
        r = structure_reward(teacher, student, judge, normalize=normalize)
        assert r.total == 0.0 and r.reason == reason and r.per_step == per_step
        assert r.judgements == [] and r.judge_non_answers == 0
    assert judge.calls == []


def test_judge_non_answer_is_counted_and_halves_nothing_but_closes_the_meta_gate():
    """As the RLKD release: only an explicit "no" on a sub-problem or sub-answer halves the step; the
    meta gate stays open only on an explicit "yes"."""
    student = S(("m1", "q1", "a1?"), ("m2", "q2?", "a2?"), ("m3", "q3", "a3"), ("m4", "q4", "a4"))
    r = reward(TEACHER4, student)
    assert r.per_step == [1.0, 1.0, 1.0, 1.0]
    assert r.judge_non_answers == 3
    assert r.judgements[1] == {"meta": True, "query": None, "answer": None}

    gated = reward(TEACHER4, S(("m1", "q1", "a1"), ("m2?", "q2", "a2"), ("m3", "q3", "a3")))
    assert gated.per_step == [1.0, 0.0, 0.0, 0.0]
    assert gated.judge_non_answers == 1


def test_normalisation_on_and_off():
    student = S(("m1", "X", "a1"), ("m2", "q2", "a2"), ("m3", "q3", "a3"), ("X", "q4", "a4"))
    assert reward(TEACHER4, student).total == 2.5
    assert reward(TEACHER4, student, normalize=True).total == 2.5 / 4
    assert reward(TEACHER4, student, normalize=True).per_step == [0.5, 1.0, 1.0, 0.0]


def test_judge_is_called_once_per_kind_with_all_aligned_pairs():
    judge = EqualityJudge()
    structure_reward(TEACHER4, S(("m1", "q1", "a1"), ("X", "q2", "a2")), judge)
    assert [kind for kind, _ in judge.calls] == list(JUDGE_KINDS)
    assert judge.calls[0][1] == [("m1", "m1"), ("m2", "X")]
    assert judge.calls[1][1] == [("q1", "q1"), ("q2", "q2")]
    assert judge.calls[2][1] == [("a1", "a1"), ("a2", "a2")]


def test_judge_returning_the_wrong_number_of_verdicts_is_an_error():
    with pytest.raises(ValueError, match="judge returned 1 verdicts for 4 'meta' pairs"):
        structure_reward(TEACHER4, TEACHER4, lambda pairs, kind: [True])


def test_judge_requests_cover_every_kind_of_every_aligned_step():
    reqs = judge_requests(TEACHER4, S(("M1", "Q1", "A1"), ("M2", "Q2", "A2")))
    assert reqs == [
        JudgeRequest("meta", 0, "m1", "M1"),
        JudgeRequest("query", 0, "q1", "Q1"),
        JudgeRequest("answer", 0, "a1", "A1"),
        JudgeRequest("meta", 1, "m2", "M2"),
        JudgeRequest("query", 1, "q2", "Q2"),
        JudgeRequest("answer", 1, "a2", "A2"),
    ]
    assert judge_requests(S(), TEACHER4) == []


def two_phase(teacher, student, normalize, shuffle_seed=None):
    reqs = judge_requests(teacher, student)
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(reqs)
    verdicts = [EqualityJudge()([(r.teacher_text, r.student_text)], r.kind)[0] for r in reqs]
    return score_from_verdicts(teacher, student, reqs, verdicts, normalize=normalize)


TEXTS = st.sampled_from(["m", "q", "a", "m?", "x"])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(TEXTS, TEXTS, TEXTS), max_size=5),
    st.lists(st.tuples(TEXTS, TEXTS, TEXTS), max_size=5),
    st.booleans(),
    st.integers(0, 1000),
)
def test_two_phase_api_gives_the_same_score(teacher_steps, student_steps, normalize, seed):
    teacher, student = S(*teacher_steps), S(*student_steps)
    direct = reward(teacher, student, normalize)
    assert two_phase(teacher, student, normalize) == direct
    assert two_phase(teacher, student, normalize, shuffle_seed=seed) == direct
    assert 0.0 <= direct.total <= min(len(teacher_steps), len(student_steps))


def test_score_from_verdicts_rejects_inconsistent_input():
    teacher = student = S(("m", "q", "a"))
    reqs = judge_requests(teacher, student)
    with pytest.raises(ValueError, match="got 2 verdicts for 3 judge requests"):
        score_from_verdicts(teacher, student, reqs, [True, True])
    with pytest.raises(ValueError, match="no verdict for answer of step 0"):
        score_from_verdicts(teacher, student, reqs[:2], [True, True])
    with pytest.raises(ValueError, match="two verdicts for meta of step 0"):
        score_from_verdicts(teacher, student, [reqs[0], reqs[0], reqs[1]], [True, True, True])
    with pytest.raises(ValueError, match=r"\(meta, step 1\) is not one of this pair's requests"):
        score_from_verdicts(teacher, student, reqs + [JudgeRequest("meta", 1, "m", "m")], [True] * 4)
    with pytest.raises(TypeError, match="verdict for query of step 0 must be True, False or None, got 'yes'"):
        score_from_verdicts(teacher, student, reqs, [True, "yes", True])


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("Yes.", True),
        ("yes", True),
        ("  YES!\n", True),
        ("**No**", False),
        ("No", False),
        ("no, the steps differ", False),
        ("yesterday", None),
        ("The answer is yes", None),
        ("nope", None),
        ("Yes/no", None),
        ("y", None),
        ("", None),
        ("   ", None),
    ],
)
def test_verdict_from_text_is_strict(text, verdict):
    assert verdict_from_text(text) is verdict


@pytest.mark.parametrize(
    "yes, no, margin, verdict",
    [
        (-0.1, -2.5, 0.0, True),
        (-2.5, -0.1, 0.0, False),
        (-1.0, -1.0, 0.0, False),  # a tie is not a yes
        (-1.0, -1.5, 1.0, False),  # yes must win by more than the margin
        (-1.0, -2.5, 1.0, True),
        (-1.0, -math.inf, 0.0, True),
        (-math.inf, -1.0, 0.0, False),
        (math.nan, -1.0, 0.0, False),
        (-1.0, math.nan, 0.0, True),
        (-math.inf, -math.inf, 0.0, None),
        (math.nan, math.nan, 0.0, None),
        (math.nan, -math.inf, 0.0, None),
    ],
)
def test_verdict_from_logprobs(yes, no, margin, verdict):
    assert verdict_from_logprobs(yes, no, margin) is verdict


def test_verdict_from_logprobs_rejects_positive_infinity():
    with pytest.raises(ValueError, match="log-probabilities must be finite or -inf"):
        verdict_from_logprobs(math.inf, -1.0)
