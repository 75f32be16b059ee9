"""Driver-side handles of groups of Ray actors: one `ActorPool` abstraction that every caller uses
(the rollout and reward pools of training, the eval workers, the reward workers of
`prepare-structures`, the learner ranks), and the learner ranks as one object (`LearnerGroup`).

An `ActorPool` holds its members by worker id (ids are never re-used) and offers:

- `submit(method, ...)`: a call to the least-loaded live member that has started (any member while
  none has), tracked until `done(ref)`, so that the calls of a member that died can be sent again;
  a member added to a running pool gets work once Ray has placed and started it;
- `call(wid, method, ...)`, `call_all(method, ...)`: untracked calls to one member or to every member;
- `map_unordered(method, calls)`: a list of calls through the pool, results as they finish;
- `resize(size)`, `replace(wid)`, `shutdown()`.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import ray
from ray.exceptions import RayActorError

from rlkd_ray.controller.batching import TrainBatch

# (actor handle, its placement group or None) of worker `wid`
MakeActor = Callable[[int], Tuple[Any, Any]]


class ActorPool:
    """Actors of one kind. `make(worker_id)` starts one actor and returns (handle, its placement group
    or None); the group (a tensor-parallel engine's GPUs) is released when the worker is closed or
    replaced."""

    def __init__(self, name: str, make: MakeActor, size: int):
        self.name = name
        self._make = make
        self._ids = itertools.count()
        self._members: Dict[int, Any] = {}  # worker id -> handle, in dispatch
        self.groups: Dict[int, Any] = {}  # worker id -> placement group
        self._load: Dict[int, int] = {}  # worker id -> tracked calls in flight
        self._inflight: Dict[ray.ObjectRef, int] = {}  # tracked reference -> worker id
        self._retiring: Dict[int, Any] = {}  # removed from dispatch, closed once their calls finish
        self._starting: Dict[ray.ObjectRef, int] = {}  # `__ray_ready__` of members not yet seen started
        self.replacements = 0
        self.resize(size)

    def __len__(self) -> int:
        return len(self._members)

    def ids(self) -> List[int]:
        return sorted(self._members)

    def members(self) -> Dict[int, Any]:
        """Worker id -> handle of every live member (a copy)."""
        return dict(self._members)

    def busy(self) -> List[int]:
        """Ids of the live members with tracked calls in flight."""
        return [wid for wid in self.ids() if self._load[wid]]

    def calls_in_flight(self) -> int:
        """Tracked calls of the live members not yet `done` (running or queued)."""
        return sum(self._load.values())

    def started(self) -> List[int]:
        """Ids of the live members Ray has started (or failed to start: their calls then fail)."""
        if self._starting:
            ready, _ = ray.wait(list(self._starting), num_returns=len(self._starting), timeout=0)
            for ref in ready:
                self._starting.pop(ref)
        starting = set(self._starting.values())
        return [wid for wid in self.ids() if wid not in starting]

    # -- calls -------------------------------------------------------------------------------------
    def submit(self, method: str, *args) -> Tuple[Any, int]:
        """(the call's reference(s), worker id) of a call to the least-loaded member (lowest id on a
        tie). The first reference is tracked until `done`: it fails if the worker dies."""
        wid = min(self.started() or self._members, key=lambda w: (self._load[w], w))
        refs = getattr(self._members[wid], method).remote(*args)
        self._inflight[refs[0] if isinstance(refs, list) else refs] = wid
        self._load[wid] += 1
        return refs, wid

    def done(self, ref: ray.ObjectRef) -> int:
        """The worker id of a finished tracked call (a retiring worker closes after its last)."""
        wid = self._inflight.pop(ref)
        if wid in self._load:
            self._load[wid] -= 1
        self._close_if_idle(wid)
        return wid

    def call(self, wid: int, method: str, *args) -> Any:
        """An untracked call to member `wid`."""
        return getattr(self._members[wid], method).remote(*args)

    def call_all(self, method: str, *args) -> Dict[int, Any]:
        """Worker id -> reference of one untracked call to every member, in id order."""
        return {wid: self.call(wid, method, *args) for wid in self.ids()}

    def map_unordered(self, method: str, calls: Sequence[tuple], per_worker: int = 2, replace_dead: bool = False,
                      poll_s: Optional[float] = None) -> Iterator[Tuple[int, Any]]:
        """(index in `calls`, result) of `method(*calls[i])` for every call, as each finishes; at most
        `per_worker` calls queued per member. A call whose worker died is sent again to a replacement
        with `replace_dead`; else the `RayActorError` propagates. `poll_s` bounds each wait (so that
        Ctrl-C stops a long run)."""
        pending = iter(enumerate(calls))
        inflight: Dict[ray.ObjectRef, int] = {}
        try:
            while True:
                while len(inflight) < per_worker * len(self):
                    index, args = next(pending, (None, None))
                    if index is None:
                        break
                    inflight[self.submit(method, *args)[0]] = index
                if not inflight:
                    return
                ready: List[ray.ObjectRef] = []
                while not ready:
                    ready, _ = ray.wait(list(inflight), num_returns=1, timeout=poll_s)
                index = inflight.pop(ready[0])
                wid = self.done(ready[0])
                try:
                    result = ray.get(ready[0])
                except RayActorError as e:
                    if not replace_dead:
                        raise
                    raise_if_startup_failure(e, self.name)
                    self.replace(wid)
                    inflight[self.submit(method, *calls[index])[0]] = index
                    continue
                yield index, result
        finally:
            for ref in inflight:  # a consumer that stopped early: the pool forgets the calls it left
                self.done(ref)

    # -- membership --------------------------------------------------------------------------------
    def resize(self, size: int) -> List[int]:
        """Grow, or shrink by retiring the least-loaded workers (their queued calls still finish).
        Returns the ids of the workers added."""
        if size < 1:
            raise ValueError(f"{self.name} pool size must be >= 1, got {size}")
        added = []
        while len(self._members) < size:
            added.append(self._add())
        while len(self._members) > size:
            self._retire(min(self._members, key=lambda w: (self._load[w], w)))
        return added

    def replace(self, wid: int) -> Optional[int]:
        """A new worker in place of dead `wid` (once, however many of its calls failed): its id, or
        None when `wid` was already replaced."""
        if wid not in self._members:
            return None
        _close(self._members.pop(wid), self.groups.pop(wid, None))
        self._load.pop(wid)
        self._forget_start(wid)
        self.replacements += 1
        return self._add()

    def shutdown(self) -> None:
        """Close every member. One with tracked calls still in flight (a stopped run drops them) is
        killed instead: its close would queue behind those calls."""
        busy = set(self._inflight.values())
        for wid, handle in list(self._members.items()) + list(self._retiring.items()):
            _close(handle, self.groups.pop(wid, None), graceful=wid not in busy)
        self._members.clear()
        self._retiring.clear()
        self._inflight.clear()
        self._starting.clear()

    def _add(self) -> int:
        wid = next(self._ids)
        self._members[wid], group = self._make(wid)
        if group is not None:
            self.groups[wid] = group
        self._load[wid] = 0
        self._starting[self._members[wid].__ray_ready__.remote()] = wid
        return wid

    def _retire(self, wid: int) -> None:
        self._retiring[wid] = self._members.pop(wid)
        self._load.pop(wid)
        self._forget_start(wid)
        self._close_if_idle(wid)

    def _forget_start(self, wid: int) -> None:
        self._starting = {ref: w for ref, w in self._starting.items() if w != wid}

    def _close_if_idle(self, wid: int) -> None:
        if wid in self._retiring and wid not in self._inflight.values():
            _close(self._retiring.pop(wid), self.groups.pop(wid, None))


def _close(handle, group=None, graceful: bool = True) -> None:
    """Shut the engine down inside the actor (frees its memory and shared segments; `graceful`), kill
    it, then release its placement group."""
    if graceful:
        try:
            ray.get(handle.close.remote(), timeout=60)
        except Exception:  # noqa: BLE001 - a dead actor has nothing left to close
            pass
    ray.kill(handle)
    if group is not None:
        from ray.util import remove_placement_group

        remove_placement_group(group)


def raise_if_startup_failure(error: RayActorError, pool: str) -> None:
    """A worker whose constructor raised is a configuration problem, not a fault to retry."""
    if error.actor_init_failed:
        raise RuntimeError(f"a {pool} worker failed to start (not retried): {error}") from error


class LearnerGroup:
    """The learner ranks (`actors/learner.py` LearnerWorker, one per data-parallel rank) as one
    object: one torch.distributed world, one call per step. `ranks` is their pool (worker id = rank);
    it is never resized: the world size is fixed."""

    def __init__(self, worker_cls, cfg):
        from rlkd_ray.controller.placement import actor_options

        opts = actor_options(cfg.learner.num_cpus, cfg.learner.num_gpus, cfg.cluster.learner_node)
        self.ranks = ActorPool("learner", lambda rank: (worker_cls.options(**opts).remote(cfg, rank), None),
                               cfg.learner.world_size)
        addr, port = ray.get(self.ranks.call(0, "address"))
        ray.get(list(self.ranks.call_all("setup", addr, port).values()))

    def train_step(self, batch: TrainBatch) -> List[ray.ObjectRef]:
        """The GRPO step of every rank on one object-store copy of `batch` (per-rank metric sums)."""
        ref = ray.put(batch)
        return list(self.ranks.call_all("train_step", ref).values())

    def sft_step(self, batch: TrainBatch) -> List[Dict[str, float]]:
        """One supervised step of every rank (per-rank metric sums)."""
        ref = ray.put(batch)
        return ray.get(list(self.ranks.call_all("sft_step", ref).values()))

    @staticmethod
    def reduce_metrics(per_rank: List[Dict[str, float]]) -> Dict[str, float]:
        """Token-weighted means over all ranks' micro-batches (`<name>_sum`); maxima over ranks (`<name>_max`)."""
        tokens = sum(m["tokens"] for m in per_rank)
        out = {k[: -len("_sum")]: sum(m[k] for m in per_rank) / max(tokens, 1.0)
               for k in per_rank[0] if k.endswith("_sum")}
        out.update({k: max(m[k] for m in per_rank) for k in per_rank[0] if k.endswith("_max")})
        out.update(grad_norm=per_rank[0]["grad_norm"], lr=per_rank[0]["lr"], tokens=tokens)
        return out

    def publish_weights(self) -> List[ray.ObjectRef]:
        """[reference of the full state dict] (collective: every rank takes part in the gather)."""
        return ray.get(list(self.ranks.call_all("publish_weights").values()))[0]

    def save(self, ckpt_dir: str, client_state: dict) -> None:
        ray.get(list(self.ranks.call_all("save", ckpt_dir, client_state).values()))

    def load(self, ckpt_dir: str) -> dict:
        return ray.get(list(self.ranks.call_all("load", ckpt_dir).values()))[0]

    def shutdown(self) -> None:
        self.ranks.shutdown()
