"""The reward pool's size, decided from what the driver sees (`reward.autoscale`).

Every few seconds the driver tells `PoolAutoscaler.target` how many scoring calls are in flight and
how many workers the pool has:

- calls in flight > workers: some groups wait behind a busy worker. When that has held at every look
  for `grow_after_s`, the pool gets one worker more (up to `max_workers`);
- calls in flight < workers: some worker has nothing to do. When the most calls seen in flight over
  `shrink_after_s` stayed below the pool size, a worker was never needed: one worker fewer (down to
  `min_workers`). A pool that is idle between steps (on-policy training) but full while a step is
  scored keeps its size.

After a change both clocks start again, so a worker that is still starting is not counted against
the pool. A new worker asks Ray for its resources like any actor: on a cluster with the Ray autoscaler,
that adds a node. The size lives in the run's `Control` actor, so `rlkd scale` sees it and can set it;
the autoscaler goes on from whatever size the pool has.
"""

from __future__ import annotations

from typing import Optional

from rlkd_ray.config import AutoscaleConfig


class PoolAutoscaler:
    def __init__(self, cfg: AutoscaleConfig):
        self.cfg = cfg
        self.waiting_since: Optional[float] = None  # when calls began to queue behind busy workers
        self.window_start: Optional[float] = None  # start of the current shrink window
        self.peak = 0  # most calls in flight seen in the window
        self.grown = 0
        self.shrunk = 0

    def target(self, now: float, in_flight: int, size: int) -> int:
        """The pool size to have now (`size`: unchanged)."""
        c = self.cfg
        if self.window_start is None:
            self.window_start = now
        self.peak = max(self.peak, in_flight)
        if in_flight <= size:
            self.waiting_since = None
        elif self.waiting_since is None:
            self.waiting_since = now
        if self.waiting_since is not None and now - self.waiting_since >= c.grow_after_s and size < c.max_workers:
            self.grown += 1
            self.waiting_since = now  # the clock starts again
            return self._changed(now, size + 1)
        if now - self.window_start >= c.shrink_after_s:
            if self.peak < size and size > c.min_workers:
                self.shrunk += 1
                self.waiting_since = None
                return self._changed(now, size - 1)
            self.window_start, self.peak = now, in_flight
        return size

    def _changed(self, now: float, size: int) -> int:
        self.window_start, self.peak = now, 0
        return size
