"""A real `rlkd train` process on its own loopback cluster (tiny model, transformers engines), stopped
the ways runs are stopped: SIGTERM, Ctrl-C twice, SIGKILL in the middle of a checkpoint save. After
each: the run directory (checkpoints, metrics) and the process table (nothing the run started is
left), then a resume that continues exactly where the last complete checkpoint left off."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from rlkd_ray.controller import checkpointing
from rlkd_ray.controller.metrics import read_metrics

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "rlkd_ray.cli"]


def train_args(run_dir, tiny_model_path, cache_dir, *overrides):
    return ["train", "--config", "conf/local.yaml", f"paths.run_dir={run_dir}", f"paths.cache_dir={cache_dir}",
            f"model.student={tiny_model_path}", f"model.gsrm={tiny_model_path}", "rollout.engine.backend=hf",
            "reward.engine.backend=hf", "data.train.limit=16", "rollout.max_new_tokens=16",
            "reward.decompose_max_new_tokens=16", "trainer.eval_every=0", "logging.progress=false",
            "logging.tensorboard=false",
            # a length bonus: non-zero advantages from the first step, so that every step changes the weights
            "reward.custom=[{name: length, fn: 'custom_rewards:length_bonus', weight: 1.0}]", *overrides]


def start(args, log_dir: Path, name: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]), OMP_NUM_THREADS="1")
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(CLI + args, cwd=REPO, env=env, stdout=open(log_dir / f"{name}.out", "w"),
                            stderr=open(log_dir / f"{name}.err", "w"))


def finish(proc: subprocess.Popen, log_dir: Path, name: str, timeout: float = 300):
    proc.wait(timeout=timeout)
    return proc.returncode, (log_dir / f"{name}.out").read_text(), (log_dir / f"{name}.err").read_text()


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 300, every: float = 0.05) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"rlkd train exited early with {proc.returncode}"
        assert time.time() < deadline, "timed out"
        time.sleep(every)


def metric_steps(run_dir: Path):
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.endswith("}")]


def descendants(proc: subprocess.Popen):
    return [(p.pid, p.create_time()) for p in psutil.Process(proc.pid).children(recursive=True)]


def assert_all_ended(recorded, timeout: float = 30) -> None:
    """Every recorded process (pid and start time) has ended: nothing outlives the run."""
    def alive():
        out = []
        for pid, started in recorded:
            try:
                p = psutil.Process(pid)
                if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(f"{pid} {p.name()}")
            except psutil.NoSuchProcess:
                continue
        return out

    deadline = time.time() + timeout
    while alive() and time.time() < deadline:
        time.sleep(0.5)
    assert not alive(), f"left running: {alive()}"


def resume_command(err: str):
    match = re.search(r"resume: (rlkd train .*)$", err, re.M)
    assert match, err
    argv = shlex.split(match.group(1))
    return argv[1:]  # without "rlkd"


def start_long_run(run_dir, tiny_model_path, cache_dir, log_dir, name):
    """A 50-step run that checkpoints only when stopped, once its first step is logged; with the
    processes it has started by then."""
    proc = start(train_args(run_dir, tiny_model_path, cache_dir, "trainer.total_steps=50", "trainer.save_every=100"),
                 log_dir, name)
    wait_for(lambda: len(metric_steps(run_dir)) >= 1, proc)
    return proc, descendants(proc)


def test_sigterm_stops_at_a_safe_point_checkpoints_and_resumes(tiny_model_path, cache_dir, tmp_path, scenario):
    run_dir = tmp_path / "run"
    proc, started = start_long_run(run_dir, tiny_model_path, cache_dir, tmp_path, "first")
    proc.send_signal(signal.SIGTERM)
    rc, out, err = finish(proc, tmp_path, "first")
    assert rc == 128 + signal.SIGTERM, err
    assert "Traceback" not in out + err, err
    steps = metric_steps(run_dir)
    n = steps[-1]
    assert steps == list(range(1, n + 1))  # the step in flight was finished (or dropped), never half-applied
    ckpt = checkpointing.step_dir(run_dir, n)
    assert f"stopped by SIGTERM after step {n} of 50; last checkpoint: {ckpt};" in err
    assert (run_dir / "checkpoints" / "latest").read_text() == ckpt.name and checkpointing.problem(ckpt) is None
    assert_all_ended(started)

    # The printed command continues the run; metrics go on without a gap or a repeat.
    proc = start(resume_command(err) + [f"trainer.total_steps={n + 1}"], tmp_path, "resumed")
    rc, out, err = finish(proc, tmp_path, "resumed")
    assert rc == 0, err[-3000:]
    assert f"resume: {ckpt} (step {n}, policy version {n})" in out
    assert metric_steps(run_dir) == list(range(1, n + 2))
    assert checkpointing.read_state(checkpointing.latest_checkpoint(run_dir))["version"] == n + 1
    scenario.record("fault", "SIGTERM to `rlkd train` mid-run (preemption), then the printed resume command",
                    survived="the step in flight, a checkpoint of it, every actor ended; the resumed run's metrics go "
                             "on without a gap or a repeat", lost="nothing", steps_before_stop=n)


def test_second_ctrl_c_stops_at_once(tiny_model_path, cache_dir, tmp_path, scenario):
    run_dir = tmp_path / "run"
    proc, started = start_long_run(run_dir, tiny_model_path, cache_dir, tmp_path, "run")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)  # the second while the first stop is under way: both may reach the driver before its handler runs
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    rc, out, err = finish(proc, tmp_path, "run", timeout=60)
    assert rc == 128 + signal.SIGINT
    assert time.time() - t0 < 30
    assert "Traceback" not in out + err, err
    # (the "stopping after the step in flight" line only if the driver ran its handler between the two)
    assert "rlkd train: stopped at once; last checkpoint: " in err and "trainer.resume=true" in err
    assert_all_ended(started)
    scenario.record("fault", "Ctrl-C twice on `rlkd train`", survived="the last checkpoint, named with the resume "
                    "command; no process left", lost="the step in flight (the second Ctrl-C asks for that)",
                    seconds_to_exit=round(time.time() - t0, 1))


def test_kill_9_during_a_checkpoint_save_leaves_no_process_and_resumes_from_the_one_before(
        tiny_model_path, cache_dir, tmp_path, scenario):
    run_dir = tmp_path / "run"
    # A learning rate that changes every step (warmup, then cosine): the resumed schedule position shows.
    args = train_args(run_dir, tiny_model_path, cache_dir, "trainer.total_steps=4", "trainer.save_every=1",
                      "learner.optim.schedule=cosine", "learner.optim.warmup_ratio=0.5")
    proc = start(args, tmp_path, "killed")
    partial = [None]

    def saving_after_step_one():
        found = [p for p in (run_dir / "checkpoints").glob("step_*.partial") if p.name != "step_000001.partial"]
        partial[0] = found[0] if found else None
        return partial[0] is not None

    wait_for(saving_after_step_one, proc, every=0.01)
    started = descendants(proc)
    proc.kill()
    proc.wait()
    assert_all_ended(started)  # Ray's agents included (they used to outlive a SIGKILLed driver)

    k = int(partial[0].name[len("step_"):-len(".partial")])
    assert metric_steps(run_dir)[-1] >= k  # step k was logged before its save began
    previous = checkpointing.latest_checkpoint(run_dir)
    assert previous is not None and checkpointing.read_state(previous)["step"] < k
    j = checkpointing.read_state(previous)["step"]
    killed_attempt = {m["step"]: m for m in read_metrics(run_dir)}
    proc = start(args + ["trainer.resume=true"], tmp_path, "resumed")
    rc, out, err = finish(proc, tmp_path, "resumed")
    assert rc == 0, err[-3000:]
    assert f"resume: {previous} (step {j}, policy version {j}; dropped " in out
    assert metric_steps(run_dir) == [1, 2, 3, 4]  # steps after j logged again, none twice
    # Exact resume: the steps redone from checkpoint j equal those of the killed attempt (transformers
    # engine, same seeds, same learner state and RNG).
    for m in read_metrics(run_dir):
        if j < m["step"] <= k:
            for key in ("reward/total", "response_length", "learner/kl", "learner/grad_norm", "learner/lr"):
                assert m[key] == pytest.approx(killed_attempt[m["step"]][key], rel=1e-4, abs=1e-6, nan_ok=True), key
    assert checkpointing.latest_checkpoint(run_dir) == checkpointing.step_dir(run_dir, 4)
    scenario.record("fault", "SIGKILL of `rlkd train` in the middle of a checkpoint save, then trainer.resume=true",
                    survived="no process left; the previous checkpoint is used; the redone steps equal the killed "
                             "attempt's (every reward, KL, grad norm, lr; transformers engine)",
                    lost="nothing: the partial save is ignored and cleared", killed_saving_step=k, resumed_from=j)
