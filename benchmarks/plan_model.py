"""The planning model: the driver's scheduling rules (rlkd_ray/controller/driver.py) replayed on a
virtual clock, so that pools can be sized before a cluster is rented.

Rules replayed, as the driver applies them:
- every prompt group of step s is sent as soon as s <= synced + max_staleness, each to the rollout
  worker with the fewest calls in flight (ties: lowest id); a worker runs its calls in order;
- a finished group goes at once to the least-loaded reward worker, the same way;
- the learner trains step s once all its groups are scored and no train step is in flight;
- after a train step, version v+1 is published: with max_staleness 0 the driver waits until every
  rollout worker has loaded it; otherwise each load queues behind that worker's calls;
- the driver handles one event at a time, each costing `driver_s` of its own time.

Times are per sample (a group of G takes G times as long on one worker), train and sync per step.
Pure Python, no Ray: tests/test_benchmarks.py checks it.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple


@dataclass
class Stages:
    generate_s: float  # per sample, on one rollout worker
    reward_s: float  # per sample, on one reward worker
    train_s: float  # per optimizer step, the learner
    sync_s: float = 0.0  # per sync, each rollout worker's load
    driver_s: float = 0.0  # driver time per event (a finished rollout, reward, train or load)
    jitter: float = 0.0  # lognormal sigma of every duration (mean kept); 0 = the means exactly


@dataclass
class Plan:
    rollout_workers: int
    reward_workers: int
    step_s: float  # mean step time over the steady steps
    rollout_idle: float  # fraction of the rollout pool's worker-seconds spent idle
    reward_idle: float
    learner_idle: float
    slowest_stage_s: float  # max over stages of that stage's work per step / its workers
    step_times: List[float] = field(default_factory=list)


def draw(mean: float, sigma: float, rng: random.Random) -> float:
    """A lognormal duration with the given mean (sigma 0: the mean)."""
    if sigma <= 0 or mean <= 0:
        return mean
    return mean * math.exp(rng.gauss(0.0, sigma) - sigma * sigma / 2)


def slowest_stage(stages: Stages, rollout_workers: int, reward_workers: int, prompts_per_step: int,
                  group_size: int) -> float:
    """The busiest stage's work per step spread evenly over its workers (a lower bound of the step time
    when stages overlap, max_staleness >= 1)."""
    samples = prompts_per_step * group_size
    return max(samples * stages.generate_s / rollout_workers, samples * stages.reward_s / reward_workers,
               stages.train_s + stages.sync_s, (2 * prompts_per_step + rollout_workers) * stages.driver_s)


def simulate(stages: Stages, rollout_workers: int, reward_workers: int, prompts_per_step: int,
             group_size: int, steps: int, max_staleness: int = 0, warmup_steps: int = 1,
             seed: int = 0) -> Plan:
    """Step times and idle fractions of `steps` optimizer steps; the first `warmup_steps` are left
    out of the means (the pipeline filling)."""
    if steps <= warmup_steps:
        raise ValueError(f"need steps > warmup_steps, got {steps} <= {warmup_steps}")
    rng = random.Random(seed)
    R, W, P, G = rollout_workers, reward_workers, prompts_per_step, group_size
    free = {("rollout", i): 0.0 for i in range(R)} | {("reward", i): 0.0 for i in range(W)}
    load = dict.fromkeys(free, 0)
    busy: Dict[Tuple[str, int], List[Tuple[float, float]]] = {k: [] for k in free}
    heap: List[Tuple[float, int, str, tuple]] = []
    seq = 0
    now = 0.0  # the driver's clock: when it is free to handle the next event
    synced, next_group, step, train_busy = 0, 0, 0, False
    scored: Dict[int, int] = {}
    step_end: List[float] = []
    learner_busy: List[Tuple[float, float]] = []

    def push(t: float, kind: str, data: tuple) -> None:
        nonlocal seq
        heapq.heappush(heap, (t, seq, kind, data))
        seq += 1

    def submit(pool: str, n: int, duration: float, kind: str, data: tuple, at: float) -> None:
        key = min(((pool, i) for i in range(n)), key=lambda k: (load[k], k[1]))
        start = max(at, free[key])
        free[key] = start + duration
        load[key] += 1
        busy[key].append((start, free[key]))
        push(free[key], kind, (key, *data))

    def dispatch(at: float) -> None:
        nonlocal next_group
        while True:
            s = next_group // P
            if s >= steps or s > synced + max_staleness:
                return
            submit("rollout", R, draw(G * stages.generate_s, stages.jitter, rng), "rollout", (s,), at)
            next_group += 1

    def maybe_train(at: float) -> None:
        nonlocal train_busy
        if not train_busy and scored.get(step, 0) >= P:
            train_busy = True
            d = draw(stages.train_s, stages.jitter, rng)
            learner_busy.append((at, at + d))
            push(at + d, "train", ())

    dispatch(now)
    while step < steps:
        t, _, kind, data = heapq.heappop(heap)
        now = max(now, t) + stages.driver_s
        if kind in ("rollout", "reward", "load"):
            load[data[0]] -= 1
        if kind == "rollout":
            submit("reward", W, draw(G * stages.reward_s, stages.jitter, rng), "reward", (data[1],), now)
        elif kind == "reward":
            scored[data[1]] = scored.get(data[1], 0) + 1
        elif kind == "train":
            train_busy = False
            step += 1
            synced = step
            loads = []  # the driver syncs after every step, the last one too
            for i in range(R):
                key = ("rollout", i)
                start = max(now, free[key])
                free[key] = start + draw(stages.sync_s, stages.jitter, rng)
                busy[key].append((start, free[key]))
                load[key] += 1
                loads.append(free[key])
                push(free[key], "load", (key,))
            if max_staleness == 0:
                now = max(loads)  # the driver waits for every load
            step_end.append(now)
        dispatch(now)
        maybe_train(now)

    starts = [0.0] + step_end[:-1]
    times = [e - s for s, e in zip(starts, step_end)]
    t0, t1 = starts[warmup_steps], step_end[-1]

    def idle(pool: str, n: int) -> float:
        spent = sum(max(0.0, min(e, t1) - max(s, t0)) for k, iv in busy.items() if k[0] == pool for s, e in iv)
        return 1.0 - spent / (n * (t1 - t0))

    learn = sum(max(0.0, min(e, t1) - max(s, t0)) for s, e in learner_busy)
    return Plan(R, W, sum(times[warmup_steps:]) / (steps - warmup_steps), idle("rollout", R), idle("reward", W),
                1.0 - learn / (t1 - t0), slowest_stage(stages, R, W, P, G), times)


def splits(gpus: int, learner_gpus: int, gpus_per_rollout: int = 1, gpus_per_reward: int = 1,
           max_rollout: int = 256, max_reward: int = 64) -> List[Tuple[int, int]]:
    """(rollout workers, reward workers) of every split of the GPUs left after the learner: each
    reward-pool size from 1 up, with as many rollout workers as the rest holds."""
    left = gpus - learner_gpus
    out = []
    for w in range(1, max_reward + 1):
        r = min(max_rollout, (left - w * gpus_per_reward) // gpus_per_rollout)
        if r < 1:
            break
        out.append((r, w))
    return out


def plan(stages: Stages, gpus: int, learner_gpus: int, prompts_per_step: int, group_size: int,
         max_staleness: int, steps: int = 6, gpus_per_rollout: int = 1, gpus_per_reward: int = 1,
         max_rollout: int = 256, max_reward: int = 64) -> List[Plan]:
    return [simulate(stages, r, w, prompts_per_step, group_size, steps, max_staleness)
            for r, w in splits(gpus, learner_gpus, gpus_per_rollout, gpus_per_reward, max_rollout, max_reward)]


def best(plans: List[Plan]) -> Optional[Plan]:
    """The fastest split; among splits within 1 % of it, the one with the fewest workers."""
    if not plans:
        return None
    fastest = min(p.step_s for p in plans)
    return min((p for p in plans if p.step_s <= fastest * 1.01), key=lambda p: p.rollout_workers + p.reward_workers)
