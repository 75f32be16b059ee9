"""`make train-local`'s configuration (conf/local.yaml) for two short steps through real Ray actors:
the arithmetic domain, the real SmolLM2 student on its engine, the rule decomposer and exact judge
(no model in the reward pool), both cores for the busy stage, bf16 autocast in the learner, and the
held-out eval before the first step and after the last, summarised at the end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlkd_ray.config import load_config

pytestmark = pytest.mark.slow
CONF = Path(__file__).resolve().parent.parent / "conf"


def test_local_config_learns_signal_and_evaluates_before_and_after(ray_cluster, cache_dir, student_path, tmp_path):
    import importlib.util

    from rlkd_ray.controller.driver import Driver
    from rlkd_ray.report.summary import training_summary

    backend = "vllm" if importlib.util.find_spec("vllm") else "hf"
    cfg = load_config(CONF / "local.yaml", [
        f"paths.run_dir={tmp_path}", f"paths.cache_dir={cache_dir}", "logging.progress=false",
        f"rollout.engine.backend={backend}", "trainer.total_steps=2", "trainer.eval_every=2",
        "trainer.save_every=2", "trainer.eval_limit=8", "trainer.prompts_per_step=4",
        "rollout.group_size=4", "data.arith.train_size=200", "data.arith.test_size=50", "data.arith.hard_size=20"])
    assert cfg.reward.gsrm_backend == "rule" and cfg.learner.autocast == "bfloat16"
    with Driver(cfg) as trainer:
        summary = trainer.run()
    assert summary["steps"] == 2

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/arith_test/pass@1" in r]
    assert [r["step"] for r in evals] == [0, 2]  # the initial weights, then the trained ones
    for r in evals:
        assert r["eval/arith_test/pass@1_low"] <= r["eval/arith_test/pass@1"] <= r["eval/arith_test/pass@1_high"]
    steps = [r for r in records if "reward/total" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert r["learner/grad_norm"] > 0  # some group had unequal rewards: the weights moved
        assert r["count/teacher_parse_failures"] == 0  # exact teacher structures came with the data
        assert r["reward/structure"] > 0
    # some group of the run had unequal rewards, and the structure reward told some group's samples apart
    # (2 steps of 4 sampled groups: a single step may have neither)
    assert any(r["batch/zero_signal_groups"] < 1 for r in steps)
    assert any(r["structure/varying_groups"] > 0 for r in steps)
    text = training_summary(tmp_path)
    assert "reward/structure" in text and "accuracy" in text
    assert "held-out arith_test pass@1 (95% interval): step 0:" in text and "-> step 2:" in text
