"""Bad input met by a running training job (issue: reliability, item 3), through real Ray actors on the
tiny model: problems whose prompt is over `rollout.max_prompt_tokens` and bad rows are left out and
counted in every step's metrics and in the run's summary; a custom reward that returns NaN stops the
run with an error that names the reward and the sample, without the remote traceback."""

from __future__ import annotations

import json

import pytest
from test_pipeline import read_jsonl, run_cfg

pytestmark = pytest.mark.slow


def write_problems(path) -> None:
    rows = [{"id": f"p{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(6)]
    rows.insert(2, {"id": "long", "problem": "Add all of these numbers: " + " + ".join(["17"] * 400), "answer": "6800"})
    rows.insert(4, {"id": "bad", "problem": ["not", "text"], "answer": "1"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def overrides(tmp_path, tiny_model_path, *more):
    return (f"model.student={tiny_model_path}", f"model.gsrm={tiny_model_path}", "data.name=bad-input-run",
            "data.train.kind=file", f"data.train.path={tmp_path / 'problems.jsonl'}", "data.train.columns.id=id",
            "data.train.columns.teacher_reasoning=null", "data.train.limit=null", "data.eval=[]", "data.skip_bad_rows=true",
            "trainer.total_steps=1", "trainer.save_every=100", "rollout.num_cpus=0.25", "reward.num_cpus=0.25",
            "rollout.max_new_tokens=16", *more)


def test_too_long_prompts_and_bad_rows_are_left_out_and_counted(ray_cluster, tiny_model_path, tmp_path, scenario):
    """data: a problem over rollout.max_prompt_tokens and a bad row, met by a training run"""
    from rlkd_ray.controller.driver import Driver

    write_problems(tmp_path / "problems.jsonl")
    cfg = run_cfg(tmp_path / "run", tmp_path / "cache", *overrides(tmp_path, tiny_model_path))
    with Driver(cfg) as trainer:
        summary = trainer.run()
        trained_on = {trainer.source.group(0, slot).problem.id for slot in range(cfg.trainer.prompts_per_step)}
        kept = [p.id for p in trainer.source.problems]
    assert summary["steps"] == 1 and summary["left_out"] == {"bad_rows": 1, "prompts_too_long": 1}
    assert kept == [f"p{i}" for i in range(6)] and trained_on <= set(kept)
    (metrics,) = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert (metrics["data/bad_rows"], metrics["data/prompts_too_long"]) == (1, 1)
    assert metrics["batch/unique_groups"] == cfg.trainer.prompts_per_step
    scenario.record("bad input", "data: a problem over rollout.max_prompt_tokens and a bad row, in a training run",
                    survived="the run trains every step on the other problems",
                    lost="only the long problem and the bad row, left out once at start and counted in every "
                         "step's metrics (data/prompts_too_long, data/bad_rows) and the summary",
                    prompts_too_long=metrics["data/prompts_too_long"], bad_rows=metrics["data/bad_rows"],
                    problems_kept=len(kept))


def test_custom_reward_returning_nan_stops_the_run_naming_the_sample(ray_cluster, tiny_model_path, tmp_path,
                                                                    scenario):
    """custom reward returning NaN inside a training run"""
    from rlkd_ray.controller.driver import Driver
    from rlkd_ray.rewards import RewardError

    write_problems(tmp_path / "problems.jsonl")
    cfg = run_cfg(tmp_path / "run", tmp_path / "cache", *overrides(
        tmp_path, tiny_model_path, "reward.custom=[{name: nan, fn: 'custom_rewards:not_a_number', weight: 1.0}]"))
    with pytest.raises(RewardError) as e:
        with Driver(cfg) as trainer:
            trainer.run()
    message = str(e.value)
    assert message.startswith("custom reward 'nan' (custom_rewards.not_a_number) returned nan for sample 's0-p")
    assert "(problem 'p" in message and "Traceback" not in message and "\n" not in message
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no step trained on a made-up reward
    scenario.record("bad input", "custom reward returning NaN inside a training run",
                    survived="the run stops before its first optimizer step with one line naming the reward, its "
                             "function, the sample id and the problem", lost="nothing: no step trained on it")
