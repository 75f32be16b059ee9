"""Load: many short steps with a tiny model through the real actors (transformers rollout engine, rule
GSRM reward worker, DeepSpeed learner). No actor's private memory, the Ray object store and the
driver's object references grow beyond the margins below from the first window of steps to the last.

What is measured, and why (per-step series of 2026-11-28, tiny model: one weight version is 25 MiB):
- An actor's private anonymous memory (RssAnon), not its RSS: RSS also counts the object-store pages
  the actor has mapped (RssShmem). Each weight version lands at a new place in the store, so RssShmem
  rose 25 -> 50 -> 75 -> 100 MiB over the first 14 steps and then stayed; those are the "~25 MiB jumps"
  an RSS bound kept tripping on, and they are shared memory, not a leak.
- Each window's floor (its minimum), not one step's value: the rollout worker's RssAnon swings between
  370 and 442 MiB within a step (it holds the received weights while loading them), and the store holds
  2 or 3 versions at a logging point depending on when Ray frees the old one (50 or 75 MiB). A leak
  raises the floor; a transient does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rlkd_ray.config import load_config

pytestmark = pytest.mark.slow
CONF = Path(__file__).resolve().parent.parent / "conf"
STEPS, WINDOW = 40, 10  # floors of steps 11-20 (after warm-up) and of steps 31-40 are compared
ANON_MARGIN_MIB = 16  # per actor: RssAnon floor growth (a leaked weight version alone is 25 MiB)
STORE_MARGIN_MIB = 8
REFS_MARGIN = 8  # object references the driver holds


def private_mib(pid: int) -> float:
    """The process's private anonymous resident memory (RssAnon of /proc/<pid>/status), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
    return kib / 1024


def floors(series: list, first: int, last: int) -> tuple:
    """The minimum of `series` over steps first..last (1-based) and over the final `last - first + 1`."""
    n = last - first + 1
    return min(series[first - 1:last]), min(series[-n:])


def object_store_mib(ray) -> float:
    """Plasma memory in use on the cluster (`ray memory --stats-only`)."""
    from ray._private.internal_api import memory_summary

    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    line = next(line for line in text.splitlines() if line.startswith("Plasma memory usage"))
    return float(line.split()[3])


def test_many_short_steps_grow_no_memory_and_leak_no_references(ray_cluster, cache_dir, tiny_model_path, tmp_path,
                                                                scenario):
    import ray

    from rlkd_ray.controller.driver import Driver

    cfg = load_config(CONF / "local.yaml", [
        f"paths.run_dir={tmp_path / 'run'}", f"paths.cache_dir={cache_dir}", "logging.progress=false",
        "logging.tensorboard=false", f"model.student={tiny_model_path}", "rollout.engine.backend=hf",
        "rollout.engine.cpu_cores=null", "rollout.max_new_tokens=8", "rollout.group_size=2",
        "trainer.prompts_per_step=2", "learner.micro_batch_size=4", f"trainer.total_steps={STEPS}", "trainer.eval_every=0",
        "trainer.eval_at_start=false", f"trainer.save_every={STEPS}", "trainer.sample_log_every=1",
        "learner.cpu_threads=1", "rollout.num_cpus=0.25", "reward.num_cpus=0.25",
        "learner.num_cpus=0.25"])
    core_worker = ray._private.worker.global_worker.core_worker
    anon, store, refs = [], [], []  # per step: {actor: RssAnon MiB}, object store MiB, driver refs
    with Driver(cfg) as driver:
        handles = {f"{pool.name} {wid}": h for pool in (driver.rollouts, driver.rewards, driver.learner.ranks)
                   for wid, h in pool.members().items()}
        pids = {name: ray.get(h.__ray_call__.remote(lambda self: os.getpid())) for name, h in handles.items()}
        log = driver.writer.log

        def log_and_measure(step, metrics):
            log(step, metrics)
            anon.append({name: private_mib(pid) for name, pid in pids.items()})
            store.append(object_store_mib(ray))
            refs.append(len(core_worker.get_all_reference_counts()))

        driver.writer.log = log_and_measure
        summary = driver.run()
    assert summary["steps"] == STEPS and len(store) == STEPS
    first, last = WINDOW + 1, 2 * WINDOW
    anon_floors = {name: floors([a[name] for a in anon], first, last) for name in pids}
    store0, store1 = floors(store, first, last)
    refs0, refs1 = floors(refs, first, last)
    growth = {name: f1 - f0 for name, (f0, f1) in anon_floors.items()}
    assert max(growth.values()) <= ANON_MARGIN_MIB, anon_floors
    assert store1 - store0 <= STORE_MARGIN_MIB, (store0, store1)
    assert refs1 - refs0 <= REFS_MARGIN, (refs0, refs1)
    scenario.record(
        "load", f"{STEPS} short steps (tiny model, transformers rollout engine, rule GSRM): floors of steps "
        f"{first}-{last} against steps {STEPS - WINDOW + 1}-{STEPS}", survived=f"no actor's private memory (RssAnon) "
        f"grew more than {ANON_MARGIN_MIB} MiB, the object store not more than {STORE_MARGIN_MIB} MiB, the driver's "
        f"object references not more than {REFS_MARGIN}", lost="nothing",
        **{f"private_mib[{name}]": f"{f0:.0f} -> {f1:.0f}" for name, (f0, f1) in anon_floors.items()},
        object_store_mib=f"{store0:.0f} -> {store1:.0f}", driver_refs=f"{refs0} -> {refs1}")
