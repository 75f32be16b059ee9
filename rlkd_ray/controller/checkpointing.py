"""Run checkpoints: `<run_dir>/checkpoints/step_NNNNNN/` holds the DeepSpeed state of every rank
(`deepspeed/`: model, optimizer, LR scheduler, the rank's RNG states), the student in Hugging Face
format (`hf/`, safetensors) and `trainer_state.json` (step, policy version, data position, seed, and
the manifest: the size of every other file of the checkpoint).

Atomic: the learner writes into `step_NNNNNN.partial/`; once its part is there the trainer state is
written last, the folder is renamed to `step_NNNNNN/`, and only then does `latest` move to it. A kill at
any point leaves either the previous checkpoints untouched or a `.partial` folder that resume ignores.
At resume a checkpoint whose files do not match its manifest is named and skipped for the newest
complete one before it. With `trainer.keep_checkpoints` = K, each save deletes the checkpoints of earlier
steps but the K-1 newest complete ones: the run folder holds at most K of them."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Optional

STATE_FILE = "trainer_state.json"
PARTIAL_SUFFIX = ".partial"
_STEP_DIR = re.compile(r"step_(\d+)")


def step_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:06d}"


def staging_dir(run_dir: str | Path, step: int) -> Path:
    """An empty folder for the learner to write step `step`'s checkpoint into (a leftover of a
    killed save is removed)."""
    staging = step_dir(run_dir, step).with_suffix(PARTIAL_SUFFIX)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def commit(staging: Path, state: dict) -> Path:
    """Complete the checkpoint in `staging`: its manifest and trainer state, the rename to
    `step_NNNNNN/`, then `latest`. Returns the checkpoint folder."""
    missing = _missing_parts(staging)
    if missing:
        raise RuntimeError(f"checkpoint {staging} lacks {missing} after the learner's save")
    manifest = {str(p.relative_to(staging)): p.stat().st_size for p in sorted(staging.rglob("*")) if p.is_file()}
    (staging / STATE_FILE).write_text(json.dumps({**state, "manifest": manifest}, indent=1))
    final = staging.with_suffix("")
    if final.exists():  # an incomplete checkpoint of the same step, skipped at resume
        shutil.rmtree(final)
    os.replace(staging, final)
    latest = final.parent / "latest"
    tmp = latest.with_suffix(".tmp")
    tmp.write_text(final.name)
    os.replace(tmp, latest)
    return final


def problem(ckpt: Path) -> Optional[str]:
    """What makes `ckpt` unusable for a resume, or None when it is complete."""
    try:
        state = read_state(ckpt)
    except FileNotFoundError:
        return f"no {STATE_FILE}"
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return f"unreadable {STATE_FILE} ({e})"
    missing = _missing_parts(ckpt)
    if missing:
        return f"no {missing}"
    for name, size in state.get("manifest", {}).items():
        path = ckpt / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} written"
    return None


def latest_checkpoint(run_dir: str | Path, warn: Callable[[str], None] = print) -> Optional[Path]:
    """The newest complete checkpoint of the run, or None. Each newer one that is incomplete or
    corrupt is named through `warn` with what is wrong."""
    for _, ckpt in reversed(_step_folders(Path(run_dir) / "checkpoints")):
        what = problem(ckpt)
        if what is None:
            return ckpt
        warn(f"checkpoint {ckpt} is incomplete or corrupt ({what}); trying the one before it")
    return None


def prune(saved: Path, keep: int) -> list[Path]:
    """After `saved` is committed: delete the checkpoints of earlier steps but the `keep - 1` newest
    complete ones (incomplete ones among them go too). Later steps' folders, left by an attempt that
    resumed before them, are kept (the next save of their step replaces them). Returns what was deleted."""
    saved_step = int(_STEP_DIR.fullmatch(saved.name).group(1))
    earlier = [(step, p) for step, p in _step_folders(saved.parent) if step < saved_step]
    complete = [p for _, p in reversed(earlier) if problem(p) is None]
    kept = set(complete[:keep - 1])
    deleted = [p for _, p in earlier if p not in kept]
    for path in deleted:
        shutil.rmtree(path)
    return deleted


def _step_folders(root: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every `step_NNNNNN/` under `root`, by step."""
    if not root.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in root.glob("step_*") if (m := _STEP_DIR.fullmatch(p.name)) and p.is_dir())


def read_state(ckpt: Path) -> dict:
    return json.loads((ckpt / STATE_FILE).read_text())


def _missing_parts(ckpt: Path) -> Optional[str]:
    """The learner's part of a checkpoint: DeepSpeed state and the Hugging Face student."""
    if not (ckpt / "deepspeed").is_dir() or not any((ckpt / "deepspeed").iterdir()):
        return "deepspeed/"
    if not (ckpt / "hf" / "config.json").is_file():
        return "hf/config.json"
    if not any((ckpt / "hf").glob("*.safetensors")):
        return "hf/*.safetensors"
    return None
