"""Stand-ins for the three worker actors (the methods the driver, the pools and the weight channels
call), with no model behind them, so that the controller runs in seconds. What each did is appended
as JSON lines to `<run_dir>/<kind>.jsonl` (one line a call, written by the actor's own process).

A rollout writes the group's step into its completion tokens (`STEP_TOKEN + step`), so the learner
can tell which step's groups each batch holds. Weights are `{"version": n}` objects in the object
store; a broadcast "sends" its version through `broadcast.jsonl`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import List, Optional

import ray

from rlkd_ray.controller.samples import Problem, PromptGroup, Sample

STEP_TOKEN = 1000  # completion token id of step 0; step s: STEP_TOKEN + s
PROMPT = [1, 2, 3]


def record(cfg, kind: str, **fields) -> None:
    with open(Path(cfg.paths.run_dir) / f"{kind}.jsonl", "a") as f:
        f.write(json.dumps(fields) + "\n")


def read_records(run_dir, kind: str) -> List[dict]:
    path = Path(run_dir) / f"{kind}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class FakeSource:
    """PromptSource's interface: one fixed prompt per group."""

    pad_id = 0
    left_out = {"bad_rows": 0, "prompts_too_long": 0}

    def group(self, step: int, slot: int) -> PromptGroup:
        return PromptGroup(uid=f"s{step}-p{slot}", step=step, problem=Problem(f"p{slot}", "1 + 1", "2"),
                           prompt_ids=list(PROMPT), seed=step * 100 + slot)


class FakeRollout:
    def __init__(self, cfg, index: int):
        self.cfg, self.index = cfg, index
        self.engine_version = 0
        self.calls = 0

    @ray.method(num_returns=2)
    def generate(self, group: PromptGroup):
        self.calls += 1
        group.samples = [Sample([STEP_TOKEN + group.step] * 2, [-1.0, -1.0], "text", "stop", self.engine_version)
                         for _ in range(self.cfg.rollout.group_size)]
        record(self.cfg, "rollout", worker=self.index, uid=group.uid, step=group.step, version=self.engine_version)
        return {"uid": group.uid, "version": self.engine_version}, group

    def load_weights(self, version: int, weights: list) -> float:
        state = ray.get(weights[0])
        if state["version"] != version:
            raise RuntimeError(f"told version {version}, got the weights of version {state['version']}")
        self.engine_version = version
        record(self.cfg, "load", worker=self.index, version=version)
        return 0.001

    def version(self) -> int:
        return self.engine_version

    # the broadcast channel's side of a rollout worker
    def sync_ranks(self) -> int:
        return 1

    def join_weight_sync(self, host, port, first_rank: int, world_size: int, timeout_s: float) -> None:
        record(self.cfg, "join", worker=self.index, first_rank=first_rank, world_size=world_size)
        self.syncs_seen = len(read_records(self.cfg.paths.run_dir, "broadcast"))

    def receive_weights(self) -> float:
        """The version of the next sync the learner sends (the group was joined before it)."""
        deadline = time.time() + 30
        while len(sent := read_records(self.cfg.paths.run_dir, "broadcast")) <= self.syncs_seen:
            if time.time() > deadline:
                raise TimeoutError("no broadcast came")
            time.sleep(0.01)
        self.engine_version = sent[self.syncs_seen]["version"]
        self.syncs_seen += 1
        record(self.cfg, "receive", worker=self.index, version=self.engine_version)
        return 0.001

    def leave_weight_sync(self) -> None:
        pass

    def close(self) -> None:
        pass


class FirstRolloutDies(FakeRollout):
    """Worker 0 dies (its process exits) on its first generate call."""

    @ray.method(num_returns=2)
    def generate(self, group: PromptGroup):
        if self.index == 0:
            os._exit(1)
        return FakeRollout.generate(self, group)


