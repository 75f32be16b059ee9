"""Driver-side handles of the actor pools: least-loaded dispatch, replacement of dead workers,
resizing while training runs, and the learner group as one object."""

from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, List, Optional, Tuple

import ray

from rlkd_ray.controller.batching import TrainBatch


class WorkerPool:
    """Actors of one kind. `submit` sends a call to the least-loaded live worker and remembers which
    worker holds which in-flight reference, so a dead worker's calls can be sent again.

    `make(worker_id)` starts one actor and returns (handle, its placement group or None); the group
    (a tensor-parallel engine's GPUs) is released when the worker is closed or replaced."""

    def __init__(self, name: str, make: Callable[[int], Tuple[Any, Any]], size: int):
        self.name = name
        self._make = make
        self._ids = itertools.count()
        self.workers: Dict[int, Any] = {}
        self.groups: Dict[int, Any] = {}  # worker id -> placement group
        self.load: Dict[int, int] = {}
        self.inflight: Dict[ray.ObjectRef, int] = {}
        self.retiring: Dict[int, Any] = {}  # removed from dispatch, closed once their calls finish
        self.replacements = 0
        self.resize(size)

    def __len__(self) -> int:
        return len(self.workers)

    def _add(self) -> int:
        wid = next(self._ids)
        self.workers[wid], group = self._make(wid)
        if group is not None:
            self.groups[wid] = group
        self.load[wid] = 0
        return wid

    def resize(self, size: int) -> List[int]:
        """Grow, or shrink by retiring the least-loaded workers (their queued calls still finish).
        Returns the ids of the workers added."""
        if size < 1:
            raise ValueError(f"{self.name} pool size must be >= 1, got {size}")
        added = []
        while len(self.workers) < size:
            added.append(self._add())
        while len(self.workers) > size:
            wid = min(self.workers, key=lambda w: self.load[w])
            self.retire(wid)
        return added

    def retire(self, wid: int) -> None:
        self.retiring[wid] = self.workers.pop(wid)
        self.load.pop(wid)
        self._close_if_idle(wid)

    def _close_if_idle(self, wid: int) -> None:
        if wid in self.retiring and wid not in self.inflight.values():
            _close(self.retiring.pop(wid), self.groups.pop(wid, None))

    def submit(self, method: str, *args) -> Tuple[Any, int]:
        """The call's reference(s); the first one is tracked (it fails if the worker dies)."""
        wid = min(self.workers, key=lambda w: (self.load[w], w))
        refs = getattr(self.workers[wid], method).remote(*args)
        self.inflight[refs[0] if isinstance(refs, list) else refs] = wid
        self.load[wid] += 1
        return refs, wid

    def done(self, ref: ray.ObjectRef) -> int:
        wid = self.inflight.pop(ref)
        if wid in self.load:
            self.load[wid] -= 1
        self._close_if_idle(wid)
        return wid

    def replace(self, wid: int) -> Optional[int]:
        """A new worker in place of dead `wid` (once, however many of its calls failed)."""
        if wid not in self.workers:
            return None
        _close(self.workers.pop(wid), self.groups.pop(wid, None))
        self.load.pop(wid)
        self.replacements += 1
        return self._add()

    def call_all(self, method: str, *args) -> List[ray.ObjectRef]:
        return [getattr(w, method).remote(*args) for w in self.workers.values()]

    def shutdown(self) -> None:
        for wid, handle in list(self.workers.items()) + list(self.retiring.items()):
            _close(handle, self.groups.pop(wid, None))
        self.workers.clear()
        self.retiring.clear()


def _close(handle, group=None) -> None:
    """Shut the engine down inside the actor (frees its memory and shared segments), kill it, then
    release its placement group."""
    try:
        ray.get(handle.close.remote(), timeout=60)
    except Exception:  # noqa: BLE001 - a dead actor has nothing left to close
        pass
    ray.kill(handle)
    if group is not None:
        from ray.util import remove_placement_group

        remove_placement_group(group)


class LearnerGroup:
    """The learner ranks as one object: one torch.distributed world, one call per step."""

    def __init__(self, learner_cls, cfg):
        from rlkd_ray.controller.placement import actor_options

        ws = cfg.learner.world_size
        opts = actor_options(cfg.learner.num_cpus, cfg.learner.num_gpus, cfg.cluster.learner_node)
        self.ranks = [learner_cls.options(**opts).remote(cfg, rank) for rank in range(ws)]
        addr, port = ray.get(self.ranks[0].address.remote())
        ray.get([r.setup.remote(addr, port) for r in self.ranks])

    def train_step(self, batch: TrainBatch) -> List[ray.ObjectRef]:
        ref = ray.put(batch)
        return [r.train_step.remote(ref) for r in self.ranks]

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
        return ray.get([r.publish_weights.remote() for r in self.ranks])[0]

    def save(self, ckpt_dir: str, client_state: dict) -> None:
        ray.get([r.save.remote(ckpt_dir, client_state) for r in self.ranks])

    def load(self, ckpt_dir: str) -> dict:
        return ray.get([r.load.remote(ckpt_dir) for r in self.ranks])[0]

    def shutdown(self) -> None:
        for r in self.ranks:
            ray.kill(r)
