"""A learner rank that dies (under NCCL: the watchdog ends it when a broadcast outlives
cluster.sync_timeout_s) stops the run with a message naming the last checkpoint."""

from __future__ import annotations

import pytest
from ray.exceptions import RayActorError
from test_checkpointing import learner_save

from rlkd_ray.controller import checkpointing, driver
from rlkd_ray.controller.driver import Driver, LearnerLost, TrainStep, WeightLoad, learner_lost_message


def test_message_names_the_last_checkpoint(tmp_path):
    assert "no checkpoint was written yet" in learner_lost_message(tmp_path, 3, "a train step")
    staging = checkpointing.staging_dir(tmp_path, 50)
    learner_save(staging)
    checkpointing.commit(staging, {"step": 50})
    msg = learner_lost_message(tmp_path, 57, "the weight sync of version 57")
    assert f"the last checkpoint is {tmp_path}/checkpoints/step_000050 (step 50)" in msg
    assert "trainer.resume=true" in msg and "after step 57" in msg and "sync_timeout_s" in msg


@pytest.mark.parametrize("kind", ["load", "train"])
def test_a_dead_learner_stops_the_run(tmp_path, monkeypatch, kind, scenario):
    def dead(_):
        raise RayActorError()

    monkeypatch.setattr(driver.ray, "get", dead)
    trainer = object.__new__(Driver)  # only the state these handlers read
    trainer.run_dir, trainer.step = tmp_path, 7
    with pytest.raises(LearnerLost, match="a learner rank died during .* after step 7; the run stops"):
        if kind == "load":
            trainer.on_load(object(), WeightLoad(7, None))  # the learner's own part of a sync
        else:
            trainer.on_train(TrainStep([object()], [], 0.0))
    scenario.record("fault", f"a learner rank lost during {'a weight sync' if kind == 'load' else 'a train step'}",
                    survived="the run stops with a message naming the last checkpoint and the resume setting",
                    lost="the steps after the last checkpoint (the learner's state lives only in its ranks)")
