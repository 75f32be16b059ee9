"""The single controller. It reads like docs/design.md's data-flow diagram:

    PromptSource ─► RolloutPool ─(each finished group)─► RewardPool ─► Batcher ─► Learner
         ▲                                                                          │
         └──────────────────────── WeightSync (version v+1) ◄──────────────────────┘

Every remote call is an event in one `ray.wait` loop: a finished rollout goes at once to the
least-loaded reward worker (by reference: the driver never pulls the rollout), a scored group joins
the batch of its step, a full batch goes to the learner, its result is published to the rollout
workers as version v+1. `trainer.max_staleness` bounds how far rollouts may run ahead of the learner.

The calls in flight are typed events, kept where the driver reads them: rollouts and scorings in
`calls`, the train step (at most one) in `training`, the weight loads of a sync in `loads`.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Union

import ray
import torch
from ray.exceptions import RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rlkd_ray.algo.advantages import group_advantages
from rlkd_ray.config import RLKDConfig, to_yaml
from rlkd_ray.controller import checkpointing
from rlkd_ray.controller.autoscale import PoolAutoscaler
from rlkd_ray.controller.batching import Batcher, build_batch
from rlkd_ray.controller.metrics import MetricsWriter, batch_metrics
from rlkd_ray.controller.placement import start_engine_actor
from rlkd_ray.controller.pools import ActorPool, LearnerGroup, raise_if_startup_failure
from rlkd_ray.controller.preflight import check_model_lengths
from rlkd_ray.controller.progress import StepProgress
from rlkd_ray.controller.prompt_source import PromptSource
from rlkd_ray.controller.samples import PromptGroup
from rlkd_ray.controller.stopping import StopRequest
from rlkd_ray.rewards.registry import RewardError, load_custom
from rlkd_ray.run_dirs import claim_fresh, open_for_resume
from rlkd_ray.weight_sync.channels import Load, make_channel

CONTROL_POLL_S = 2.0  # how often the driver reads the pool sizes asked for by `rlkd scale`


# -- events: one per kind of call in flight ------------------------------------------------------
@dataclass
class Rollout:
    """Prompt group `group` generating on rollout worker `wid`; `result` will hold it generated."""

    group: PromptGroup
    result: ray.ObjectRef
    wid: int


@dataclass
class Scoring:
    """The generated group `result` (of prompt group `group`) being scored on reward worker `wid`."""

    group: PromptGroup
    result: ray.ObjectRef
    wid: int


@dataclass
class TrainStep:
    """The learner's step on the batch of `groups`: one reference per rank."""

    refs: List[ray.ObjectRef]
    groups: List[PromptGroup]
    started: float


@dataclass
class WeightLoad:
    """One member's part of the sync of `version`: rollout worker `wid`, or the learner's (None)."""

    version: int
    wid: Optional[int]


@dataclass(frozen=True)
class WorkerClasses:
    """The Ray actor classes the driver starts; tests give stand-ins with the same methods."""

    rollout: Any
    reward: Any
    learner: Any

    @classmethod
    def default(cls) -> "WorkerClasses":
        from actors.learner import LearnerWorker
        from actors.reward import RewardWorker
        from actors.rollout import RolloutWorker

        return cls(RolloutWorker, RewardWorker, LearnerWorker)


