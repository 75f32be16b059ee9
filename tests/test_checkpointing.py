"""Atomic checkpoints (staging folder, manifest, rename, then `latest`), the fallback to the newest
complete checkpoint at resume, and the metrics lines a resumed run drops."""

from __future__ import annotations

import json
import re

import pytest

from rlkd_ray.config import LoggingConfig, RLKDConfig
from rlkd_ray.controller import checkpointing
from rlkd_ray.controller.metrics import MetricsWriter, read_metrics


def learner_save(folder, weights: bytes = b"w" * 64) -> None:
    """What the learner writes into a checkpoint folder: DeepSpeed state and the HF student."""
    (folder / "deepspeed").mkdir()
    (folder / "deepspeed" / "mp_rank_00_model_states.pt").write_bytes(b"s" * 32)
    (folder / "hf").mkdir()
    (folder / "hf" / "config.json").write_text("{}")
    (folder / "hf" / "model.safetensors").write_bytes(weights)


def save(run_dir, step: int):
    staging = checkpointing.staging_dir(run_dir, step)
    learner_save(staging)
    return checkpointing.commit(staging, {"step": step, "version": step})


def test_commit_renames_then_moves_latest(tmp_path):
    ckpt = save(tmp_path, 2)
    assert ckpt == checkpointing.step_dir(tmp_path, 2) and not ckpt.with_suffix(".partial").exists()
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000002"
    state = checkpointing.read_state(ckpt)
    assert state["step"] == 2 and state["manifest"]["hf/model.safetensors"] == 64
    assert checkpointing.problem(ckpt) is None
    assert checkpointing.latest_checkpoint(tmp_path) == ckpt


def test_commit_refuses_a_save_the_learner_did_not_finish(tmp_path):
    staging = checkpointing.staging_dir(tmp_path, 1)
    (staging / "deepspeed").mkdir()
    (staging / "deepspeed" / "x.pt").write_bytes(b"x")
    with pytest.raises(RuntimeError, match="lacks hf/config.json"):
        checkpointing.commit(staging, {"step": 1})
    assert not (tmp_path / "checkpoints" / "latest").exists()


def test_a_save_killed_part_way_is_ignored_and_cleared(tmp_path):
    first = save(tmp_path, 2)
    staging = checkpointing.staging_dir(tmp_path, 4)  # killed before the learner finished
    (staging / "deepspeed").mkdir()
    assert checkpointing.latest_checkpoint(tmp_path) == first
    assert checkpointing.staging_dir(tmp_path, 4) == staging and not any(staging.iterdir())  # a leftover is cleared


@pytest.mark.parametrize("damage,what", [
    (lambda c: (c / "hf" / "model.safetensors").write_bytes(b"w" * 10), "hf/model.safetensors has 10 bytes, 64 written"),
    (lambda c: (c / "hf" / "model.safetensors").unlink(), "no hf/\\*.safetensors"),
    (lambda c: (c / "deepspeed" / "mp_rank_00_model_states.pt").unlink(), "no deepspeed/"),
    (lambda c: (c / checkpointing.STATE_FILE).unlink(), "no trainer_state.json"),
    (lambda c: (c / checkpointing.STATE_FILE).write_text('{"step": 4'), "unreadable trainer_state.json"),
])
def test_a_corrupt_checkpoint_is_named_and_the_previous_one_used(tmp_path, damage, what, scenario):
    previous = save(tmp_path, 2)
    newest = save(tmp_path, 4)
    damage(newest)
    warnings = []
    assert checkpointing.latest_checkpoint(tmp_path, warn=warnings.append) == previous
    assert len(warnings) == 1 and str(newest) in warnings[0]
    assert re.search(what, warnings[0]), warnings[0]
    # saving that step again replaces the corrupt folder
    assert save(tmp_path, 4) == newest and checkpointing.latest_checkpoint(tmp_path) == newest
    scenario.record("fault", f"a corrupt newest checkpoint at resume: {what.replace(chr(92), '')}",
                    survived="the checkpoint before it, used; the corrupt one named in a warning",
                    lost="the steps after the previous checkpoint (trained again)")


def test_prune_keeps_the_newest_complete_checkpoints(tmp_path):
    for step in (2, 4, 6, 8):
        save(tmp_path, step)
    (checkpointing.step_dir(tmp_path, 6) / checkpointing.STATE_FILE).unlink()  # corrupt: not one of the kept
    later = save(tmp_path, 12)  # left by an attempt that resumed from step 8: kept
    newest = save(tmp_path, 10)
    deleted = checkpointing.prune(newest, keep=2)
    assert deleted == [checkpointing.step_dir(tmp_path, s) for s in (2, 4, 6)]
    left = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert left == ["step_000008", "step_000010", later.name]
    assert checkpointing.prune(newest, keep=1) == [checkpointing.step_dir(tmp_path, 8)]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_000010"


def test_no_checkpoint(tmp_path):
    assert checkpointing.latest_checkpoint(tmp_path) is None


def test_truncate_after_drops_later_and_cut_off_lines(tmp_path):
    writer = MetricsWriter(tmp_path, RLKDConfig(logging=LoggingConfig(tensorboard=True, progress=False)))
    for step in (1, 2, 3, 4):
        writer.log(step, {"loss": float(step)})
    writer.log(2, {"eval/x": 1.0})  # an eval line of step 2 stays
    with (tmp_path / "samples.jsonl").open("a") as f:
        f.write(json.dumps({"step": 2}) + "\n" + json.dumps({"step": 3}) + "\n")
    with writer.metrics_path.open("a") as f:
        f.write('{"step": 5, "lo')  # cut off by a kill
    assert writer.truncate_after(2) == 3
    writer.log(3, {"loss": 3.5})
    writer.close()
    assert [(m["step"], m.get("loss")) for m in read_metrics(tmp_path)] == [(1, 1.0), (2, 2.0), (2, None), (3, 3.5)]
    assert [json.loads(line)["step"] for line in (tmp_path / "samples.jsonl").read_text().splitlines()] == [2]


@pytest.mark.parametrize("key,value", [("seed", 7), ("prompts_per_step", 4)])
def test_resume_refuses_another_data_order(tmp_path, key, value):
    """The seed and prompts per step fix the data position and the sampling seeds of every step; a
    resume with others is refused before any state is loaded (the check runs ahead of the learner)."""
    from rlkd_ray.config import RLKDConfig
    from rlkd_ray.controller.driver import Driver
    from rlkd_ray.controller.stopping import StopRequest

    staging = checkpointing.staging_dir(tmp_path, 2)
    learner_save(staging)
    checkpointing.commit(staging, {"step": 2, "version": 2, "seed": 42, "prompts_per_step": 8})
    trainer = Driver.__new__(Driver)  # only what resume() reads before it loads anything
    trainer.cfg, trainer.run_dir, trainer.stop = RLKDConfig(), tmp_path, StopRequest()
    setattr(trainer.cfg.trainer, key, value)
    with pytest.raises(ValueError, match=f"written with trainer.{key}=.*; resume with the same value"):
        trainer.resume()
