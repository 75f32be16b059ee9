"""The paper's recipe on paper-size lengths: with `conf/rlkd.yaml` and `conf/cluster*.yaml`, a
full-length student path (rollout.max_new_tokens tokens) and a teacher trace as long decompose
within the configured GSRM limits, measured with a real tokenizer.

The configured GSRM is Qwen2.5-7B-Instruct, whose tokenizer is not available offline: SmolLM2's
tokenizer stands in for it here (both byte-level BPEs; the margin in `reward.decompose_prompt_tokens`
covers the difference in the instruction and few-shots). The texts are cut to token counts of the
stand-in, so the check is exact for it and approximate for Qwen's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rlkd_ray.config import load_config
from rlkd_ray.controller.samples import Problem, PromptGroup, Sample
from rlkd_ray.engines.base import Completion, check_request
from rlkd_ray.rewards.scoring import TOO_LONG, GroupScorer

CONF = Path(__file__).resolve().parent.parent / "conf"
SENTENCE = ("Next, substitute $x = \\frac{3}{4}$ into $2x^2 - 5x + 1$, which gives $\\frac{9}{8} - \\frac{15}{4} + 1"
            " = -\\frac{13}{8}$; let me double check the arithmetic before going on. ")


def text_of(tokenizer, n_tokens: int, start: str = "") -> str:
    """A reasoning-like text of at least `n_tokens` tokens."""
    text = start
    while len(tokenizer(text, add_special_tokens=False)["input_ids"]) < n_tokens:
        text += SENTENCE
    return text


class AdmittingEngine:
    """Runs the admission check every engine backend runs on a request (`check_request`: prompt +
    max_new_tokens within max_model_len) and records the prompt lengths; generates nothing."""

    def __init__(self, max_model_len: int):
        self.max_model_len, self.prompt_lengths = max_model_len, []

    def generate(self, prompts, sampling):
        check_request(prompts, sampling, self.max_model_len)
        self.prompt_lengths += [len(p) for p in prompts]
        return [[Completion([], [], "", "stop")] for _ in prompts]


@pytest.mark.parametrize("name", ["rlkd", "cluster", "cluster_multinode"])
def test_full_length_paths_decompose_within_the_configured_limits(name, student_path):
    from transformers import AutoTokenizer

    cfg = load_config(CONF / f"{name}.yaml")
    assert cfg.model.gsrm == "Qwen/Qwen2.5-7B-Instruct"  # its tokenizer: SmolLM2's stands in (module docstring)
    tok = AutoTokenizer.from_pretrained(student_path)
    r, n_path = cfg.reward, cfg.rollout.max_new_tokens
    assert n_path == (4096 if name == "rlkd" else 3072)  # the cluster recipes fit Qwen2.5-Math-7B's 4,096 positions

    problem = text_of(tok, cfg.rollout.max_prompt_tokens, "Find the value of the expression. ")  # the longest
    path = text_of(tok, n_path)
    completion = f"<think>\n{path}\n</think>\n<answer>\n\\boxed{{-\\frac{{13}}{{8}}}}\n</answer>"
    teacher = Problem("long", problem, "-\\frac{13}{8}", teacher_reasoning=text_of(tok, n_path, "Let me think. "))
    group = PromptGroup("s0-p0", 0, teacher, [1], seed=0, samples=[Sample([1], [0.0], completion, "length", 0)])

    engine = AdmittingEngine(r.engine.max_model_len)
    scorer = GroupScorer(r, engine, engine, tok, tok)
    scorer.score(group)

    assert len(engine.prompt_lengths) == 2  # the teacher's trace, then the student's path: both admitted
    assert group.counters["student_too_long"] == group.counters["teacher_too_long"] == 0
    assert not any(e.startswith(TOO_LONG) for e in group.samples[0].structure["student_parse_errors"])
    for n in engine.prompt_lengths:
        assert n + r.decompose_max_new_tokens <= r.engine.max_model_len
    # the instruction, few-shots and template fit their configured share of the context
    overhead = max(engine.prompt_lengths) - len(tok(problem + path, add_special_tokens=False)["input_ids"])
    assert overhead <= r.decompose_prompt_tokens
