"""The single controller. It reads like docs/design.md's data-flow diagram:

    PromptSource ─► RolloutPool ─(each finished group)─► RewardPool ─► Batcher ─► Learner
         ▲                                                                          │
         └──────────────────────── WeightSync (version v+1) ◄──────────────────────┘

Every remote call is an event in one `ray.wait` loop: a finished rollout goes at once to the
least-loaded reward worker (by reference: the driver never pulls the rollout), a scored group joins
the batch of its step, a full batch goes to the learner, its result is published to the rollout
workers as version v+1. `trainer.max_staleness` bounds how far rollouts may run ahead of the learner.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import ray
import torch
from ray.exceptions import RayActorError, RayTaskError

from rlkd_ray.algo.advantages import group_advantages
from rlkd_ray.config import RLKDConfig, to_yaml
from rlkd_ray.controller import checkpointing
from rlkd_ray.controller.batching import build_batch
from rlkd_ray.controller.metrics import MetricsWriter, batch_metrics
from rlkd_ray.controller.placement import start_engine_actor
from rlkd_ray.controller.pools import LearnerGroup, WorkerPool
from rlkd_ray.controller.preflight import check_model_lengths
from rlkd_ray.controller.progress import StepProgress
from rlkd_ray.controller.prompt_source import PromptSource
from rlkd_ray.controller.samples import PromptGroup
from rlkd_ray.rewards.registry import load_custom
from rlkd_ray.weight_sync.channels import Load, make_channel

CONTROL_POLL_S = 2.0  # how often the driver reads the pool sizes asked for by `rlkd scale`


@dataclass
class _Event:
    kind: str  # rollout | reward | train | load
    payload: Any = None
    wid: Optional[int] = None
    started: float = 0.0


class Trainer:
    """`with Trainer(cfg) as t: summary = t.run()`; leaving the block shuts every actor down."""

    def __init__(self, cfg: RLKDConfig):
        from actors.control import Control, control_name
        from actors.learner import Learner
        from actors.reward import RewardWorker
        from actors.rollout import RolloutWorker

        self.cfg = cfg
        check_model_lengths(cfg)  # before any actor starts (each would fail on its own otherwise)
        self.run_dir = Path(cfg.paths.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(to_yaml(cfg))
        load_custom(cfg.reward.custom)  # fail here, before any actor starts, on a bad import path
        self.source = PromptSource(cfg)
        r, w, c = cfg.rollout, cfg.reward, cfg.cluster
        self.rollouts = WorkerPool("rollout", lambda i: start_engine_actor(RolloutWorker, r, c.rollout_node, cfg, i),
                                   r.num_workers)
        self.rewards = WorkerPool("reward", lambda i: start_engine_actor(RewardWorker, w, c.reward_node, cfg, i),
                                  w.num_workers)
        self.learner = LearnerGroup(Learner, cfg)
        self.channel = make_channel(cfg, self.learner, self.rollouts)  # WeightSync
        self.control = Control.options(name=control_name(str(self.run_dir.resolve()))).remote(
            {"rollout": r.num_workers, "reward": w.num_workers})
        self.control_checked = time.monotonic()
        self.writer = MetricsWriter(self.run_dir, cfg)
        self.step = 0  # optimizer steps done
        self.version = 0  # policy version of the learner's weights (= steps done)
        self.synced = 0  # newest version whose load was sent to every rollout worker
        self.failed_syncs: set = set()  # versions whose sync lost a rollout worker part-way
        self.events: Dict[ray.ObjectRef, _Event] = {}
        self.batches: Dict[int, Dict[str, PromptGroup]] = defaultdict(dict)  # step -> uid -> group
        self.faults = {"rollout_resent": 0, "reward_resent": 0}
        self.pending_sync_time = 0.0

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "Trainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.writer.close()
        self.channel.close()
        self.rollouts.shutdown()
        self.rewards.shutdown()
        self.learner.shutdown()
        ray.kill(self.control)

    # -- the loop --------------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        cfg = self.cfg
        if cfg.trainer.resume:
            self.resume()
        next_group = self.step * cfg.trainer.prompts_per_step
        self.progress = StepProgress(cfg.trainer.total_steps, self.step, enabled=cfg.logging.progress)
        self.step_started = time.perf_counter()
        self.last: Dict[str, float] = {}
        while self.step < cfg.trainer.total_steps:
            next_group = self.dispatch_rollouts(next_group)
            self.maybe_train()
            ready, _ = ray.wait(list(self.events), num_returns=1, timeout=CONTROL_POLL_S)
            self.apply_control()
            if not ready:
                continue
            event = self.events.pop(ready[0])
            if event.kind == "rollout":
                self.on_rollout(ready[0], event)
            elif event.kind == "reward":
                self.on_reward(ready[0], event)
            elif event.kind == "load":
                self.on_load(ready[0], event)
            elif event.kind == "train":
                self.on_train(ready[0], event)
        while any(e.kind == "load" for e in self.events.values()):
            ref = next(r for r, e in self.events.items() if e.kind == "load")
            self.on_load(ref, self.events.pop(ref))
        self.progress.close()
        if self.step % cfg.trainer.save_every:  # the final state, unless just saved
            self.save()
        return {"steps": self.step, "version": self.version, "run_dir": str(self.run_dir),
                "checkpoint": str(checkpointing.latest_checkpoint(self.run_dir)), "last": self.last}

    def apply_control(self) -> None:
        """Resize the pools to what `rlkd scale` last asked for (checked every few seconds, never
        while a weight sync is in flight: its members are fixed)."""
        if time.monotonic() - self.control_checked < CONTROL_POLL_S:
            return
        if any(e.kind == "load" for e in self.events.values()):
            return
        self.control_checked = time.monotonic()
        for name, size in ray.get(self.control.sizes.remote()).items():
            pool = self.rollouts if name == "rollout" else self.rewards
            if size != len(pool):
                print(f"scale: {name} pool {len(pool)} -> {size} workers")
                for wid in pool.resize(size):
                    if pool is self.rollouts:
                        self.bring_up(wid)

    def dispatch_rollouts(self, next_group: int) -> int:
        """Send prompt groups whose step is within `max_staleness` versions of the synced weights."""
        cfg = self.cfg.trainer
        while True:
            step = next_group // cfg.prompts_per_step
            if step >= cfg.total_steps or step > self.synced + cfg.max_staleness:
                return next_group
            group = self.source.group(step, next_group % cfg.prompts_per_step)
            self.send_rollout(group)
            next_group += 1

    def send_rollout(self, group: PromptGroup) -> None:
        (summary, result), wid = self.rollouts.submit("generate", group)
        self.events[summary] = _Event("rollout", (group, result), wid, time.perf_counter())

    def on_rollout(self, ref: ray.ObjectRef, event: _Event) -> None:
        """The small summary tells success; the group itself goes to a reward worker by reference."""
        self.rollouts.done(ref)
        group, result = event.payload
        try:
            ray.get(ref)
        except RayActorError as e:
            _raise_if_startup_failure(e, "rollout")
            self.replace_rollout_worker(event.wid)
            self.faults["rollout_resent"] += 1
            self.send_rollout(group)
            return
        self.send_reward(group, result)

    def replace_rollout_worker(self, wid: int) -> None:
        new = self.rollouts.replace(wid)
        if new is not None:
            self.bring_up(new)

    def bring_up(self, wid: int) -> None:
        """A new rollout worker loads the current weights before it generates (actor call order).
        The learner must hold them: a train step in flight is finished first (its sync then reaches
        the newcomer)."""
        self.finish_training()
        for ref, member in self.channel.admit(wid, self.synced):
            self.events[ref] = _Event("load", self.synced, member)

    def finish_training(self) -> None:
        ref = next((r for r, e in self.events.items() if e.kind == "train"), None)
        if ref is not None:
            ray.wait([ref])
            self.on_train(ref, self.events.pop(ref))

    def send_reward(self, group: PromptGroup, result: ray.ObjectRef) -> None:
        ref, wid = self.rewards.submit("score", result)
        self.events[ref] = _Event("reward", (group, result), wid, time.perf_counter())

    def on_reward(self, ref: ray.ObjectRef, event: _Event) -> None:
        self.rewards.done(ref)
        try:
            group: PromptGroup = ray.get(ref)
        except RayActorError as e:  # the rollout result is still in the object store: score it again
            _raise_if_startup_failure(e, "reward")
            self.rewards.replace(event.wid)
            self.faults["reward_resent"] += 1
            self.send_reward(*event.payload)
            return
        if len(group.samples) != self.cfg.rollout.group_size:
            raise RuntimeError(f"group {group.uid}: {len(group.samples)} samples, "
                               f"expected rollout.group_size={self.cfg.rollout.group_size}")
        self.batches[group.step].setdefault(group.uid, group)  # a group counts once

    # -- learner ---------------------------------------------------------------------------------
    def maybe_train(self) -> None:
        P = self.cfg.trainer.prompts_per_step
        if any(e.kind == "train" for e in self.events.values()) or len(self.batches[self.step]) < P:
            return
        groups = [self.batches[self.step][uid] for uid in sorted(self.batches[self.step])]
        rewards = torch.tensor([[s.total for s in g.samples] for g in groups], dtype=torch.float32)
        advantages = group_advantages(rewards, self.cfg.algo.advantage, self.cfg.algo.std_eps)
        for g, row in zip(groups, advantages.tolist()):
            for s, a in zip(g.samples, row):
                s.advantage = a
        batch = build_batch(groups, pad_id=self.source.pad_id)
        refs = self.learner.train_step(batch)
        self.events[refs[0]] = _Event("train", (refs, groups), None, time.perf_counter())

    def on_train(self, ref: ray.ObjectRef, event: _Event) -> None:
        refs, groups = event.payload
        try:
            per_rank = ray.get(refs)
        except RayActorError as e:
            raise LearnerLost(learner_lost_message(self.run_dir, self.step, "a train step")) from e
        learner_metrics = self.learner.reduce_metrics(per_rank)
        train_time = time.perf_counter() - event.started
        metrics = batch_metrics(groups, self.version)
        del self.batches[self.step]
        self.step += 1
        self.version += 1
        sync_time = self.sync_weights()
        wall = time.perf_counter() - self.step_started
        n_samples = sum(len(g.samples) for g in groups)
        metrics.update({f"learner/{k}": v for k, v in learner_metrics.items()})
        metrics.update({
            "time/train": train_time, "time/sync": sync_time, "time/step": wall,
            "time/rollout_idle": max(0.0, wall - metrics["time/generate"] / len(self.rollouts)),
            "samples_per_s": n_samples / wall, "batch/groups": len(groups), "batch/samples": n_samples,
            "batch/unique_groups": len({g.uid for g in groups}), "version": self.version,
            "faults/rollout_resent": self.faults["rollout_resent"],
            "faults/reward_resent": self.faults["reward_resent"],
            "faults/workers_replaced": self.rollouts.replacements + self.rewards.replacements,
            "pool/rollout_workers": len(self.rollouts), "pool/reward_workers": len(self.rewards),
        })
        self.writer.log(self.step, metrics)
        if self.step % self.cfg.trainer.sample_log_every == 0:
            self.writer.log_samples(self.step, groups, self.cfg.trainer.num_logged_samples)
        if self.cfg.trainer.eval_every and self.step % self.cfg.trainer.eval_every == 0:
            self.evaluate()
        if self.step % self.cfg.trainer.save_every == 0:
            self.save()
        self.last, self.step_started = metrics, time.perf_counter()
        self.progress.update(metrics)

    def evaluate(self) -> None:
        """Held-out eval with the rollout workers, which now hold version `self.version` (their
        calls run in order, so queued rollouts of later steps do not change that)."""
        from rlkd_ray.eval import eval_metrics
        from rlkd_ray.eval.runner import run_eval

        t = self.cfg.trainer
        results = run_eval(self.cfg, self.rollouts, t.eval_benchmarks, self.run_dir / "eval" / f"step_{self.step:06d}",
                           limit=t.eval_limit, label=f"{self.cfg.model.student} @ step {self.step}")
        self.writer.log(self.step, eval_metrics(results))

    def sync_weights(self) -> float:
        """One bucketed transfer of version `self.version` to every rollout worker (`self.channel`).
        Strict on-policy waits for the loads; otherwise they are events and their time is reported
        with the next step."""
        start = time.perf_counter()
        loads = self.channel.publish(self.version)
        self.synced = self.version
        if self.cfg.trainer.max_staleness == 0:
            self.await_loads(loads)
            self.pending_sync_time = 0.0
            return time.perf_counter() - start
        for ref, wid in loads:
            self.events[ref] = _Event("load", self.version, wid)
        spent, self.pending_sync_time = self.pending_sync_time, 0.0
        return time.perf_counter() - start + spent

    def await_loads(self, loads: List[Load]) -> None:
        """The loads of one sync, in the order they finish (a dead worker is seen before the
        timeouts it causes in the others)."""
        events = {ref: _Event("load", self.synced, wid) for ref, wid in loads}
        while events:
            (ref,), _ = ray.wait(list(events), num_returns=1)
            self.on_load(ref, events.pop(ref))

    def on_load(self, ref: ray.ObjectRef, event: _Event) -> None:
        """One member's part of a sync (event.wid None: the learner's). A rollout worker that died is
        replaced and its replacement brought to the current version; the other members' parts of that
        sync may then fail (a broadcast waits for every member), which the new sync makes good."""
        try:
            seconds = ray.get(ref)
        except RayActorError as e:
            if event.wid is None:  # under NCCL, the watchdog ends a learner whose broadcast timed out
                raise LearnerLost(learner_lost_message(self.run_dir, self.step,
                                                       f"the weight sync of version {event.payload}")) from e
            _raise_if_startup_failure(e, "rollout")
            self.failed_syncs.add(event.payload)
            self.channel.broken()
            self.replace_rollout_worker(event.wid)
            return
        except RayTaskError:
            if event.payload in self.failed_syncs:
                return
            raise
        if event.wid is not None:
            self.pending_sync_time = max(self.pending_sync_time, seconds)

    # -- checkpoints -------------------------------------------------------------------------------
    def save(self) -> Path:
        ckpt = checkpointing.step_dir(self.run_dir, self.step)
        state = {"step": self.step, "version": self.version, "seed": self.cfg.trainer.seed,
                 "data_position": self.step * self.cfg.trainer.prompts_per_step}
        self.learner.save(str(ckpt), state)
        checkpointing.write_state(ckpt, state)
        return ckpt

    def resume(self) -> None:
        ckpt = checkpointing.latest_checkpoint(self.run_dir)
        if ckpt is None:
            print(f"resume: no checkpoint under {self.run_dir}/checkpoints; starting from step 0")
            return
        state = checkpointing.read_state(ckpt)
        self.learner.load(str(ckpt))
        self.step, self.version = state["step"], state["version"]
        self.synced = self.version
        self.await_loads(self.channel.publish(self.version))
        print(f"resume: {ckpt} (step {self.step}, policy version {self.version})")



class LearnerLost(RuntimeError):
    """A learner rank died: the run stops (the learner's state lives only in its ranks)."""


def learner_lost_message(run_dir: Path, step: int, during: str) -> str:
    """What stopped the run and where to resume from."""
    ckpt = checkpointing.latest_checkpoint(run_dir)
    resume = (f"the last checkpoint is {ckpt} (step {checkpointing.read_state(ckpt)['step']}): resume with "
              "trainer.resume=true" if ckpt else "no checkpoint was written yet: the run starts again from step 0")
    return (f"a learner rank died during {during} after step {step}; the run stops, {resume}. With "
            "cluster.weight_sync=broadcast on GPUs, a rollout worker lost during a broadcast ends the learner too: "
            "NCCL's watchdog ends every process whose collective outlives cluster.sync_timeout_s")


def _raise_if_startup_failure(error: RayActorError, pool: str) -> None:
    """A worker whose constructor raised is a configuration problem, not a fault to retry."""
    if error.actor_init_failed:
        raise RuntimeError(f"a {pool} worker failed to start (not retried): {error}") from error
