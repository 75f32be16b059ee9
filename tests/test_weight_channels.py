"""The two weight channels (rlkd_ray/weight_sync/channels.py) with stand-in learner and rollout
actors: what `publish` and `admit` send, to whom, and when the broadcast group is formed anew."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
from fake_workers import STEP_TOKEN, FakeLearner, FakeRollout, FakeSource, read_records

from rlkd_ray.config import load_config
from rlkd_ray.controller.batching import build_batch
from rlkd_ray.controller.pools import ActorPool, LearnerGroup
from rlkd_ray.controller.samples import Sample
from rlkd_ray.weight_sync.channels import BroadcastChannel, ObjectStoreChannel, WeightChannel, make_channel

CONF = Path(__file__).resolve().parent.parent / "conf"
Learner, Rollout = ray.remote(num_cpus=0.05)(FakeLearner), ray.remote(num_cpus=0.05)(FakeRollout)


@pytest.fixture
def actors(ray_cluster, tmp_path):
    cfg = load_config(CONF / "local.yaml", [f"paths.run_dir={tmp_path}", "learner.num_cpus=0.05",
                                            "rollout.group_size=2"])
    learner = LearnerGroup(Learner, cfg)
    rollouts = ActorPool("rollout", lambda i: (Rollout.remote(cfg, i), None), 2)
    yield cfg, learner, rollouts
    rollouts.shutdown()
    learner.shutdown()


def loaded_versions(rollouts: ActorPool):
    return ray.get(list(rollouts.call_all("version").values()))


def test_object_store_publishes_to_every_worker_and_admits_a_newcomer(actors):
    cfg, learner, rollouts = actors
    channel = make_channel(cfg, learner, rollouts)
    assert isinstance(channel, ObjectStoreChannel) and isinstance(channel, WeightChannel)
    assert channel.admit(0, 0) == []  # nothing published yet: a new worker holds version 0 from disk
    step(learner)
    loads = channel.publish(1)
    assert [wid for _, wid in loads] == [0, 1]
    ray.get([ref for ref, _ in loads])
    assert loaded_versions(rollouts) == [1, 1]
    (new,) = rollouts.resize(3)
    loads = channel.admit(new, 1)
    assert [wid for _, wid in loads] == [new]
    ray.get([ref for ref, _ in loads])
    assert loaded_versions(rollouts) == [1, 1, 1]
    channel.close()


def test_broadcast_forms_its_group_once_and_anew_when_members_change(actors, tmp_path):
    cfg, learner, rollouts = actors
    cfg.cluster.weight_sync = "broadcast"
    channel = make_channel(cfg, learner, rollouts)
    assert isinstance(channel, BroadcastChannel) and isinstance(channel, WeightChannel)
    step(learner)
    loads = channel.publish(1)
    assert [wid for _, wid in loads] == [None, 0, 1]  # the learner's part (the sender), then each member
    ray.get([ref for ref, _ in loads])
    assert loaded_versions(rollouts) == [1, 1]
    joins = read_records(tmp_path, "join")
    assert sorted((j["worker"], j["first_rank"], j["world_size"]) for j in joins if j["worker"] != "learner") == [
        (0, 1, 3), (1, 2, 3)]
    assert channel.admit(0, 1) == []  # already a member: nothing to send
    (new,) = rollouts.resize(3)
    loads = channel.admit(new, 1)  # a newcomer: the group is formed anew and everyone receives
    assert [wid for _, wid in loads] == [None, 0, 1, new] and sorted(channel.members) == [0, 1, new]
    ray.get([ref for ref, _ in loads])
    assert loaded_versions(rollouts) == [1, 1, 1]
    learner_joins = len([j for j in read_records(tmp_path, "join") if j["worker"] == "learner"])
    channel.broken()  # a sync lost a member part-way: the next one forms the group anew
    ray.get([ref for ref, _ in channel.publish(1)])
    assert len([j for j in read_records(tmp_path, "join") if j["worker"] == "learner"]) == learner_joins + 1
    channel.close()


def test_broadcast_group_leaves_out_a_worker_found_dead(actors, tmp_path):
    cfg, learner, rollouts = actors
    cfg.cluster.weight_sync = "broadcast"
    channel = make_channel(cfg, learner, rollouts)
    step(learner)
    ray.kill(rollouts.members()[0])
    loads = channel.publish(1)  # formed over the live worker only: the sync completes
    assert [wid for _, wid in loads] == [None, 1] and list(channel.members) == [1]
    ray.get([ref for ref, _ in loads])
    joins = [j for j in read_records(tmp_path, "join") if j["worker"] != "learner"]
    assert [(j["worker"], j["first_rank"], j["world_size"]) for j in joins] == [(1, 1, 2)]
    new = rollouts.replace(0)  # what the driver does once a call to the dead worker fails
    loads = channel.admit(new, 1)
    assert [wid for _, wid in loads] == [None, 1, new]
    ray.get([ref for ref, _ in loads])
    channel.close()


def step(learner: LearnerGroup) -> None:
    """One (fake) train step: the learner then holds version 1."""
    group = FakeSource().group(0, 0)
    group.samples = [Sample([STEP_TOKEN], [-1.0], "t", "stop", 0, advantage=a) for a in (1.0, -1.0)]
    ray.get(learner.train_step(build_batch([group], pad_id=0)))
