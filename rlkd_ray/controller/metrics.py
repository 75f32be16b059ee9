"""Metrics sinks: JSON lines always (`metrics.jsonl`, `samples.jsonl`), TensorBoard and W&B when
configured; and the per-step summary of a batch of scored groups."""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from rlkd_ray.config import RLKDConfig
from rlkd_ray.controller.samples import PromptGroup


class MetricsWriter:
    """Sinks of one run, configured by `cfg.logging`; a W&B run carries the whole run config `cfg`."""

    def __init__(self, run_dir: str | Path, run_cfg: RLKDConfig):
        cfg = run_cfg.logging
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        self.samples_path = self.dir / "samples.jsonl"
        self.tb = self._tensorboard() if cfg.tensorboard else None
        self.wandb = None
        if cfg.wandb_project:
            import wandb  # optional extra: pip install rlkd-ray[wandb]

            self.wandb = wandb.init(project=cfg.wandb_project, dir=str(self.dir), resume="allow",
                                    config=OmegaConf.to_container(OmegaConf.structured(run_cfg)))

    def _tensorboard(self, purge_step: Optional[int] = None):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(str(self.dir / "tensorboard"), purge_step=purge_step)

    def truncate_after(self, step: int) -> int:
        """Forget what was logged after `step` (a resumed run logs those steps again): the lines of
        `metrics.jsonl` and `samples.jsonl` with a later step, a cut-off last line, and TensorBoard's
        later events. Returns the number of metrics lines dropped."""
        dropped = _drop_lines_after(self.metrics_path, step)
        _drop_lines_after(self.samples_path, step)
        if self.tb is not None:
            self.tb.close()
            self.tb = self._tensorboard(purge_step=step + 1)
        return dropped

    def log(self, step: int, metrics: Dict[str, float]) -> None:
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def log_samples(self, step: int, groups: List[PromptGroup], limit: int) -> None:
        """A few samples with their decomposed steps and step scores, for inspection."""
        with self.samples_path.open("a") as f:
            for g in groups[:limit]:
                s = g.samples[0]
                f.write(json.dumps({
                    "step": step, "problem_id": g.problem.id, "problem": g.problem.problem,
                    "gold": g.problem.answer, "completion": s.text, "rewards": s.rewards,
                    "total": s.total, "advantage": s.advantage, "version": s.version,
                    "structure": s.structure,
                }) + "\n")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


def batch_metrics(groups: List[PromptGroup], learner_version: int) -> Dict[str, float]:
    """Reward components, lengths, structure statistics, counters and staleness of one batch."""
    samples = [s for g in groups for s in g.samples]
    out: Dict[str, float] = {"reward/total": mean(s.total for s in samples)}
    for name in samples[0].rewards:
        values = [s.rewards[name] for s in samples if s.rewards.get(name) is not None]
        if values:
            out[f"reward/{name}"] = mean(values)
    out["accuracy"] = out.get("reward/accuracy", math.nan)
    # groups whose samples all got the same total: zero advantages, no learning signal
    out["batch/zero_signal_groups"] = mean(len({s.total for s in g.samples}) == 1 for g in groups)
    if "structure" in samples[0].rewards:  # groups whose samples the structure reward tells apart
        out["structure/varying_groups"] = mean(len({s.rewards["structure"] for s in g.samples}) > 1 for g in groups)
    out["response_length"] = mean(len(s.token_ids) for s in samples)
    out["truncated_fraction"] = mean(s.finish_reason == "length" for s in samples)
    structures = [s.structure for s in samples if s.structure]
    if structures:
        out["structure/student_steps"] = mean(st["student_steps"] for st in structures)
        out["structure/teacher_steps"] = mean(st["teacher_steps"] for st in structures)
    for key in ("judge_non_answers", "student_parse_failures", "student_too_long", "student_empty_paths",
                "teacher_parse_failures", "teacher_too_long", "unscorable_accuracy"):
        out[f"count/{key}"] = sum(g.counters.get(key, 0) for g in groups)
    staleness = [learner_version - s.version for s in samples]
    out["staleness/max"], out["staleness/mean"] = max(staleness), mean(staleness)
    out["time/generate"] = sum(g.timings.get("generate", 0.0) for g in groups)
    out["time/reward"] = sum(g.timings.get("reward", 0.0) for g in groups)
    return out


def _drop_lines_after(path: Path, step: int) -> int:
    """Keep the JSON lines of `path` whose step is at most `step` (atomically: a temporary file,
    then a rename). Returns how many lines were dropped."""
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):  # a line cut off by a kill
            continue
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    tmp.replace(path)
    return len(lines) - len(kept)


def read_metrics(run_dir: str | Path) -> List[Dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
