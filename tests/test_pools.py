"""ActorPool with tiny stand-in actors: least-loaded dispatch, resizing (retired workers finish
their queued calls first), replacement, and `map_unordered`'s re-sends."""

from __future__ import annotations

import time

import pytest
import ray
from fake_workers import Echo, SlowStart
from ray.exceptions import RayActorError

from rlkd_ray.controller.pools import ActorPool

EchoActor = ray.remote(num_cpus=0.05)(Echo)


def echo_pool(size: int) -> ActorPool:
    return ActorPool("echo", lambda wid: (EchoActor.remote(wid), None), size)


def test_submit_goes_to_the_least_loaded_worker(ray_cluster):
    pool = echo_pool(3)
    try:
        calls = [pool.submit("work", i) for i in range(4)]
        assert [wid for _, wid in calls] == [0, 1, 2, 0]  # ties: lowest id
        assert pool.busy() == [0, 1, 2]
        assert pool.done(calls[1][0]) == 1
        assert pool.submit("work", 4)[1] == 1  # worker 1 is now the least loaded
        assert ray.get(calls[3][0]) == (0, 3)
        assert ray.get(pool.call(2, "work", "x")) == (2, "x")
        assert ray.get(list(pool.call_all("work", "y").values())) == [(0, "y"), (1, "y"), (2, "y")]
    finally:
        pool.shutdown()


def test_a_member_still_starting_gets_calls_only_once_it_has_started(ray_cluster):
    slow = ray.remote(num_cpus=0.05)(SlowStart)
    pool = ActorPool("echo", lambda wid: (slow.remote(wid, 3.0 if wid else 0.0), None), 1)
    try:
        ray.get(pool.call(0, "work", "up"))
        assert pool.resize(2) == [1]
        calls = [pool.submit("work", i) for i in range(3)]
        assert [wid for _, wid in calls] == [0, 0, 0]  # worker 1 is still starting
        ray.get(pool.call(1, "work", "up"))
        assert pool.started() == [0, 1] and pool.submit("work", 3)[1] == 1
    finally:
        pool.shutdown()


def test_resize_grows_and_shrinks_retiring_workers_after_their_calls(ray_cluster):
    pool = echo_pool(2)
    try:
        calls = [pool.submit("work", i, 0.5) for i in range(3)]
        assert [wid for _, wid in calls] == [0, 1, 0]
        retired = pool.members()[1]
        assert pool.resize(1) == [] and pool.ids() == [0]  # the least-loaded one goes, though busy
        assert pool.submit("work", "next")[1] == 0  # it takes no new call ...
        assert ray.get(calls[1][0]) == (1, 1)  # ... but its queued call still finishes ...
        pool.done(calls[1][0])
        with pytest.raises(RayActorError):  # ... and then it is closed (ray.kill lands a moment later)
            deadline = time.time() + 30
            while time.time() < deadline:
                ray.get(retired.work.remote("late"))
                time.sleep(0.1)
        assert pool.resize(3) == [2, 3] and pool.ids() == [0, 2, 3]
        with pytest.raises(ValueError, match="echo pool size must be >= 1"):
            pool.resize(0)
    finally:
        pool.shutdown()


def test_a_dead_worker_is_replaced_once(ray_cluster):
    pool = echo_pool(2)
    try:
        assert pool.replace(0) == 2
        assert pool.replace(0) is None  # a second failed call of the same dead worker
        assert pool.ids() == [1, 2] and pool.replacements == 1
    finally:
        pool.shutdown()


def test_map_unordered_sends_the_calls_of_a_dead_worker_again(ray_cluster):
    pool = echo_pool(2)
    try:
        results = dict(pool.map_unordered("work_unless_first", [(i,) for i in range(6)], replace_dead=True))
        assert sorted(results) == list(range(6))
        assert all(wid != 0 and x == i for i, (wid, x) in results.items())
        assert pool.replacements == 1 and 0 not in pool.ids() and pool.busy() == []
    finally:
        pool.shutdown()


def test_map_unordered_without_replacement_raises_on_a_dead_worker(ray_cluster):
    pool = echo_pool(1)
    try:
        with pytest.raises(RayActorError):
            list(pool.map_unordered("work_unless_first", [(i,) for i in range(3)]))
        assert pool.busy() == []  # the calls it left behind are forgotten
    finally:
        pool.shutdown()
