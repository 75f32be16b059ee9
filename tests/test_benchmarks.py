"""The benchmarks' pure parts: the docs/benchmarks.md section writer, the planning model and the sleep
engines. No timing is asserted here; the benchmarks themselves run from their make targets."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
_report = importlib.import_module("_report")
plan_model = importlib.import_module("plan_model")
sleep_engines = importlib.import_module("sleep_engines")
local_step = importlib.import_module("local_step")
vs_trl = importlib.import_module("vs_trl")


def test_sections_replace_their_own_text_and_keep_the_rest(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nProse the lead wrote.\n")
    meta = dict(cmd="python x.py", vers={"torch": "1"}, host="cpu", when="now")
    _report.write_section("a", _report.section("a", "A", "first", **meta), doc)
    _report.write_section("b", _report.section("b", "B", "other", **meta), doc)
    _report.write_section("a", _report.section("a", "A", "second", **meta), doc)
    text = doc.read_text()
    assert "Prose the lead wrote." in text and "second" in text and "other" in text and "first" not in text
    assert text.count("bench:a:start") == 1 and text.index("bench:a:start") < text.index("bench:b:start")
    assert "`python x.py`" in text and "torch 1" in text


def test_table_formats_cells():
    t = _report.table(["x", "y"], [(1.23456, None), ("a|b", 2)])
    assert t.splitlines()[2] == "| 1.23 | — |" and "a\\|b" in t


def stages(**kw):
    return plan_model.Stages(**{"generate_s": 0.01, "reward_s": 0.05, "train_s": 0.2, "sync_s": 0.02, **kw})


def test_on_policy_step_is_the_sum_of_the_stages():
    # 8 groups of 4 on 8 rollout and 8 reward workers: one group each, stages one after another
    p = plan_model.simulate(stages(), 8, 8, 8, 4, steps=4, max_staleness=0)
    assert p.step_s == pytest.approx(4 * 0.01 + 4 * 0.05 + 0.2 + 0.02)
    assert 0 < p.rollout_idle < 1 and 0 < p.reward_idle < 1


def test_staleness_overlaps_stages_down_to_the_slowest():
    s = stages(reward_s=0.1)  # reward: 8 groups x 4 x 0.1 s on 2 workers = 1.6 s per step
    on = plan_model.simulate(s, 8, 2, 8, 4, steps=8, max_staleness=0, warmup_steps=2)
    off = plan_model.simulate(s, 8, 2, 8, 4, steps=8, max_staleness=1, warmup_steps=2)
    assert off.step_s < on.step_s
    assert off.step_s == pytest.approx(off.slowest_stage_s, rel=0.02) == pytest.approx(1.6)
    assert off.reward_idle == pytest.approx(0.0, abs=0.05)


def test_driver_time_per_event_bounds_the_step():
    # a finished rollout and reward per group and a load per worker: 192 events of 10 ms per step
    p = plan_model.simulate(stages(driver_s=0.01), 64, 64, 64, 4, steps=10, max_staleness=1, warmup_steps=3)
    assert p.step_s == pytest.approx((2 * 64 + 64 + 1) * 0.01, rel=0.1)


def test_splits_fill_the_budget_up_to_the_pool_limits():
    s = plan_model.splits(400, 8)
    assert s[0] == (256, 1) and len(s) == 64 and s[-1] == (256, 64)
    assert all(r + w <= 392 and r <= 256 and w <= 64 for r, w in s)
    assert plan_model.splits(10, 8) == [(1, 1)]
    plans = plan_model.plan(stages(), 24, 4, 16, 4, max_staleness=1, steps=3)
    assert plan_model.best(plans).step_s == min(p.step_s for p in plans)


def test_sleep_engine_speaks_the_engine_interface():
    from rlkd_ray.engines.base import Sampling

    e = sleep_engines.SleepEngine(sleep_engines.Latencies(generate_s=0, reward_s=0, sync_s=0, completion_tokens=5))
    out = e.generate([[1, 2], [3]], Sampling(n=3, temperature=0.7, max_new_tokens=4))
    assert [len(g) for g in out] == [3, 3] and len(out[0][0].token_ids) == len(out[0][0].logprobs) == 4
    structure = e.generate([[1], [2]], Sampling(n=1, temperature=0.0))[0][0].text
    from rlkd_ray.gsrm import parse_structure

    assert len(parse_structure(structure).steps) == 1
    assert len(e.score_choices([[1]], ["yes", "Yes", "no", "No"])[0]) == 4
    e.load_weights(3, {})
    assert e.version == 3


def test_stand_ins_take_what_the_actors_pass_to_the_real_things():
    """The sleep engine factory and learner are swapped in for the real ones inside the project's own
    actors: their signatures must follow (a `gpus` argument added to make_engine once broke
    `make bench-driver` with no test failing)."""
    import inspect

    from rlkd_ray.engines import make_engine
    from rlkd_ray.learner.policy import DeepSpeedPolicy

    def params(f):
        return [(p.name, p.default) for p in inspect.signature(f).parameters.values()]

    assert params(sleep_engines.make_sleep_engine) == params(make_engine)
    assert params(sleep_engines.SleepLearner.__init__) == params(DeepSpeedPolicy.__init__)


def test_sleep_learner_checkpoints_commit(tmp_path):
    from types import SimpleNamespace

    from rlkd_ray.controller import checkpointing

    learner = sleep_engines.SleepLearner(SimpleNamespace(trainer=SimpleNamespace(seed=0)), "unused")
    staging = checkpointing.staging_dir(tmp_path, 3)
    learner.save(str(staging), {"step": 3})
    assert checkpointing.commit(staging, {"step": 3}) == checkpointing.step_dir(tmp_path, 3)
    assert checkpointing.latest_checkpoint(tmp_path) == checkpointing.step_dir(tmp_path, 3)


def test_local_step_rows_keep_stage_times_apart_from_rewards():
    def run(step, generate, train):
        return {"time": {"step": [step, step], "generate": [generate] * 2, "reward": [0.05] * 2,
                         "train": [train] * 2, "sync": [1.0] * 2},
                "reward_total": [4.0, 6.0], "length": [20, 30]}

    rows = local_step.summarise({"before": run(60.0, 8.0, 50.0), "local": run(30.0, 7.0, 20.0)})
    name, step, lo, hi, gen, reward, train, sync, slowest, ratio, speedup, length, rewards = rows[1]
    assert (name, step, gen, reward, train, sync) == ("local", 30.0, 7.0, 0.05, 20.0, 1.0)
    assert slowest == "train (20 s)" and ratio == 1.5 and speedup == "2.00x" and length == 25
    assert rewards == "4.0 / 6.0"


def test_trl_gets_the_prompts_the_driver_sends(cache_dir, student_path, tmp_path):
    """Same work on both sides: TRL's chat prompts tokenise to the driver's prompt ids, in its order."""
    from transformers import AutoTokenizer

    from rlkd_ray.config import load_config
    from rlkd_ray.controller.prompt_source import PromptSource

    cfg = load_config("conf/local.yaml", [f"paths.cache_dir={cache_dir}", f"model.student={student_path}",
                                          "data.train.limit=16", "logging.progress=false"])
    source = PromptSource(cfg)
    tok = AutoTokenizer.from_pretrained(student_path)
    rows = vs_trl.trl_dataset(cfg, 6)
    P = cfg.trainer.prompts_per_step
    for i, row in enumerate(rows):
        ids = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=False)
        assert list(ids) == source.group(i // P, i % P).prompt_ids, i


def test_busy_seconds_clip_intervals_to_the_window(tmp_path):
    (tmp_path / "1.tsv").write_text("rollout\t1\t0.0\t2.0\nreward\t1\t1.0\t5.0\n")
    (tmp_path / "2.tsv").write_text("rollout\t2\t3.0\t4.0\n")
    assert sleep_engines.busy_seconds(str(tmp_path), "rollout", 1.0, 3.5) == pytest.approx(1.5)
    assert sleep_engines.busy_seconds(str(tmp_path), "reward", 1.0, 3.5) == pytest.approx(2.5)
