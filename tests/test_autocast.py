"""bf16 autocast in the learner (`learner.autocast`): the log-probs the learner computes for real
completions of the real student stay close to the behaviour log-probs of the float32 engine that
sampled them (the importance ratio starts near 1), with float32 as the control."""

from __future__ import annotations

import pytest
import torch

from rlkd_ray.config import load_config

pytestmark = pytest.mark.slow


def test_bf16_autocast_logprobs_agree_with_the_engine(student_path):
    from transformers import AutoModelForCausalLM

    from rlkd_ray.controller.prompt_source import chat_messages
    from rlkd_ray.engines.base import Sampling, build_prompt_ids
    from rlkd_ray.engines.hf import HFEngine
    from rlkd_ray.learner.policy import learner_autocast, token_logprobs

    r = load_config("conf/local.yaml").rollout
    engine = HFEngine(student_path, "float32", batch_size=16, max_model_len=512, seed=0)
    try:
        prompts = [build_prompt_ids(engine.tokenizer, chat_messages(r.system_prompt, p, r.examples), 256)
                   for p in ("Compute 3 + 4 * (5 - 2).", "Compute 8 - 6 / 2.", "Compute (9 - 1) * 2.")]
        groups = engine.generate(prompts, Sampling(n=4, temperature=r.temperature, max_new_tokens=32, seed=1))
    finally:
        engine.close()
    model = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32).eval()

    def deltas(autocast):
        out = []
        for prompt, group in zip(prompts, groups):
            for c in group:
                ids = torch.tensor([prompt + c.token_ids])
                with torch.no_grad(), learner_autocast(autocast):
                    logp, _ = token_logprobs(model, ids, torch.ones_like(ids), r.temperature)
                out.append(logp[0, len(prompt):] - torch.tensor(c.logprobs))
        return torch.cat(out)

    fp32, bf16 = deltas(None), deltas("bfloat16")
    assert fp32.abs().max() < 1e-3  # the control: the same computation in float32
    print(f"bf16 autocast vs engine: mean |dlogp| {bf16.abs().mean():.4f}, max {bf16.abs().max():.3f}, "
          f"ratio mean {bf16.exp().mean():.4f}, tokens outside the clip range {(bf16.abs() > 0.18).float().mean():.4f}")
    assert 0 < bf16.abs().mean() < 0.05  # bf16 compute did happen, and stays close
    assert abs(bf16.exp().mean().item() - 1) < 0.02
    assert (bf16.exp() - 1).abs().gt(load_config(None).algo.clip_eps).float().mean() < 0.05
