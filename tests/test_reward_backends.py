"""The reward side without models: the rule decomposer + exact judge as GSRM backend (the exact
stand-in for the generative GSRM and judge in the arithmetic domain), and the outcome-only baseline
(structure weight 0), which loads no GSRM or judge and calls none."""

from __future__ import annotations

import random

import pytest

from rlkd_ray.config import load_config
from rlkd_ray.controller.samples import Problem, PromptGroup, Sample
from rlkd_ray.data import arith
from rlkd_ray.gsrm.exact_judge import rule_structure_score
from rlkd_ray.rewards.scoring import GroupScorer

EXPR = "3 + 4 * (5 - 2)"
REASONING, STRUCTURE, GOLD = arith.teacher_solution(random.Random(0), EXPR)
PROBLEM = Problem("arith/train/0", arith.problem_text(EXPR), GOLD, REASONING, STRUCTURE)
COMPLETIONS = [
    "5 - 2 = 3\n4 * 3 = 12\n3 + 12 = 15\n\\boxed{15}",  # the teacher's order, right
    "3 + 4 = 7\n5 - 2 = 3\n7 * 3 = 21\n\\boxed{21}",  # left to right: wrong order from step 1
    "5 - 2 = 3\n4 * 3 = 13\n3 + 13 = 16\n\\boxed{16}",  # the teacher's order, a wrong product
    "I do not know.",  # no operation
]


class Unusable:
    """Stands where an engine would be: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the scorer used an engine ({name}) it must not need")


def group() -> PromptGroup:
    return PromptGroup("s0-p0", 0, PROBLEM, [1, 2, 3], seed=0,
                       samples=[Sample([1], [-0.1], c, "stop", 0) for c in COMPLETIONS])


def test_rule_backend_scores_structure_without_models():
    cfg = load_config(None, ["reward.gsrm_backend=rule"]).reward
    assert not cfg.runs_gsrm_model()
    scored = GroupScorer(cfg, Unusable(), Unusable()).score(group())
    structure = [s.rewards["structure"] for s in scored.samples]
    for s, text in zip(scored.samples, COMPLETIONS):  # exactly the rule decomposer + exact judge + paper's scoring
        assert s.rewards["structure"] == rule_structure_score(PROBLEM.problem, STRUCTURE, text).total
        assert s.total == pytest.approx(15 * s.rewards["accuracy"] + 10 * s.rewards["format"]
                                        + 10 * s.rewards["tag_count"] + 15 * s.rewards["structure"])
    assert structure[0] == 3.0  # every step matches
    assert structure[1] == 0.0  # a meta mismatch at step 1 gates every step
    assert structure[2] == pytest.approx(1 + 0.5 + 0.25)  # step 2 answer, step 3 query and answer differ
    assert structure[3] == 0.0 and scored.counters["student_parse_failures"] == 1
    assert [s.rewards["accuracy"] for s in scored.samples] == [1.0, 0.0, 0.0, 0.0]
    assert scored.counters["teacher_parse_failures"] == 0
    assert scored.samples[0].structure["teacher_steps"] == 3


def test_outcome_only_baseline_loads_and_calls_no_gsrm_or_judge(monkeypatch):
    cfg = load_config(None, ["reward.weights.structure=0"])  # generative backend: the baseline of the paper
    assert not cfg.reward.runs_gsrm_model()
    scored = GroupScorer(cfg.reward, Unusable(), Unusable()).score(group())
    for s in scored.samples:
        assert "structure" not in s.rewards and s.structure is None
        assert s.total == pytest.approx(15 * s.rewards["accuracy"] + 10 * s.rewards["format"]
                                        + 10 * s.rewards["tag_count"])

    # The reward worker starts without building an engine or loading a tokenizer.
    import actors.reward as reward_actor

    monkeypatch.setattr(reward_actor, "make_engine", Unusable())
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", Unusable())
    worker = reward_actor.RewardWorker.__ray_actor_class__(cfg, 0)
    assert worker.engines == []
    assert worker.score(group()).samples[0].total == 15.0
    rule_cfg = load_config(None, ["reward.gsrm_backend=rule"])
    assert reward_actor.RewardWorker.__ray_actor_class__(rule_cfg, 0).engines == []


def test_rule_backend_with_weight_zero_keeps_structure_as_a_diagnostic():
    cfg = load_config(None, ["reward.gsrm_backend=rule", "reward.weights.structure=0"]).reward
    scored = GroupScorer(cfg).score(group())
    assert [s.rewards["structure"] for s in scored.samples][:2] == [3.0, 0.0]
    assert scored.samples[0].total == pytest.approx(15.0)  # weight 0: not in the total


def test_generative_backend_with_structure_needs_its_models():
    assert load_config(None).reward.runs_gsrm_model()
    with pytest.raises(Exception, match="gsrm_backend.*choose one of generative, rule"):
        load_config(None, ["reward.gsrm_backend=rules"])
