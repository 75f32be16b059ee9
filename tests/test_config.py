import pytest

from rlkd_ray.config import ConfigError, RLKDConfig, load_config


def test_defaults_are_the_paper_recipe():
    cfg = load_config("conf/rlkd.yaml")
    assert isinstance(cfg, RLKDConfig)
    assert cfg.rollout.group_size == 4
    assert cfg.learner.optim.lr == 5e-5 and cfg.learner.optim.warmup_ratio == 0.1
    assert cfg.learner.optim.schedule == "constant_with_warmup"
    assert cfg.trainer.prompts_per_step == 8
    assert cfg.rollout.temperature == 0.7
    assert (cfg.rollout.max_prompt_tokens, cfg.rollout.max_new_tokens) == (1024, 4096)
    assert (cfg.algo.kl_beta, cfg.algo.clip_eps, cfg.algo.kl_estimator) == (0.04, 0.2, "k3")
    assert cfg.learner.optim.grad_clip == 0.2
    w = cfg.reward.weights
    assert (w.accuracy, w.format, w.tag_count, w.structure) == (15, 10, 10, 15)
    assert cfg.reward.normalize_structure is False
    assert cfg.trainer.max_staleness == 0


def test_default_system_prompt_is_the_rlkd_releases():
    """The release's R1-Distill recipe, not Open-R1's prompt; `\\boxed` as text, not a YAML backspace."""
    prompt = load_config("conf/rlkd.yaml").rollout.system_prompt
    assert prompt.startswith("You are a helpful AI Assistant that provides well-reasoned and detailed responses.")
    assert "internal monologue" in prompt and "<think>\n...\n</think>\n<answer>\n...\n</answer>" in prompt
    assert prompt.endswith("enclosed in \\boxed{}") and "\b" not in prompt


def test_gsrm_context_must_hold_a_full_length_path():
    """A path whose decomposition prompt does not fit gets structure reward 0 while shorter paths of
    its group keep theirs (a hidden length penalty): such a config is refused, naming the numbers."""
    with pytest.raises(ConfigError, match=r"'reward\.engine\.max_model_len' is 8192.*rollout\.max_new_tokens 4096 "
                                          r"\+ prompt overhead 2304 .*reward\.decompose_max_new_tokens 10000 = 16400"):
        load_config("conf/cluster.yaml", ["reward.engine.max_model_len=8192", "rollout.max_new_tokens=4096"])
    load_config("conf/cluster.yaml", ["reward.engine.max_model_len=8192", "reward.weights.structure=0"])  # no GSRM
    for name in ("rlkd", "cluster", "cluster_multinode", "local"):
        load_config(f"conf/{name}.yaml")


def test_local_inherits_and_overrides():
    cfg = load_config("conf/local.yaml", ["trainer.total_steps=20", "reward.weights.structure=0"])
    assert cfg.model.student == "SmolLM2-135M-Instruct"
    assert cfg.trainer.total_steps == 20
    assert cfg.reward.weights.structure == 0
    assert cfg.reward.weights.accuracy == 15  # from rlkd.yaml through defaults_from
    assert cfg.learner.optim.lr == 1e-5  # conf/local.yaml overrides the recipe's 5e-5
    assert cfg.learner.optim.warmup_ratio == 0.1  # from rlkd.yaml through defaults_from


def test_unknown_key_names_it_and_the_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"trainer\.total_step'.*did you mean 'trainer\.total_steps'"):
        load_config(None, ["trainer.total_step=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout:\n  grup_size: 8\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*rollout\.grup_size.*rollout\.group_size"):
        load_config(bad)


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match="trainer.total_steps"):
        load_config(None, ["trainer.total_steps=lots"])
    with pytest.raises(ConfigError, match="algo.advantage"):
        load_config(None, ["algo.advantage=ppo"])
    with pytest.raises(ConfigError, match="rollout.group_size"):
        load_config(None, ["rollout.group_size=1"])
    with pytest.raises(ConfigError, match="learner.micro_batch_size"):
        load_config(None, ["trainer.prompts_per_step=3", "learner.micro_batch_size=8"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["trainer.total_steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config("conf/nope.yaml")


def test_every_conf_file_loads():
    from pathlib import Path

    from rlkd_ray.experiments.mini import load_experiment

    for path in sorted(Path("conf").rglob("*.yaml")):
        if path.parent.name == "experiments":  # an experiment's own schema, over a training config
            load_config(load_experiment(path).base_config)
        else:
            load_config(path)
