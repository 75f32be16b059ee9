"""`ray job submit --working-dir . -- rlkd train ...` against a loopback `ray start --head`.

The head runs in its own process group (`ray start --block`), and only that group is stopped at the
end: never `ray stop`, which would also stop clusters this test did not start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from rlkd_ray.ray_session import LOCAL_RAY_ENV

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"{url} did not answer in {timeout:.0f} s")


@pytest.fixture
def ray_head(tmp_path):
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ, **LOCAL_RAY_ENV, PATH=f"{bin_dir}:{os.environ['PATH']}", OMP_NUM_THREADS="1")
    env.pop("RAY_ADDRESS", None)
    gcs_port, dash_port = free_port(), free_port()
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    log = open(tmp_path / "ray_head.log", "w")
    head = subprocess.Popen(
        [f"{bin_dir}/ray", "start", "--head", "--block", f"--port={gcs_port}", "--num-cpus=4",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
         "--disable-usage-stats", f"--temp-dir={temp_dir}",
         # Own ports for the node's agents: another Ray instance of this test session holds the defaults.
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash_port}"
    try:
        wait_http(f"{address}/api/version", timeout=120)
        yield address, env
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)



def submit_job(cmd, env, timeout: float) -> subprocess.CompletedProcess:
    """`ray job submit ...`, retried while the head's job agent is not up yet (it starts a little after
    the head's HTTP server; bounded wait); it must succeed."""
    for _ in range(12):
        out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        if "No available agent to submit job" not in out.stdout + out.stderr:
            break
        time.sleep(10)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    return out

def test_ray_job_submit_trains(ray_head, tiny_model_path, cache_dir, tmp_path):
    address, env = ray_head
    run_dir = tmp_path / "run"
    cmd = ["ray", "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
           "rlkd", "train", "--config", "conf/local.yaml", f"model.student={tiny_model_path}",
           f"model.gsrm={tiny_model_path}", f"paths.run_dir={run_dir}", f"paths.cache_dir={cache_dir}",
           "trainer.total_steps=1", "data.train.limit=8", "rollout.max_new_tokens=16",
           "reward.decompose_max_new_tokens=16", "trainer.eval_every=0", "logging.progress=false"]
    out = submit_job(cmd, env, timeout=900)
    assert "succeeded" in out.stdout
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1]
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_000001"


def test_ray_job_stop_checkpoints_names_it_and_ends_the_actors(ray_head, tiny_model_path, cache_dir, tmp_path):
    """`ray job stop` sends SIGTERM: the job stops at a safe point, checkpoints, names the checkpoint
    in its log, and its actors end. The job gets more than Ray's default 3 s before SIGKILL."""
    from ray.util.state import list_actors

    from rlkd_ray.controller import checkpointing

    address, env = ray_head
    run_dir = tmp_path / "run"
    job_id = f"rlkd-stop-{os.getpid()}"
    runtime_env = json.dumps({"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "180"}})
    submit = ["ray", "job", "submit", "--address", address, "--working-dir", str(REPO), "--no-wait",
              "--submission-id", job_id, "--runtime-env-json", runtime_env, "--",
              "python", "-m", "rlkd_ray.cli", "train", "--config", "conf/local.yaml", f"model.student={tiny_model_path}",
              f"model.gsrm={tiny_model_path}", f"paths.run_dir={run_dir}", f"paths.cache_dir={cache_dir}",
              "trainer.total_steps=50", "trainer.save_every=1", "trainer.eval_every=0", "data.train.limit=8",
              "rollout.engine.backend=hf", "reward.engine.backend=hf", "rollout.max_new_tokens=16",
              "reward.decompose_max_new_tokens=16", "logging.progress=false", "logging.tensorboard=false"]
    submit_job(submit, env, timeout=300)

    def logs() -> str:
        return subprocess.run(["ray", "job", "logs", "--address", address, job_id], env=env, capture_output=True,
                              text=True, timeout=60).stdout

    deadline = time.time() + 600
    while not (run_dir / "checkpoints" / "latest").exists():
        assert time.time() < deadline, logs()[-4000:]
        time.sleep(1)
    stop = subprocess.run(["ray", "job", "stop", "--address", address, job_id], env=env, capture_output=True,
                          text=True, timeout=300)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    status = subprocess.run(["ray", "job", "status", "--address", address, job_id], env=env, capture_output=True,
                            text=True, timeout=60).stdout
    assert "was stopped" in status, status

    log = logs()
    assert "rlkd: SIGTERM: stopping after the step in flight (last checkpoint: " in log, log[-4000:]
    assert "Traceback" not in log, log[-4000:]
    stopped = re.search(r"rlkd train: stopped by SIGTERM after step (\d+) of 50; last checkpoint: (\S+);", log)
    assert stopped, log[-4000:]
    step, ckpt = int(stopped.group(1)), Path(stopped.group(2))
    assert ckpt == checkpointing.step_dir(run_dir, step) == checkpointing.latest_checkpoint(run_dir)
    ours = {"Learner", "RolloutWorker", "RewardWorker", "Control"}
    alive = [a.class_name for a in list_actors(address=address, filters=[("state", "=", "ALIVE")])]
    assert not ours & set(alive), alive
