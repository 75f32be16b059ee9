"""The end-of-training summary that `rlkd train` prints, from the run's `metrics.jsonl`: for the first
and the last optimizer step, the batch mean of each reward component and the accuracy, and (from 4
steps on) their means over the first and the last quarter of the steps, which a batch of a few groups
makes far less noisy than one step; and for each
held-out benchmark of the in-training eval, pass@1 with its interval at the first and the last eval
(with `trainer.eval_at_start`, the first is the initial weights, step 0)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Dict, List

from rlkd_ray.controller.metrics import read_metrics

_PASS1 = re.compile(r"eval/(?P<bench>.+)/pass@1")


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _mean(rows: List[Dict[str, Any]], key: str) -> Any:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


def training_summary(run_dir: str | Path, confidence: float = 0.95) -> str:
    """The summary's text (module docstring); empty when the run logged no step."""
    records = read_metrics(run_dir)
    steps = [r for r in records if "reward/total" in r]
    if not steps:
        return ""
    first, last = steps[0], steps[-1]
    components = sorted({k for r in (first, last) for k in r if k.startswith("reward/")})
    q = len(steps) // 4
    quarters = [steps[:q], steps[-q:]] if q else []
    header = [f"step {first['step']}", f"step {last['step']}"]
    header += [f"steps {rows[0]['step']}-{rows[-1]['step']}" for rows in quarters]
    lines = [f"{'':24}" + "".join(f" {h:>12}" for h in header)]
    for key in components + ["accuracy", "learner/grad_norm"]:
        values = [first.get(key), last.get(key)] + [_mean(rows, key) for rows in quarters]
        lines.append(f"{key:24}" + "".join(f" {_fmt(v):>12}" for v in values))
    evals: Dict[str, List[Dict[str, Any]]] = {}
    for r in records:
        for key in r:
            m = _PASS1.fullmatch(key)
            if m:
                evals.setdefault(m.group("bench"), []).append(r)
    for bench, rows in evals.items():
        key = f"eval/{bench}/pass@1"
        shown = [rows[0]] if len(rows) == 1 else [rows[0], rows[-1]]
        parts = [f"step {r['step']}: {100 * r[key]:.1f}% [{100 * r[key + '_low']:.1f}, {100 * r[key + '_high']:.1f}]"
                 for r in shown]
        lines.append(f"held-out {bench} pass@1 ({100 * confidence:g}% interval): " + " -> ".join(parts))
    return "\n".join(lines)
