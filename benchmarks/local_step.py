"""Where a `make train-local` step goes, and what the speed settings buy: the same `rlkd train` on the
same config, data and shape, run once per setting one after the other (each a fresh process with the
whole machine). Rows:

  before       learner on 1 thread in float32 over whole rows, rollout engine pinned to core 0 (the
               earlier defaults)
  whole-rows   conf/local.yaml as shipped but learner.shared_prompt_pass=false: every row's prompt run
               again (what the shared prompt pass buys)
  local        conf/local.yaml as shipped: learner on both cores with bf16 autocast and one pass per
               distinct prompt, engine on cores 0-1
  staleness-1  conf/local.yaml with trainer.max_staleness=1 (rollouts one policy version ahead)

Per row: seconds per step and per stage (`time/*` of the timed steps), the slowest stage, the step
over the slowest stage (target ≤ 1.2 with max_staleness ≥ 1) and the speed-up over `before`.

    python benchmarks/local_step.py                      # 1 warm-up + 3 timed steps per row
    python benchmarks/local_step.py --rows before,local --steps 1 --no-doc
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import _report  # noqa: E402

ROWS = {
    "before": ["learner.cpu_threads=1", "learner.autocast=null", "learner.shared_prompt_pass=false",
               "rollout.engine.cpu_cores=0"],
    "whole-rows": ["learner.shared_prompt_pass=false"],
    "local": [],
    "staleness-1": ["trainer.max_staleness=1"],
}
STAGES = ("generate", "reward", "train", "sync")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/local.yaml")
    p.add_argument("--rows", default=",".join(ROWS))
    p.add_argument("--warmup-steps", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up")
    p.add_argument("--timeout-s", type=int, default=1800, help="per row")
    _report.add_output_args(p)
    return p.parse_args(argv)


def run_row(args, name: str) -> dict:
    from rlkd_ray.controller.metrics import read_metrics

    with tempfile.TemporaryDirectory(prefix="rlkd-local-step-") as tmp:
        cmd = [sys.executable, "-m", "rlkd_ray.cli", "train", "--config", args.config, f"paths.run_dir={tmp}",
               f"trainer.total_steps={args.warmup_steps + args.steps}", "trainer.eval_every=0",
               "trainer.eval_at_start=false", f"trainer.save_every={10**6}", "logging.tensorboard=false",
               "logging.progress=false", *ROWS[name]]
        env = dict(os.environ)
        env.pop("RAY_ADDRESS", None)
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=args.timeout_s)
        if proc.returncode != 0:
            raise SystemExit(f"row {name}: `rlkd train` failed with exit code {proc.returncode}")
        rows = read_metrics(tmp)[args.warmup_steps:]
    print(f"== {name}: {time.perf_counter() - start:.0f} s in all", flush=True)
    times = {k: [r[f"time/{k}"] for r in rows] for k in ("step", *STAGES)}
    return {"time": times, "reward_total": [r["reward/total"] for r in rows],
            "length": [r["response_length"] for r in rows]}


def summarise(results: dict, base: str = "before") -> list:
    rows = []
    for name, r in results.items():
        t = r["time"]
        step = _report.mean(t["step"])
        stages = {k: _report.mean(t[k]) for k in STAGES}
        slowest = max(stages, key=stages.get)
        speedup = _report.ratio(_report.mean(results[base]["time"]["step"]), step) if base in results else None
        rows.append((name, step, min(t["step"]), max(t["step"]), *(stages[k] for k in STAGES),
                     f"{slowest} ({stages[slowest]:.3g} s)", _report.ratio(step, stages[slowest]),
                     None if speedup is None else f"{speedup:.2f}x", _report.mean(r["length"]),
                     " / ".join(f"{x:.1f}" for x in r["reward_total"])))
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    names = [n for n in args.rows.split(",") if n]
    unknown = set(names) - set(ROWS)
    if unknown:
        sys.exit(f"unknown rows {sorted(unknown)}; choose from {', '.join(ROWS)}")
    results = {}
    for name in names:
        print(f"== {name}: {' '.join(ROWS[name]) or '(as shipped)'}", flush=True)
        results[name] = run_row(args, name)
    from rlkd_ray.config import load_config

    cfg = load_config(args.config)
    head = (f"`{args.config}`: {cfg.trainer.prompts_per_step} prompts x {cfg.rollout.group_size} samples per step, "
            f"{cfg.rollout.max_new_tokens} new tokens at most, student {cfg.model.student}, reward backend "
            f"{cfg.reward.gsrm_backend}; {args.steps} steps timed after {args.warmup_steps} warm-up; seconds are "
            f"means of the timed steps' `time/*` metrics. Overrides per row: "
            + "; ".join(f"{n}: `{' '.join(ROWS[n]) or 'none'}`" for n in names) + ".\n\n")
    body = head + _report.table(["row", "s / step", "min", "max", "generate", "reward", "train", "sync",
                                 "slowest stage", "step / slowest", "vs before", "mean completion tokens",
                                 "reward per timed step"],
                                summarise(results))
    _report.publish(args, "local-step", "A local step: where it goes, what the settings buy", body)


if __name__ == "__main__":
    main()
