"""GroupScorer with the real SmolLM2 as GSRM and judge (transformers engine): every sample carries
every reward component, the judge comparisons of a group go out as ONE batched call, and verdicts
are read from the yes/no log-probs."""

from __future__ import annotations

import math

import pytest

from rlkd_ray.config import load_config
from rlkd_ray.controller.samples import Problem, PromptGroup, Sample
from rlkd_ray.gsrm import format_structure, parse_structure

TEACHER = parse_structure(
    "[sub-think 1]: First find how many eggs are left after breakfast and baking.\n"
    "[Query 1]: What is 16 - 3 - 4?\n[Answer 1]: 9\n"
    "[sub-think 2]: Then multiply the eggs left by the price.\n"
    "[Query 2]: What is 9 * 2?\n[Answer 2]: 18\n"
    "So the final answer is: 18")


def small_cfg(*overrides):
    """A GSRM context of 2,048 tokens, which holds paths of up to 256 tokens (`validate`)."""
    return load_config(None, ["reward.decompose_max_new_tokens=64", "reward.decompose_examples=1",
                              "reward.engine.max_model_len=2048", "rollout.max_prompt_tokens=256",
                              "rollout.max_new_tokens=256", *overrides])


class CallCounter:
    """Delegates to a real engine and counts its calls (a spy, not a fake)."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []

    def generate(self, prompts, sampling):
        self.calls.append(("generate", len(prompts)))
        return self.engine.generate(prompts, sampling)

    def score_choices(self, prompts, choices):
        self.calls.append(("score_choices", len(prompts)))
        return self.engine.score_choices(prompts, choices)


@pytest.fixture(scope="module")
def smollm_engine(student_path):
    from rlkd_ray.engines.hf import HFEngine

    engine = HFEngine(student_path, "float32", batch_size=8, max_model_len=2048)
    yield engine
    engine.close()


def test_group_scorer_real_model(smollm_engine, student_path):
    from transformers import AutoTokenizer

    from rlkd_ray.rewards.scoring import GroupScorer

    cfg = small_cfg("reward.judge_min_prob=0.0")
    tok = AutoTokenizer.from_pretrained(student_path)
    spy = CallCounter(smollm_engine)
    scorer = GroupScorer(cfg.reward, spy, spy, tok, tok)
    problem = Problem("gsm8k/0", "Janet's ducks lay 16 eggs per day. She eats three for breakfast and bakes "
                      "muffins with four. She sells the rest at $2 each. How much does she make?", "18",
                      teacher_reasoning="16 - 3 - 4 = 9 eggs; 9 * 2 = 18 dollars.",
                      teacher_structure=format_structure(TEACHER))
    completions = [
        "<think>\n16 - 3 - 4 = 9 eggs are left. 9 * 2 = 18.\n</think>\n<answer>\n\\boxed{18}\n</answer>",
        "She makes 20 dollars. \\boxed{20}",
    ]
    group = PromptGroup("s0-p0", 0, problem, [1, 2, 3], seed=0,
                        samples=[Sample([1], [-0.1], c, "stop", 0) for c in completions])
    scorer.score(group)

    # One GSRM call for the group's paths (the teacher structure came with the data), then one
    # judge call holding every comparison of the group.
    assert spy.calls[0] == ("generate", 2)
    judge_calls = [c for c in spy.calls if c[0] == "score_choices"]
    assert len(judge_calls) <= 1
    n_requests = sum(3 * min(len(TEACHER.steps), s.structure["student_steps"]) for s in group.samples)
    assert judge_calls == ([("score_choices", n_requests)] if n_requests else [])

    good, bad = group.samples
    for s in group.samples:
        assert set(s.rewards) == {"accuracy", "format", "tag_count", "structure"}
        assert math.isfinite(s.total)
        assert s.structure["teacher_steps"] == 2
    assert (good.rewards["accuracy"], good.rewards["format"], good.rewards["tag_count"]) == (1.0, 1.0, 1.0)
    assert (bad.rewards["accuracy"], bad.rewards["format"], bad.rewards["tag_count"]) == (0.0, 0.0, 0.0)
    expected = 15 * 1 + 10 * 1 + 10 * 1 + 15 * good.rewards["structure"]
    assert good.total == pytest.approx(expected)
    # With judge_min_prob=0 every verdict is a yes/no comparison: no non-answers.
    assert group.counters["judge_non_answers"] == 0
    assert group.timings["reward"] > 0


def test_judge_min_prob_turns_low_mass_into_non_answers(smollm_engine, student_path):
    from transformers import AutoTokenizer

    from rlkd_ray.gsrm import judge_requests
    from rlkd_ray.rewards.scoring import GroupScorer

    tok = AutoTokenizer.from_pretrained(student_path)
    requests = judge_requests(TEACHER, TEACHER)
    strict = GroupScorer(load_config(None, ["reward.judge_min_prob=1.0"]).reward, smollm_engine, smollm_engine, tok, tok)
    lenient = GroupScorer(load_config(None, ["reward.judge_min_prob=0.0"]).reward, smollm_engine, smollm_engine, tok, tok)
    assert strict.verdicts(requests) == [None] * len(requests)  # p(yes)+p(no) < 1 always
    assert all(v in (True, False) for v in lenient.verdicts(requests))


def test_empty_and_over_long_paths_get_no_steps_without_a_gsrm_call(smollm_engine, student_path):
    """A path with no reasoning is not sent to the GSRM (its few-shot prompt would invent steps); a
    path over the GSRM context is counted as too long, apart from parse failures."""
    from transformers import AutoTokenizer

    from rlkd_ray.rewards.scoring import GroupScorer

    tok = AutoTokenizer.from_pretrained(student_path)
    spy = CallCounter(smollm_engine)
    scorer = GroupScorer(small_cfg("reward.judge_min_prob=0.0").reward, spy, spy, tok, tok)
    problem = Problem("p", "What is 9 * 2?", "18", teacher_structure=format_structure(TEACHER))
    completions = [
        "<think>\n9 * 2 = 18.\n</think>\n<answer>\n\\boxed{18}\n</answer>",
        "<think>\n \n</think>\n<answer>\n\\boxed{18}\n</answer>",  # no reasoning at all
        "<think>\n...\n</think>\n<answer>\n\\boxed{18}\n</answer>",  # nothing but dots
        "<think>\n" + "Then add one more. " * 400 + "\n</think>",  # over the 2,048-token GSRM context
    ]
    group = PromptGroup("s0-p0", 0, problem, [1, 2, 3], seed=0,
                        samples=[Sample([1], [-0.1], c, "stop", 0) for c in completions])
    scorer.score(group)
    assert spy.calls[0] == ("generate", 1)  # only the first path reaches the GSRM
    for s in group.samples[1:]:
        assert s.structure["student_steps"] == 0 and s.rewards["structure"] == 0.0
    assert group.samples[1].structure["student_parse_errors"] == ["no reasoning to decompose"]
    assert group.samples[3].structure["student_parse_errors"][0].startswith("decomposition prompt too long")
    assert (group.counters["student_empty_paths"], group.counters["student_too_long"]) == (2, 1)
    assert group.counters["student_parse_failures"] == int(not group.samples[0].structure["student_steps"])


def test_rewards_score_the_forced_prefix_plus_the_completion(smollm_engine, student_path):
    """With a template that ends the prompt in `<think>\\n` (DeepSeek's R1-Distill), the completion
    starts inside the reasoning; format, tags and the GSRM see `<think>\\n` + completion."""
    from transformers import AutoTokenizer

    from rlkd_ray.rewards.scoring import GroupScorer

    tok = AutoTokenizer.from_pretrained(student_path)
    spy = CallCounter(smollm_engine)
    scorer = GroupScorer(small_cfg().reward, spy, spy, tok, tok)
    problem = Problem("p", "What is 9 * 2?", "18", teacher_structure=format_structure(TEACHER))
    completion = "9 * 2 = 18.\n</think>\n<answer>\n\\boxed{18}\n</answer>"
    group = PromptGroup("s0-p0", 0, problem, [1, 2, 3], seed=0, completion_prefix="<think>\n",
                        samples=[Sample([1], [-0.1], completion, "stop", 0)])
    scorer.score(group)
    (s,) = group.samples
    assert (s.rewards["format"], s.rewards["tag_count"], s.rewards["accuracy"]) == (1.0, 1.0, 1.0)
    assert s.text == completion  # the sample keeps what the model generated
