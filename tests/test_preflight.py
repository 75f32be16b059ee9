"""Checks before any actor starts: engine contexts against the models' own configs, shared paths on a
joined cluster; and the writers that create their folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlkd_ray.config import ConfigError, load_config
from rlkd_ray.controller.preflight import check_model_lengths, check_shared_paths, model_context

CONF = Path(__file__).resolve().parent.parent / "conf"


def qwen2_config(folder: Path, positions: int) -> str:
    """config.json of a Qwen2 model (no weights): what the check reads."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": 152064, "hidden_size": 3584,
        "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
        "max_position_embeddings": positions, "rope_theta": 10000.0}))
    return str(folder)


def test_too_long_rollout_context_names_both_numbers(student_path):
    cfg = load_config(CONF / "math_local.yaml", [f"model.student={student_path}", f"model.gsrm={student_path}",
                                             "rollout.engine.max_model_len=10000"])
    with pytest.raises(ConfigError, match=r"rollout.engine.max_model_len=10000 is longer than .*max_position_embeddings=8192"):
        check_model_lengths(cfg)
    cfg = load_config(CONF / "math_local.yaml", [f"model.student={student_path}", f"model.gsrm={student_path}",
                                             "reward.engine.max_model_len=9000"])
    with pytest.raises(ConfigError, match=r"reward.engine.max_model_len=9000 .*8192"):
        check_model_lengths(cfg)
    check_model_lengths(load_config(CONF / "math_local.yaml", [f"model.student={student_path}",
                                                          f"model.gsrm={student_path}"]))


def test_prompt_plus_completion_must_fit_the_rollout_engine(student_path):
    with pytest.raises(ConfigError, match=r"= 1112 is over 'rollout.engine.max_model_len' = 1024"):
        load_config(CONF / "math_local.yaml", [f"model.student={student_path}", "rollout.max_prompt_tokens=512",
                                               "rollout.max_new_tokens=600", "reward.weights.structure=0"])


def test_trainer_refuses_before_any_actor_starts(student_path, tmp_path):
    from rlkd_ray.controller.driver import Driver

    cfg = load_config(CONF / "math_local.yaml", [f"model.student={student_path}", f"model.gsrm={student_path}",
                                             "rollout.engine.max_model_len=10000", f"paths.run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match="10000"):
        Driver(cfg)
    assert not (tmp_path / "run").exists()  # refused before the run folder is claimed, so before any actor


def test_cluster_recipes_fit_qwen25_math_7b(tmp_path):
    """The shipped GPU recipes against the real models' context (4,096 and 32,768 positions)."""
    student = qwen2_config(tmp_path / "Qwen2.5-Math-7B", 4096)
    gsrm = qwen2_config(tmp_path / "Qwen2.5-7B-Instruct", 32768)
    for name in ("cluster.yaml", "cluster_multinode.yaml"):
        cfg = load_config(CONF / name, [f"model.student={student}", f"model.gsrm={gsrm}"])
        check_model_lengths(cfg)
        assert cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens <= cfg.rollout.engine.max_model_len <= 4096
        # what the old recipe asked for: vLLM would refuse it in every rollout actor
        old = load_config(CONF / name, [f"model.student={student}", f"model.gsrm={gsrm}",
                                        "rollout.engine.max_model_len=5120", "rollout.max_new_tokens=4096"])
        with pytest.raises(ConfigError, match=r"max_model_len=5120 is longer than .*max_position_embeddings=4096"):
            check_model_lengths(old)


def test_rope_scaling_stretches_the_context(tmp_path):
    path = qwen2_config(tmp_path / "m", 4096)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["rope_scaling"] = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    length, source = model_context(path)
    assert length == 16384 and "yarn" in source


def test_relative_paths_are_refused_on_a_joined_cluster(monkeypatch, capsys):
    from rlkd_ray.cli import main

    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    cfg = load_config(CONF / "math_local.yaml", ["paths.run_dir=runs/x"])
    with pytest.raises(ConfigError, match=r"paths.run_dir='runs/x': relative path on the Ray cluster at http://head:8265"):
        check_shared_paths(cfg, ["paths.run_dir", "paths.cache_dir"])
    for name in ("cluster.yaml", "cluster_multinode.yaml"):  # the shipped cluster recipes pass
        check_shared_paths(load_config(CONF / name), ["paths.run_dir", "paths.cache_dir"])
    assert main(["train", "--config", str(CONF / "cluster.yaml"), "paths.cache_dir=cache"]) == 2
    assert "paths.cache_dir='cache': relative path" in capsys.readouterr().err
    monkeypatch.delenv("RAY_ADDRESS")
    check_shared_paths(cfg, ["paths.run_dir"])  # a loopback cluster of this process: one node, one folder
