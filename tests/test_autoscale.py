"""The reward pool's autoscaler (rlkd_ray/controller/autoscale.py): its decisions from what the driver
sees, and a run whose slow reward stage makes the pool grow (tests/test_driver.py has the run)."""

from __future__ import annotations

import pytest

from rlkd_ray.config import AutoscaleConfig, ConfigError, load_config
from rlkd_ray.controller.autoscale import PoolAutoscaler

CFG = AutoscaleConfig(max_workers=3, min_workers=1, grow_after_s=10, shrink_after_s=60)


def sizes(looks, size=1, cfg=CFG):
    """The pool size after each look (time, calls in flight)."""
    scaler, out = PoolAutoscaler(cfg), []
    for now, in_flight in looks:
        size = scaler.target(now, in_flight, size)
        out.append(size)
    return out


def test_groups_waiting_grow_the_pool_one_worker_at_a_time_up_to_the_bound():
    # 4 calls on 1 worker from t=0: +1 at t=10, the clock starts again, +1 at t=20, then the bound.
    assert sizes([(t, 4) for t in range(0, 40, 2)]) == [1] * 5 + [2] * 5 + [3] * 10


def test_a_wait_that_ends_before_grow_after_s_does_not_grow():
    assert sizes([(0, 3), (4, 3), (8, 1), (12, 3), (16, 3)]) == [1] * 5


def test_a_pool_busy_while_a_step_is_scored_keeps_its_size_and_one_never_full_shrinks():
    # 3 workers, all busy for a moment every 30 s (a step), idle in between: never shrinks.
    on_policy = [(t, 3 if t % 30 == 0 else 0) for t in range(0, 300, 2)]
    assert sizes(on_policy, size=3) == [3] * len(on_policy)
    # at most 1 call in flight on 3 workers: one fewer after each window of 60 s, down to min_workers
    assert sizes([(t, 1) for t in range(0, 200, 2)], size=3)[::30] == [3, 2, 1, 1]


def test_the_bounds_are_checked():
    with pytest.raises(ConfigError, match="reward.autoscale.min_workers"):
        load_config("conf/local.yaml", ["reward.autoscale.max_workers=2", "reward.autoscale.min_workers=3"])
    with pytest.raises(ConfigError, match="reward.autoscale.grow_after_s"):
        load_config("conf/local.yaml", ["reward.autoscale.max_workers=2", "reward.autoscale.grow_after_s=0"])
    load_config("conf/local.yaml", ["reward.autoscale.min_workers=7"])  # off: not checked
