"""A worker node removed from a multi-node loopback cluster (`ray.cluster_utils.Cluster`) while a run
trains: the rollout and reward workers it held come back on the remaining node, every group is
trained exactly once, and the metrics count the replacements. Stand-in workers (tests/fake_workers.py).

The cluster runs in a subprocess of its own (this file run as a script), apart from the session's
Ray instance: a head node holding the learner (custom resource `rlkd_learner`) and two worker nodes
offering `rlkd_pool`, where the rollout and reward pools are kept (`cluster.rollout_node`,
`cluster.reward_node`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
P, STEPS = 4, 6


def run(run_dir: str) -> None:
    """The script: a run on a three-node cluster, the busier worker node removed during step 2."""
    import ray
    from fake_workers import FakeLearner, FakeRollout, FakeSource, SlowReward
    from ray.cluster_utils import Cluster

    from rlkd_ray.config import load_config
    from rlkd_ray.controller.driver import Driver, WorkerClasses
    from rlkd_ray.ray_session import LOCAL_RAY_ENV

    env = {**LOCAL_RAY_ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "resources": {"rlkd_learner": 1}})
    nodes = [cluster.add_node(num_cpus=1, resources={"rlkd_pool": 1}) for _ in range(2)]
    ray.init(address=cluster.address, runtime_env={"env_vars": env}, log_to_driver=False)
    cfg = load_config(TESTS.parent / "conf" / "local.yaml", [
        f"paths.run_dir={run_dir}", "logging.progress=false", "logging.tensorboard=false",
        f"trainer.prompts_per_step={P}", "rollout.group_size=2", f"trainer.total_steps={STEPS}",
        "trainer.eval_every=0", "trainer.save_every=100", "rollout.num_workers=2", "reward.num_workers=2",
        "rollout.num_cpus=0.1", "reward.num_cpus=0.1", "learner.num_cpus=0.1", "learner.micro_batch_size=1",
        "cluster.learner_node=rlkd_learner", "cluster.rollout_node=rlkd_pool", "cluster.reward_node=rlkd_pool"])
    removed = {}

    def remove_busier_node(driver):
        while driver.step < 1:
            time.sleep(0.05)
        where = {}
        for pool in (driver.rollouts, driver.rewards):
            for wid, handle in pool.members().items():
                node = ray.get(handle.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))
                where.setdefault(node, []).append(f"{pool.name} {wid}")
        node = max(nodes, key=lambda n: len(where.get(n.node_id, [])))
        removed.update(step=driver.step, node=node.node_id, workers=where.get(node.node_id, []))
        cluster.remove_node(node)

    workers = WorkerClasses(ray.remote(FakeRollout), ray.remote(SlowReward), ray.remote(FakeLearner))
    with Driver(cfg, workers=workers, source=FakeSource()) as driver:
        thread = threading.Thread(target=remove_busier_node, args=(driver,), daemon=True)
        thread.start()
        summary = driver.run()
        thread.join(timeout=60)
        alive = {ray.get(h.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))
                 for pool in (driver.rollouts, driver.rewards) for h in pool.members().values()}
    (Path(run_dir) / "node_loss.json").write_text(json.dumps({
        "summary_steps": summary["steps"], "removed": removed, "nodes_of_workers_at_the_end": sorted(alive)}))
    ray.shutdown()
    cluster.shutdown()


@pytest.mark.slow
def test_a_removed_worker_node_s_workers_come_back_on_the_remaining_node(tmp_path, scenario):
    from fake_workers import read_records

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # not the session's cluster: its own
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(TESTS.parent)])
    done = subprocess.run([sys.executable, __file__, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "node_loss.json").read_text())
    assert result["summary_steps"] == STEPS and result["removed"]["workers"], result
    assert result["removed"]["node"] not in result["nodes_of_workers_at_the_end"]
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    uids = sorted(f"s{s}-p{p}" for s in range(STEPS) for p in range(P))
    trained = read_records(tmp_path, "train")
    assert [t["steps"] for t in trained] == [[s] for s in range(STEPS)]  # every step once, in order
    assert all(m["batch/unique_groups"] == P for m in metrics)  # no group trained twice or missing
    assert sorted({r["uid"] for r in read_records(tmp_path, "reward")}) == uids
    lost = len(result["removed"]["workers"])
    assert metrics[-1]["faults/workers_replaced"] >= lost, (metrics[-1], result)
    assert metrics[-1]["pool/rollout_workers"] == 2 and metrics[-1]["pool/reward_workers"] == 2
    scenario.record("fault", "a worker node removed from a 3-node loopback cluster mid-run (stand-in workers)",
                    survived="every step, each group trained once; the lost workers replaced on the remaining node",
                    lost="nothing", workers_on_removed_node=lost, removed_during_step=result["removed"]["step"] + 1,
                    workers_replaced=metrics[-1]["faults/workers_replaced"],
                    rollout_resent=metrics[-1]["faults/rollout_resent"],
                    reward_resent=metrics[-1]["faults/reward_resent"])


if __name__ == "__main__":
    run(sys.argv[1])