class Driver:
    """`with Driver(cfg) as d: summary = d.run()`; leaving the block shuts every actor down.
    `workers` and `source` default to the real actor classes and the configured training data.

    A fresh run whose `paths.run_dir` holds another run writes to a `version_N` folder under it
    (rlkd_ray/run_dirs.py); `cfg.paths.run_dir` is set to the folder used. `stop` (set by a signal,
    rlkd_ray/controller/stopping.py) is checked once per loop iteration."""

    def __init__(self, cfg: RLKDConfig, stop: Optional[StopRequest] = None, *,
                 workers: Optional[WorkerClasses] = None, source: Optional[PromptSource] = None):
        from actors.control import Control, control_name

        self.cfg = cfg
        check_model_lengths(cfg)  # before any actor starts (each would fail on its own otherwise)
        self.stop = stop or StopRequest()
        open_run_dir = open_for_resume if cfg.trainer.resume else claim_fresh
        self.run_dir = open_run_dir(cfg.paths.run_dir, to_yaml(cfg))
        cfg.paths.run_dir = str(self.run_dir)
        load_custom(cfg.reward.custom)  # fail here, before any actor starts, on a bad import path
        workers = workers or WorkerClasses.default()
        self.source = source or PromptSource(cfg)
        r, w, c = cfg.rollout, cfg.reward, cfg.cluster
        self.rollouts = ActorPool("rollout", lambda i: start_engine_actor(workers.rollout, r, c.rollout_node, cfg, i),
                                  r.num_workers)
        self.rewards = ActorPool("reward", lambda i: start_engine_actor(workers.reward, w, c.reward_node, cfg, i),
                                 w.num_workers)
        self.batcher = Batcher(cfg.trainer.prompts_per_step, r.group_size)
        self.learner = LearnerGroup(workers.learner, cfg)
        self.channel = make_channel(cfg, self.learner, self.rollouts)  # WeightSync
        # The pool sizes of `rlkd scale`, on the driver's own node: a lost worker node takes no run with it.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.control = Control.options(name=control_name(str(self.run_dir.resolve())), scheduling_strategy=here).remote(
            {"rollout": r.num_workers, "reward": w.num_workers})
        self.control_checked = time.monotonic()
        self.autoscaler = PoolAutoscaler(w.autoscale) if w.autoscale.max_workers else None
        self.writer = MetricsWriter(self.run_dir, cfg)
        self.step = 0  # optimizer steps done
        self.saved_step = 0  # step of the newest checkpoint (0: none)
        self.version = 0  # policy version of the learner's weights (= steps done)
        self.synced = 0  # newest version whose load was sent to every rollout worker
        self.failed_syncs: Set[int] = set()  # versions whose sync lost a rollout worker part-way
        self.calls: Dict[ray.ObjectRef, Union[Rollout, Scoring]] = {}
        self.training: Optional[TrainStep] = None
        self.loads: Dict[ray.ObjectRef, WeightLoad] = {}
        self.rollout_resent = 0
        self.reward_resent = 0
        self.pending_sync_time = 0.0

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "Driver":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is KeyboardInterrupt:  # a second signal: stop at once; Ray ends the actors
            return
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
        if cfg.trainer.eval_at_start and cfg.trainer.eval_every and self.step == 0:
            self.evaluate()  # the initial weights, logged at step 0
        self.step_started = time.perf_counter()
        self.last: Dict[str, float] = {}
        while self.step < cfg.trainer.total_steps and self.stop.reason is None:
            next_group = self.dispatch_rollouts(next_group)
            self.maybe_train()
            self.apply_control()
            ready, _ = ray.wait(self.in_flight(), num_returns=1, timeout=CONTROL_POLL_S)
            if ready:
                self.on_ready(ready[0])
        stopped = self.stop.reason if self.step < cfg.trainer.total_steps else None
        if stopped:  # a safe point: the step in flight is applied, the rest dropped
            self.finish_training()
            # Dropped, not cancelled (a cancelled actor call stalls the actor's later calls for 30 s):
            # the workers still running them are killed at shutdown instead of closed (ActorPool.shutdown).
            self.calls.clear()
        while self.loads:
            loads, self.loads = self.loads, {}
            self.await_loads(loads)
        self.progress.close()
        if not stopped or cfg.trainer.checkpoint_on_stop:  # the final state, unless just saved
            self.save()
        return {"steps": self.step, "version": self.version, "run_dir": str(self.run_dir),
                "checkpoint": self.stop.checkpoint, "stopped_by": stopped, "left_out": self.source.left_out,
                "last": self.last}

    def in_flight(self) -> List[ray.ObjectRef]:
        refs = list(self.calls) + list(self.loads)
        if self.training is not None:
            refs.append(self.training.refs[0])
        return refs

    def on_ready(self, ref: ray.ObjectRef) -> None:
        if ref in self.loads:
            self.on_load(ref, self.loads.pop(ref))
        elif self.training is not None and ref == self.training.refs[0]:
            self.finish_training()
        else:
            match self.calls.pop(ref):
                case Rollout() as event:
                    self.on_rollout(ref, event)
                case Scoring() as event:
                    self.on_reward(ref, event)

    def apply_control(self) -> None:
        """Resize the pools to what `rlkd scale` or the reward pool's autoscaler last asked for
        (checked every few seconds, never while a weight sync is in flight: its members are fixed)."""
        if time.monotonic() - self.control_checked < CONTROL_POLL_S or self.loads:
            return
        self.control_checked = time.monotonic()
        sizes = ray.get(self.control.sizes.remote())
        if self.autoscaler is not None:
            size = self.autoscaler.target(self.control_checked, self.rewards.calls_in_flight(), sizes["reward"])
            if size != sizes["reward"]:  # kept in Control, where `rlkd scale` reads and sets it
                ray.get(self.control.set_size.remote("reward", size))
                sizes["reward"] = size
        for name, size in sizes.items():
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
        self.calls[summary] = Rollout(group, result, wid)

    def on_rollout(self, ref: ray.ObjectRef, event: Rollout) -> None:
        """The small summary tells success; the group itself goes to a reward worker by reference."""
        self.rollouts.done(ref)
        try:
            ray.get(ref)
        except RayActorError as e:
            raise_if_startup_failure(e, "rollout")
            self.replace_rollout_worker(event.wid)
            self.rollout_resent += 1
            self.send_rollout(event.group)
            return
        self.send_reward(event.group, event.result)

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
            self.loads[ref] = WeightLoad(self.synced, member)

    def send_reward(self, group: PromptGroup, result: ray.ObjectRef) -> None:
        ref, wid = self.rewards.submit("score", result)
        self.calls[ref] = Scoring(group, result, wid)

    def on_reward(self, ref: ray.ObjectRef, event: Scoring) -> None:
        self.rewards.done(ref)
        try:
            group: PromptGroup = ray.get(ref)
        except RayActorError as e:  # the rollout result is still in the object store: score it again
            raise_if_startup_failure(e, "reward")
            self.rewards.replace(event.wid)
            self.reward_resent += 1
            self.send_reward(event.group, event.result)
            return
        except RewardError as e:  # a custom reward's bug: its own message, without the remote traceback
            raise RewardError(str(getattr(e, "cause", e))) from None
        self.batcher.add(group)

    # -- learner ---------------------------------------------------------------------------------
    def maybe_train(self) -> None:
        if self.training is not None or not self.batcher.full(self.step):
            return
        groups = self.batcher.take(self.step)
        rewards = torch.tensor([[s.total for s in g.samples] for g in groups], dtype=torch.float32)
        advantages = group_advantages(rewards, self.cfg.algo.advantage, self.cfg.algo.std_eps)
        for g, row in zip(groups, advantages.tolist()):
            for s, a in zip(g.samples, row):
                s.advantage = a
        batch = build_batch(groups, pad_id=self.source.pad_id)
        self.training = TrainStep(self.learner.train_step(batch), groups, time.perf_counter())

    def finish_training(self) -> None:
        """Wait for the train step in flight, if any, and apply it."""
        if self.training is not None:
            event, self.training = self.training, None
            self.on_train(event)

    def on_train(self, event: TrainStep) -> None:
        try:
            per_rank = ray.get(event.refs)
        except RayActorError as e:
            raise LearnerLost(learner_lost_message(self.run_dir, self.step, "a train step")) from e
        learner_metrics = self.learner.reduce_metrics(per_rank)
        train_time = time.perf_counter() - event.started
        groups = event.groups
        metrics = batch_metrics(groups, self.version)
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
            "faults/rollout_resent": self.rollout_resent,
            "faults/reward_resent": self.reward_resent,
            "faults/workers_replaced": self.rollouts.replacements + self.rewards.replacements,
            "pool/rollout_workers": len(self.rollouts), "pool/reward_workers": len(self.rewards),
            "pool/reward_grown": self.autoscaler.grown if self.autoscaler else 0,
            "pool/reward_shrunk": self.autoscaler.shrunk if self.autoscaler else 0,
        } | {f"data/{reason}": n for reason, n in self.source.left_out.items()})
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
            self.await_loads(self.weight_loads(loads))
            self.pending_sync_time = 0.0
            return time.perf_counter() - start
        self.loads.update(self.weight_loads(loads))
        spent, self.pending_sync_time = self.pending_sync_time, 0.0
        return time.perf_counter() - start + spent

    def weight_loads(self, loads: List[Load]) -> Dict[ray.ObjectRef, WeightLoad]:
        return {ref: WeightLoad(self.synced, wid) for ref, wid in loads}

    def await_loads(self, loads: Dict[ray.ObjectRef, WeightLoad]) -> None:
        """The loads of one sync, in the order they finish (a dead worker is seen before the
        timeouts it causes in the others)."""
        while loads:
            (ref,), _ = ray.wait(list(loads), num_returns=1)
            self.on_load(ref, loads.pop(ref))

    def on_load(self, ref: ray.ObjectRef, event: WeightLoad) -> None:
        """One member's part of a sync. A rollout worker that died is replaced and its replacement
        brought to the current version; the other members' parts of that sync may then fail (a
        broadcast waits for every member), which the new sync makes good."""
        try:
            seconds = ray.get(ref)
        except RayActorError as e:
            if event.wid is None:  # under NCCL, the watchdog ends a learner whose broadcast timed out
                raise LearnerLost(learner_lost_message(self.run_dir, self.step,
                                                       f"the weight sync of version {event.version}")) from e
            raise_if_startup_failure(e, "rollout")
            self.failed_syncs.add(event.version)
            self.channel.broken()
            self.replace_rollout_worker(event.wid)
            return
        except RayTaskError:
            if event.version in self.failed_syncs:
                return
            raise
        if event.wid is not None:
            self.pending_sync_time = max(self.pending_sync_time, seconds)

    # -- checkpoints -------------------------------------------------------------------------------
    def save(self) -> None:
        """A checkpoint of the current step (none for step 0, nor twice for one step); atomic."""
        if self.step in (0, self.saved_step):
            return
        t = self.cfg.trainer
        state = {"step": self.step, "version": self.version, "seed": t.seed, "prompts_per_step": t.prompts_per_step,
                 "data_position": self.step * t.prompts_per_step}
        staging = checkpointing.staging_dir(self.run_dir, self.step)
        self.learner.save(str(staging), state)
        saved = checkpointing.commit(staging, state)
        self.stop.checkpoint = str(saved)
        self.saved_step = self.step
        if t.keep_checkpoints is not None:
            checkpointing.prune(saved, t.keep_checkpoints)

    def drop_logged_after(self, step: int) -> int:
        """Forget the metrics, samples and in-training evals of steps after `step` (logged by an
        attempt killed before its next checkpoint; they are logged again). Returns the metrics lines
        dropped."""
        for folder in (self.run_dir / "eval").glob("step_*"):
            if int(folder.name[len("step_"):]) > step:
                shutil.rmtree(folder)
        return self.writer.truncate_after(step)

    def resume(self) -> None:
        """Continue from the newest complete checkpoint: learner state (weights, optimizer, LR schedule,
        RNG), step and policy version; the data position and every sampling seed follow from the step.
        What was logged after that step is dropped, to be logged again."""
        ckpt = checkpointing.latest_checkpoint(self.run_dir, warn=lambda msg: print(f"resume: {msg}"))
        if ckpt is None:
            dropped = self.drop_logged_after(0)
            print(f"resume: no complete checkpoint under {self.run_dir}/checkpoints; starting from step 0"
                  + (f" (dropped {dropped} metrics lines of the earlier attempt)" if dropped else ""))
            return
        state = checkpointing.read_state(ckpt)
        t = self.cfg.trainer
        for key in ("seed", "prompts_per_step"):  # they fix the data position and the sampling seeds
            if state.get(key, getattr(t, key)) != getattr(t, key):
                raise ValueError(f"resume: {ckpt} was written with trainer.{key}={state[key]}, the config "
                                 f"has {getattr(t, key)}; resume with the same value")
        self.learner.load(str(ckpt))
        self.step, self.version = state["step"], state["version"]
        self.saved_step, self.stop.checkpoint = self.step, str(ckpt)
        self.synced, self.batcher.next_step = self.version, self.step
        self.await_loads(self.weight_loads(self.channel.publish(self.version)))
        dropped = self.drop_logged_after(self.step)
        print(f"resume: {ckpt} (step {self.step}, policy version {self.version}"
              + (f"; dropped {dropped} metrics lines logged after it)" if dropped else ")"))


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
