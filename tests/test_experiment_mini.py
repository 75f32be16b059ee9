"""The miniature experiment end to end, at toy size: real `rlkd train`, `rlkd sft` and `rlkd eval`
subprocesses with the tiny model, the results page generated, and a re-run that skips what is done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlkd_ray.experiments.mini import interval, load_experiment, main

CONF = Path(__file__).resolve().parent.parent / "conf"


def test_interval_is_the_student_t_half_width_over_seeds():
    assert interval([0.5]) == "0.500"
    assert interval([0.1, 0.2, 0.3]) == "0.200 ± 0.248"  # t(2) = 4.303, s = 0.1, n = 3


def test_load_experiment_checks_arms(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("seeds: [1]\narms: {x: {command: evaluate}}\n")
    with pytest.raises(ValueError, match="arms.x.command"):
        load_experiment(path)
    assert load_experiment(CONF / "experiments" / "repro_mini.yaml").arms.keys() == {"sft", "grpo", "rlkd", "control"}


@pytest.mark.slow
def test_mini_experiment_runs_reports_and_skips_finished_runs(tmp_path, cache_dir, tiny_model_path):
    base = tmp_path / "base.yaml"
    base.write_text(f"defaults_from: {CONF / 'local.yaml'}\n")
    common = [f"paths.cache_dir={cache_dir}", f"model.student={tiny_model_path}", f"model.gsrm={tiny_model_path}",
              "rollout.engine.backend=hf", "reward.engine.backend=hf", "rollout.engine.cpu_cores=null",
              "reward.engine.cpu_cores=null", "data.name=arith_mini", "data.train.kind=arith", "data.train.limit=null",
              "data.arith.train_size=40", "data.arith.test_size=6", "data.arith.hard_size=4",
              "trainer.total_steps=1", "trainer.eval_every=0", "trainer.save_every=1", "rollout.max_new_tokens=16",
              "reward.decompose_max_new_tokens=16", "logging.progress=false", "logging.tensorboard=false"]
    exp = tmp_path / "exp.yaml"
    exp.write_text(json.dumps({
        "base_config": str(base), "run_root": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results"),
        "seeds": [7], "common": common,
        "arms": {"sft": {"command": "sft", "label": "SFT"}, "rlkd": {"label": "RLKD"}},
        "eval": {"benchmarks": ["arith_test"], "limit": 3, "k": 2, "max_new_tokens": 8},
    }))
    assert main(["--config", str(exp)]) == 0
    page = (tmp_path / "results" / "repro_mini.md").read_text()
    for row in ("| base:", "| sft: SFT | 1 |", "| rlkd: RLKD | 1 |", "| rlkd | 7 | "):  # means, then each run
        assert row in page
    assert (tmp_path / "results" / "repro_mini_curves.png").stat().st_size > 0
    rlkd = json.loads((tmp_path / "runs" / "rlkd" / "seed_7" / "done.json").read_text())
    assert 0.0 <= rlkd["arith_test/pass@1"] <= 1.0 and 0.0 <= rlkd["zero_signal_groups"] <= 1.0
    sittings = json.loads((tmp_path / "runs" / "rlkd" / "seed_7" / "sittings.json").read_text())
    assert len(sittings) == 1 and rlkd["wall_s"] == sum(sittings) > 0  # the minutes of every sitting
    log = (tmp_path / "runs" / "rlkd" / "seed_7" / "log.txt").read_text()
    assert log.count("$ rlkd train") == 1 and log.count("$ rlkd eval") == 2
    assert main(["--config", str(exp)]) == 0  # everything done: nothing runs again
    assert (tmp_path / "runs" / "rlkd" / "seed_7" / "log.txt").read_text() == log
