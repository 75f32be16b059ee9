"""WeightSync of docs/design.md's diagram, driver side: how version v of the learner's weights reaches every
rollout worker. `cluster.weight_sync` picks one of two channels with one interface (`WeightChannel`):

- `object_store`: learner rank 0 gathers the full state into CPU memory and puts it once into the
  Ray object store; every rollout worker loads it from there (any device).
- `broadcast`: learner rank 0 sends the state from where it lives through one process group with
  every engine worker (rlkd_ray/weight_sync/protocol.py: bucketed, versions and manifest checked; NCCL on
  GPUs, gloo on CPU). A tensor-parallel engine takes one rank per worker. The group is formed at the
  first sync and again whenever the pool's members changed.

`publish(version)` starts one sync and returns its loads, (reference, worker id or None for the
learner's own part). `admit(wid, version)` brings a new worker to `version` before it generates:
actor calls run in order, so its generate calls queue behind the load. The learner must hold
`version` when either is called (the driver never calls them while a train step is in flight).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Dict, List, Optional, Tuple

import ray
from ray.exceptions import GetTimeoutError, RayActorError

from rlkd_ray.config import RLKDConfig
from rlkd_ray.controller.pools import ActorPool, LearnerGroup

# One member's part of a sync: (reference of its call, rollout worker id or None for the learner's)
Load = Tuple[ray.ObjectRef, Optional[int]]


class WeightChannel(ABC):
    """How version v of the learner's weights reaches every rollout worker."""

    @abstractmethod
    def publish(self, version: int) -> List[Load]:
        """Start one sync of `version` (held by the learner) to every rollout worker."""

    @abstractmethod
    def admit(self, wid: int, version: int) -> List[Load]:
        """Bring new rollout worker `wid` to `version` before it generates."""

    @abstractmethod
    def broken(self) -> None:
        """A sync lost a member part-way."""

    @abstractmethod
    def close(self) -> None:
        """Release what the channel holds (before the actors go)."""


class ObjectStoreChannel(WeightChannel):
    def __init__(self, learner: LearnerGroup, rollouts: ActorPool):
        self.learner, self.rollouts = learner, rollouts
        self.weights: Optional[List[ray.ObjectRef]] = None  # [ref] of the newest published state

    def publish(self, version: int) -> List[Load]:
        self.weights = self.learner.publish_weights()
        return [(ref, wid) for wid, ref in self.rollouts.call_all("load_weights", version, self.weights).items()]

    def admit(self, wid: int, version: int) -> List[Load]:
        if self.weights is None:  # nothing published yet: it loaded version 0 from disk
            return []
        return [(self.rollouts.call(wid, "load_weights", version, self.weights), wid)]

    def broken(self) -> None:
        """Nothing to mend: every load is independent."""

    def close(self) -> None:
        self.weights = None


class BroadcastChannel(WeightChannel):
    def __init__(self, learner: LearnerGroup, rollouts: ActorPool, timeout_s: float):
        self.learner, self.rollouts, self.timeout_s = learner, rollouts, timeout_s
        self.members: Dict[int, Any] = {}  # worker id -> handle, of the group now formed
        self.formed = False

    def publish(self, version: int) -> List[Load]:
        if not self.formed or self.members.keys() != set(self.rollouts.ids()):
            self.form()
        loads: List[Load] = [(ref, None) for ref in self.learner.ranks.call_all("broadcast_weights", version).values()]
        return loads + [(w.receive_weights.remote(), wid) for wid, w in self.members.items()]

    def admit(self, wid: int, version: int) -> List[Load]:
        """A newcomer joins a group formed anew, and everyone receives `version` (again)."""
        return [] if wid in self.members else self.publish(version)

    def broken(self) -> None:
        """A sync failed part-way (a member died): form the group anew before the next one."""
        self.formed = False

    def form(self) -> None:
        """Every member leaves the old group; learner rank 0 (rank 0, the sender) and every live rollout
        worker's engine ranks (1, 2, ...) join a new one on a fresh port. A worker found dead is left
        out: the driver replaces it when its next call fails, and the replacement is admitted."""
        self.leave(timeout_s=None)
        host, port = ray.get(self.learner.ranks.call(0, "address"))
        members = self.rollouts.members()
        asked = {wid: w.sync_ranks.remote() for wid, w in members.items()}
        workers, sizes = {}, []
        for wid, ref in asked.items():
            try:
                sizes.append(ray.get(ref))
            except RayActorError:
                continue
            workers[wid] = members[wid]
        world = 1 + sum(sizes)
        joins = [self.learner.ranks.call(0, "join_weight_sync", host, port, world, self.timeout_s)]
        first = 1
        for w, n in zip(workers.values(), sizes):
            joins.append(w.join_weight_sync.remote(host, port, first, world, self.timeout_s))
            first += n
        ray.get(joins)
        self.members, self.formed = workers, True

    def leave(self, timeout_s: Optional[float]) -> None:
        """Every live member closes its part of the group (waiting out a sync in flight, up to the
        timeout)."""
        refs = [self.learner.ranks.call(0, "leave_weight_sync")]
        refs += [h.leave_weight_sync.remote() for h in self.members.values()]  # also members since replaced
        for ref in refs:
            try:
                ray.get(ref, timeout=timeout_s)
            except (RayActorError, GetTimeoutError):  # a dead or stuck member: it goes with its actor
                pass
        self.members, self.formed = {}, False

    def close(self) -> None:
        self.leave(timeout_s=30)


def make_channel(cfg: RLKDConfig, learner: LearnerGroup, rollouts: ActorPool) -> WeightChannel:
    if cfg.cluster.weight_sync == "broadcast":
        return BroadcastChannel(learner, rollouts, cfg.cluster.sync_timeout_s)
    return ObjectStoreChannel(learner, rollouts)
