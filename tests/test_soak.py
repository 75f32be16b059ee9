"""Load: many short steps with a tiny model through the real actors (transformers rollout engine, rule
GSRM reward worker, DeepSpeed learner). Memory does not settle higher at the end than anywhere in the
first half: the floor (minimum) of the last 10 steps stays within a margin of the peak of steps 1-20,
for each actor's private memory, the Ray object store and the driver's object references. A leak
raises the floor step after step, above anything seen before; what is not a leak does not:

- Per-step series (2026-11-28, tiny model: one weight version is 25 MiB) showed three things that are
  not leaks; each tripped a point-to-point bound (step 10 vs step 40) in one of three failed runs.
- RSS counts the object-store pages a worker has mapped (RssShmem). Each weight version lands at a
  new place in the store, so RssShmem rose 25 -> 50 -> 75 -> 100 MiB over the first 14 steps and then
  stayed. Hence private anonymous memory (RssAnon) here, not RSS.
- RssAnon swings within a run: the rollout worker's between 370 and 442 MiB (it holds the received
  weights while loading them), the learner's between ~480 and ~560 MiB (allocator pages returned and
  taken again); which value a given step shows depends on timing.
- The store holds 2 or 3 weight versions at a logging point (50 or 75 MiB), depending on when Ray
  frees the previous one.

"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rlkd_ray.config import load_config

pytestmark = pytest.mark.slow
CONF = Path(__file__).resolve().parent.parent / "conf"
STEPS, FIRST_HALF, LAST = 40, 20, 10  # the peak of steps 1-20 against the floor of steps 31-40
ANON_MARGIN_MIB = 32  # per actor (a weight version leaked per step adds 25 MiB a step)
STORE_MARGIN_MIB = 8
REFS_MARGIN = 8  # object references the driver holds


def private_mib(pid: int) -> float:
    """The process's private anonymous resident memory (RssAnon of /proc/<pid>/status), in MiB."""
    with open(f"/proc/{pid}/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
    return kib / 1024


def object_store_mib(ray) -> float:
    """Plasma memory in use on the cluster (`ray memory --stats-only`)."""
    from ray._private.internal_api import memory_summary

    text = memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True)
    line = next(line for line in text.splitlines() if line.startswith("Plasma memory usage"))
    return float(line.split()[3])


def peak_and_floor(series: list) -> tuple:
    """(the largest value of the first `FIRST_HALF` steps, the smallest of the last `LAST`)."""
    return max(series[:FIRST_HALF]), min(series[-LAST:])


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
    anon_marks = {name: peak_and_floor([a[name] for a in anon]) for name in pids}
    (store0, store1), (refs0, refs1) = peak_and_floor(store), peak_and_floor(refs)
    growth = {name: floor - peak for name, (peak, floor) in anon_marks.items()}
    assert max(growth.values()) <= ANON_MARGIN_MIB, anon_marks
    assert store1 - store0 <= STORE_MARGIN_MIB, (store0, store1)
    assert refs1 - refs0 <= REFS_MARGIN, (refs0, refs1)
    scenario.record(
        "load", f"{STEPS} short steps (tiny model, transformers rollout engine, rule GSRM): the peak of steps "
        f"1-{FIRST_HALF} against the floor of steps {STEPS - LAST + 1}-{STEPS}", survived=f"no actor's private "
        f"memory (RssAnon) ended more than {ANON_MARGIN_MIB} MiB above its early peak, the object store not more "
        f"than {STORE_MARGIN_MIB} MiB, the driver's object references not more than {REFS_MARGIN}", lost="nothing",
        **{f"private_mib[{name}]": f"{peak:.0f} -> {floor:.0f}" for name, (peak, floor) in anon_marks.items()},
        object_store_mib=f"{store0:.0f} -> {store1:.0f}", driver_refs=f"{refs0} -> {refs1}")
