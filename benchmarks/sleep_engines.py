"""Engines that sleep instead of computing, for timing the driver at scale (benchmarks/driver_scale.py).

They plug in where a real engine does: every Ray worker of the benchmark runs `install()` at start-up
(Ray's `worker_process_setup_hook`), which swaps `rlkd_ray.engines.make_engine` for one that returns
a `SleepEngine`, and the learner's `DeepSpeedPolicy` for a `SleepLearner`. The project's own actors
(actors/rollout.py, actors/reward.py, actors/learner.py), pools, weight-sync channel and driver run
unchanged: the rollout worker's engine sleeps per sampled completion, the reward worker's GSRM sleeps
per decomposed student path (its judge answers "yes" at once), the learner sleeps per step.

Latencies come from $RLKD_SLEEP_ENGINES (JSON of `Latencies`), set by the benchmark for every worker.
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
import types
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

ENV = "RLKD_SLEEP_ENGINES"
BUSY_DIR_ENV = "RLKD_SLEEP_BUSY_DIR"  # where each worker appends its busy intervals (pool, start, end)
COMPLETION = "<think>\nStep one. Step two.\n</think>\n<answer>\n42\n</answer>"
STRUCTURE = ("[sub-think 1]: split the problem\n[Query 1]: what is 6 times 7?\n[Answer 1]: 42\n"
             "So the final answer is: 42")


@dataclass
class Latencies:
    generate_s: float = 0.01  # per sampled completion
    reward_s: float = 0.05  # per decomposed student path (GSRM + judge of one sample)
    train_s: float = 0.2  # per optimizer step
    sync_s: float = 0.02  # per weight load
    jitter: float = 0.0  # lognormal sigma (mean kept)
    completion_tokens: int = 64
    weights_kib: int = 64  # size of the state dict the sleep learner publishes

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> "Latencies":
        return cls(**json.loads(os.environ.get(ENV, "{}")))


def _sleep(mean: float, sigma: float, rng: random.Random, pool: str = "") -> float:
    d = mean if sigma <= 0 or mean <= 0 else mean * math.exp(rng.gauss(0.0, sigma) - sigma * sigma / 2)
    if d > 0:
        start = time.time()
        time.sleep(d)
        busy_dir = os.environ.get(BUSY_DIR_ENV)
        if busy_dir and pool:
            with open(os.path.join(busy_dir, f"{os.getpid()}.tsv"), "a") as f:
                f.write(f"{pool}\t{os.getpid()}\t{start}\t{time.time()}\n")
    return d


def busy_seconds(busy_dir: str, pool: str, t0: float, t1: float) -> float:
    """Seconds the workers of `pool` were busy within [t0, t1] (wall clock, all workers summed)."""
    total = 0.0
    for name in os.listdir(busy_dir):
        with open(os.path.join(busy_dir, name)) as f:
            for line in f:
                p, _, start, end = line.split("\t")
                if p == pool:
                    total += max(0.0, min(float(end), t1) - max(float(start), t0))
    return total


class SleepEngine:
    """The `Engine` interface (rlkd_ray/engines/base.py); costs only time."""

    sync_ranks = 1

    def __init__(self, lat: Latencies, seed: int = 0):
        self.lat, self.rng, self.version = lat, random.Random(seed), 0
        self.busy_s = 0.0

    def generate(self, prompts: Sequence[Sequence[int]], sampling) -> List[list]:
        from rlkd_ray.engines.base import Completion

        greedy = sampling.temperature == 0
        if greedy:  # a GSRM decomposition; a one-prompt call is the teacher's, done once per problem
            # in data preparation in a real deployment (teacher structures cached with the dataset)
            per = self.lat.reward_s if len(prompts) > 1 else 0.0
            self.busy_s += _sleep(per * len(prompts), self.lat.jitter, self.rng, "reward")
            return [[Completion([1] * 8, [0.0] * 8, STRUCTURE, "stop")] for _ in prompts]
        self.busy_s += _sleep(self.lat.generate_s * sampling.n * len(prompts), self.lat.jitter, self.rng, "rollout")
        n_tok = min(self.lat.completion_tokens, sampling.max_new_tokens)
        ids = [self.rng.randrange(100, 1000) for _ in range(n_tok)]
        return [[Completion(list(ids), [-1.0] * n_tok, COMPLETION, "stop") for _ in range(sampling.n)]
                for _ in prompts]

    def score_choices(self, prompts, choices) -> List[List[float]]:
        yes = [math.log(0.9)] + [math.log(0.01)] * (len(choices) - 1)
        return [list(yes) for _ in prompts]

    def load_weights(self, version: int, weights: Dict) -> None:
        self.busy_s += _sleep(self.lat.sync_s, self.lat.jitter, self.rng, "rollout")
        self.version = version

    def join_weight_sync(self, host, port, first_rank, world_size, timeout_s) -> None:
        raise NotImplementedError("sleep engines use cluster.weight_sync: object_store")

    def receive_weights(self) -> int:
        raise NotImplementedError("sleep engines use cluster.weight_sync: object_store")

    def leave_weight_sync(self) -> None:
        pass

    def close(self) -> None:
        pass


def make_sleep_engine(engine_cfg, model_path: str, dtype: str, seed: int = 0, gpus: float = 1.0) -> SleepEngine:
    """`rlkd_ray.engines.make_engine`'s signature (tests/test_benchmarks.py keeps them equal)."""
    return SleepEngine(Latencies.from_env(), seed)