class FakeReward:
    def __init__(self, cfg, index: int):
        self.cfg, self.index = cfg, index

    def score(self, group: PromptGroup) -> PromptGroup:
        for i, s in enumerate(group.samples):  # distinct rewards: non-zero advantages
            s.rewards = {"accuracy": float(i % 2)}
            s.total = float(i)
        record(self.cfg, "reward", worker=self.index, uid=group.uid)
        return group

    def close(self) -> None:
        pass


class SlowReward(FakeReward):
    """A reward stage slower than everything else: 0.8 s a group."""

    def score(self, group: PromptGroup) -> PromptGroup:
        time.sleep(0.8)
        return FakeReward.score(self, group)


class DiesDuringBroadcast(FakeRollout):
    """Worker 0 dies (its process exits) while it receives the first broadcast of new weights."""

    def receive_weights(self) -> float:
        if self.index == 0:
            os._exit(1)
        return FakeRollout.receive_weights(self)


class FirstRewardDies(FakeReward):
    def score(self, group: PromptGroup) -> PromptGroup:
        if self.index == 0:
            os._exit(1)
        return FakeReward.score(self, group)


class RewardThatCannotStart(FakeReward):
    def __init__(self, cfg, index: int):
        raise FileNotFoundError("no such GSRM")


class FakeLearner:
    """One rank; rank 0 holds the weights `{"version": steps done}`."""

    def __init__(self, cfg, rank: int):
        self.cfg, self.rank = cfg, rank
        self.steps = 0

    def address(self):
        return "127.0.0.1", 0

    def setup(self, addr: str, port: int) -> None:
        pass

    def train_step(self, batch) -> dict:
        time.sleep(0.2)  # long enough for the next step's rollouts to run meanwhile (max_staleness > 0)
        completion = batch.input_ids[batch.loss_mask.bool()]
        steps = sorted({int(t) - STEP_TOKEN for t in completion.tolist()})
        record(self.cfg, "train", rank=self.rank, steps=steps, rows=len(batch),
               advantages=batch.advantages.tolist())
        self.steps += 1
        return {"tokens": float(batch.num_tokens), "loss_sum": 0.0, "grad_norm": 0.0, "lr": 0.0}

    def publish_weights(self) -> Optional[list]:
        return [ray.put({"version": self.steps})] if self.rank == 0 else None

    # the broadcast channel's side of the learner
    def join_weight_sync(self, host, port, world_size: int, timeout_s: float) -> None:
        record(self.cfg, "join", worker="learner", first_rank=0, world_size=world_size)

    def broadcast_weights(self, version: int) -> Optional[float]:
        if self.rank != 0:
            return None
        record(self.cfg, "broadcast", version=version)
        return 0.001

    def leave_weight_sync(self) -> None:
        pass

    def save(self, ckpt_dir: str, client_state: dict) -> None:
        """The parts a checkpoint must hold (rlkd_ray/controller/checkpointing.py), with no content."""
        folder = Path(ckpt_dir)
        (folder / "deepspeed").mkdir(parents=True, exist_ok=True)
        (folder / "deepspeed" / f"rank_{self.rank}.pt").write_bytes(b"")
        if self.rank == 0:
            (folder / "hf").mkdir(exist_ok=True)
            (folder / "hf" / "config.json").write_text("{}")
            (folder / "hf" / "model.safetensors").write_bytes(b"")

    def load(self, ckpt_dir: str) -> dict:
        return {}

    def close(self) -> None:
        pass


class Echo:
    """A pool member with no engine: says which worker ran a call."""

    def __init__(self, wid: int):
        self.wid = wid

    def work(self, x, seconds: float = 0.0):
        time.sleep(seconds)
        return self.wid, x

    def work_unless_first(self, x):
        """Worker 0 dies (its process exits) on its first call."""
        if self.wid == 0:
            os._exit(1)
        return self.wid, x

    def close(self) -> None:
        pass


class SlowStart(Echo):
    """An Echo that takes `seconds` to start (a model loading, a node being added)."""

    def __init__(self, wid: int, seconds: float = 0.0):
        time.sleep(seconds)
        Echo.__init__(self, wid)
