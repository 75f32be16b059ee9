"""Run checkpoints: `<run_dir>/checkpoints/step_NNNNNN/` holds the DeepSpeed state of every rank
(`deepspeed/`, with the rank's RNG state), the student in Hugging Face format (`hf/`, safetensors)
and `trainer_state.json` (step, policy version, data position; the driver draws every seed from
(seed, step)). `latest` names the newest complete checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

STATE_FILE = "trainer_state.json"


def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def write_state(ckpt: Path, state: dict) -> None:
    """The trainer state, then `latest` (atomically): a checkpoint is complete once `latest` names it."""
    ckpt.mkdir(parents=True, exist_ok=True)  # the learners may have written theirs on another node
    (ckpt / STATE_FILE).write_text(json.dumps(state, indent=1))
    latest = ckpt.parent / "latest"
    tmp = latest.with_suffix(".tmp")
    tmp.write_text(ckpt.name)
    os.replace(tmp, latest)


def latest_checkpoint(run_dir: str | Path) -> Optional[Path]:
    latest = Path(run_dir) / "checkpoints" / "latest"
    if not latest.exists():
        return None
    ckpt = latest.parent / latest.read_text().strip()
    if not (ckpt / STATE_FILE).exists():
        raise FileNotFoundError(f"{latest} names {ckpt}, which has no {STATE_FILE}")
    return ckpt


def read_state(ckpt: Path) -> dict:
    return json.loads((ckpt / STATE_FILE).read_text())