class SleepLearner:
    """`DeepSpeedPolicy`'s interface as the learner actor (actors/learner.py) uses it."""

    def __init__(self, cfg, student_path: str, reference_path: Optional[str] = None):
        import torch

        self.lat, self.rng = Latencies.from_env(), random.Random(cfg.trainer.seed)
        self.device = torch.device("cpu")
        self.weights = {"w": torch.zeros(self.lat.weights_kib * 256)}
        self.steps = 0

    def train_step(self, batch) -> Dict[str, float]:
        _sleep(self.lat.train_s, self.lat.jitter, self.rng, "learner")
        self.steps += 1
        tokens = float(batch.num_tokens)
        return {"loss_sum": 0.0, "kl_sum": 0.0, "tokens": tokens, "grad_norm": 0.0, "lr": 0.0}

    def gather_weights(self):
        return self.weights

    def broadcast_weights(self, group, version: int, bucket_bytes: int):
        raise NotImplementedError("sleep engines use cluster.weight_sync: object_store")

    def save(self, ckpt_dir: str, client_state: dict) -> None:
        """The parts a checkpoint must have to be committed (rlkd_ray/controller/checkpointing.py),
        with this learner's small state: DeepSpeed state and a Hugging Face student."""
        from safetensors.torch import save_file

        os.makedirs(os.path.join(ckpt_dir, "deepspeed"), exist_ok=True)
        os.makedirs(os.path.join(ckpt_dir, "hf"), exist_ok=True)
        with open(os.path.join(ckpt_dir, "deepspeed", "sleep_learner.json"), "w") as f:
            json.dump({"steps": self.steps, **client_state}, f, default=str)
        with open(os.path.join(ckpt_dir, "hf", "config.json"), "w") as f:
            json.dump({"model_type": "sleep"}, f)
        save_file(self.weights, os.path.join(ckpt_dir, "hf", "model.safetensors"))

    def load(self, ckpt_dir: str) -> dict:
        return {}


def install() -> None:
    """Ray's worker_process_setup_hook: make every engine and the learner of this process sleep."""
    import rlkd_ray.engines

    rlkd_ray.engines.make_engine = make_sleep_engine
    for name in ("actors.rollout", "actors.reward"):  # already imported (a reused worker)
        if name in sys.modules:
            sys.modules[name].make_engine = make_sleep_engine
    stub = types.ModuleType("rlkd_ray.learner.policy")  # never imports DeepSpeed in the workers
    stub.DeepSpeedPolicy = SleepLearner
    sys.modules["rlkd_ray.learner.policy"] = stub
