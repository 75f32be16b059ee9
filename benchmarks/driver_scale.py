"""The driver at scale: the project's driver, pools and actors with engines that sleep instead of
computing (benchmarks/sleep_engines.py), in real Ray actors. Per `max_staleness`: the driver's own
CPU time per sample, step time against the slowest stage, idle fraction per pool; and the planning
model's prediction for the same setting (benchmarks/plan_model.py), with its error.

    python benchmarks/driver_scale.py                                # 32 rollout + 8 reward workers
    python benchmarks/driver_scale.py --rollout-workers 4 --reward-workers 2 --steps 2 --warmup-steps 1 --no-doc
    python benchmarks/driver_scale.py plan --generate-s 1.2 --reward-s 5.6 --train-s 38 --gpus 128

Default latencies are the per-stage times measured on `make train-local` (per sample: generate
1.25 s, reward 5.6 s; per step: train 38 s, sync 4 s) times --time-scale (0.01), drawn lognormal
around them (--jitter). `plan` prints, for a GPU budget, the step time and idle fractions of every
split between rollout and reward workers (up to 256 + 64).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parent.parent

import _report  # noqa: E402
from plan_model import Stages, best, plan, simulate  # noqa: E402
from sleep_engines import BUSY_DIR_ENV, ENV, Latencies, busy_seconds  # noqa: E402

MEASURED = dict(generate_s=1.25, reward_s=5.6, train_s=38.0, sync_s=4.0)  # make train-local, per sample / step
WORKER_MIB = 250  # a Ray worker with torch and transformers imported (checked against /proc/meminfo)


def common_args(p: argparse.ArgumentParser, scale: float) -> None:
    p.add_argument("--time-scale", type=float, default=scale, help="multiplies every default latency")
    for k, v in MEASURED.items():
        p.add_argument("--" + k.replace("_", "-"), type=float, default=None,
                       help=f"seconds ({'per step' if k in ('train_s', 'sync_s') else 'per sample'}); "
                            f"default {v} x --time-scale")
    p.add_argument("--jitter", type=float, default=0.3, help="lognormal sigma of every latency")
    p.add_argument("--prompts-per-step", type=int, default=32)
    p.add_argument("--group-size", type=int, default=4)


def latencies(args) -> dict:
    return {k: getattr(args, k) if getattr(args, k) is not None else v * args.time_scale for k, v in MEASURED.items()}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    common_args(p, 0.01)
    p.add_argument("--rollout-workers", type=int, default=32)
    p.add_argument("--reward-workers", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per run, warm-up included")
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--staleness", default="0,1", help="max_staleness values, one run each")
    p.add_argument("--completion-tokens", type=int, default=64)
    p.add_argument("--force", action="store_true", help="start even if memory looks short")
    p.add_argument("--profile", action="store_true", help="print the driver's top functions by own time")
    _report.add_output_args(p)
    q = sub.add_parser("plan", help="size the pools for a GPU budget (no Ray)")
    common_args(q, 1.0)
    q.add_argument("--gpus", type=int, required=True, help="GPUs in all")
    q.add_argument("--learner-gpus", type=int, default=8)
    q.add_argument("--gpus-per-rollout", type=int, default=1)
    q.add_argument("--gpus-per-reward", type=int, default=1)
    q.add_argument("--max-staleness", type=int, default=1)
    q.add_argument("--driver-ms", type=float, default=0.5, help="driver time per event")
    q.add_argument("--all", action="store_true", help="every split, not only every 4th and the best")
    return p.parse_args(argv)


def mem_available_mib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def run_one(args, lat: dict, staleness: int, run_dir: Path, busy_dir: str) -> dict:
    """One training run on sleep engines; measured over the steps after the warm-up."""
    from rlkd_ray.config import load_config
    from rlkd_ray.controller import driver
    from rlkd_ray.controller.metrics import read_metrics

    trainer_cls = driver.Driver
    R, W, P, G = args.rollout_workers, args.reward_workers, args.prompts_per_step, args.group_size
    cfg = load_config(ROOT / "conf" / "local.yaml", [
        f"paths.run_dir={run_dir}", f"rollout.num_workers={R}", f"reward.num_workers={W}",
        "rollout.num_cpus=0.01", "reward.num_cpus=0.01", "learner.num_cpus=0.01",
        "rollout.engine.backend=hf", "reward.engine.backend=hf",  # never built: the sleep engine is
        f"rollout.group_size={G}", f"trainer.prompts_per_step={P}", f"trainer.total_steps={args.steps}",
        f"trainer.max_staleness={staleness}", "trainer.eval_every=0", f"trainer.save_every={10**6}",
        f"trainer.sample_log_every={10**6}", "logging.tensorboard=false", "logging.progress=false",
        "cluster.weight_sync=object_store", f"data.train.limit={max(64, P)}",
        "reward.gsrm_backend=generative", "reward.engine.max_model_len=2048", "reward.decompose_max_new_tokens=96",
        # the reward workers call their (sleep) engine, as with the generative GSRM on a GPU cluster
    ])
    marks = []  # (driver CPU s, perf_counter s, wall clock s) at the end of every step
    t = trainer_cls(cfg)
    try:
        log = t.writer.log

        def log_and_mark(step, metrics):
            marks.append((time.process_time(), time.perf_counter(), time.time()))
            log(step, metrics)

        t.writer.log = log_and_mark
        if args.profile:
            import cProfile
            import pstats

            prof = cProfile.Profile()
            prof.runcall(t.run)
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
        else:
            t.run()
    finally:
        t.close()
    rows = read_metrics(run_dir)[args.warmup_steps:]
    steps = len(rows)
    cpu = marks[-1][0] - marks[args.warmup_steps - 1][0]  # the driver's CPU over the timed steps
    wall = sum(r["time/step"] for r in rows)
    samples = steps * P * G
    gen, rew = sum(r["time/generate"] for r in rows), sum(r["time/reward"] for r in rows)
    train, sync = sum(r["time/train"] for r in rows), sum(r["time/sync"] for r in rows)
    events = steps * (2 * P + R + 1)  # a rollout and a reward per group, a load per worker, a train
    slowest = max(gen / R, rew / W, train + sync) / steps
    # Idle fractions from the engines' own busy intervals within the timed window (the batches' stage
    # times would count work done before the window when rollouts run ahead).
    t0, t1 = marks[args.warmup_steps - 1][2], marks[-1][2]
    idle = {pool: 1 - busy_seconds(busy_dir, pool, t0, t1) / (n * (t1 - t0))
            for pool, n in (("rollout", R), ("reward", W), ("learner", 1))}
    unused = [pool for pool, f in idle.items() if f > 0.999]
    if unused:  # a pool whose engines were never called measures nothing (its stage was skipped)
        raise SystemExit(f"the {', '.join(unused)} pool never called its sleep engine in the timed steps")
    out = dict(staleness=staleness, step_s=wall / steps, slowest_s=slowest, cpu_per_sample_ms=1e3 * cpu / samples,
               rollout_idle=idle["rollout"], reward_idle=idle["reward"],
               learner_idle=idle["learner"], samples_per_s=samples / wall,
               driver_s_per_event=cpu / events, gen_per_sample=gen / samples, rew_per_sample=rew / samples,
               train_per_step=train / steps, sync_per_step=sync / steps)
    # The planning model, fed the stage times measured in this run (per sample / step).
    stages = Stages(out["gen_per_sample"], out["rew_per_sample"], out["train_per_step"],
                    lat["sync_s"], out["driver_s_per_event"], args.jitter)
    pred = simulate(stages, R, W, P, G, args.steps, staleness, args.warmup_steps)
    # And fed only the configured latencies (what a user enters before any run): this error also
    # holds the work the sleep engines do not model (the reward worker's rules and prompt building).
    entered = simulate(Stages(lat["generate_s"], lat["reward_s"], lat["train_s"], lat["sync_s"], 0.0, args.jitter),
                       R, W, P, G, args.steps, staleness, args.warmup_steps)
    out.update(pred_step_s=pred.step_s, pred_rollout_idle=pred.rollout_idle, pred_reward_idle=pred.reward_idle,
               error=(pred.step_s - out["step_s"]) / out["step_s"], entered_step_s=entered.step_s,
               entered_error=(entered.step_s - out["step_s"]) / out["step_s"])
    return out


def cmd_run(args) -> None:
    import ray

    if not 1 <= args.warmup_steps < args.steps:
        sys.exit(f"need 1 <= --warmup-steps < --steps, got {args.warmup_steps} and {args.steps}")

    lat = latencies(args)
    R, W = args.rollout_workers, args.reward_workers
    need = (R + W + 2) * WORKER_MIB
    avail = mem_available_mib()
    print(f"{R} rollout + {W} reward workers + learner + control: ~{need:.0f} MiB needed, {avail:.0f} MiB available")
    if need > avail * 0.8 and not args.force:
        sys.exit("not enough memory for that many workers on this machine (--force to try anyway)")
    sleep = Latencies(jitter=args.jitter, completion_tokens=args.completion_tokens, **lat)
    busy_dir = tempfile.mkdtemp(prefix="rlkd-sleep-busy-")
    env = {"RAY_AUTH_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
           ENV: sleep.to_env(), BUSY_DIR_ENV: busy_dir, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"),
                                                               os.environ.get("PYTHONPATH", "")])}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 2**20,
             runtime_env={"env_vars": env, "worker_process_setup_hook": "sleep_engines.install"})
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="rlkd-driver-scale-") as tmp:
            for s in [int(x) for x in args.staleness.split(",")]:
                start = time.perf_counter()
                results.append(run_one(args, lat, s, Path(tmp) / f"staleness{s}", busy_dir))
                print(f"max_staleness {s}: {time.perf_counter() - start:.1f} s in all", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(busy_dir, ignore_errors=True)
    P, G = args.prompts_per_step, args.group_size
    head = (f"{R} rollout + {W} reward workers (sleep engines, real Ray actors), {P} prompts x {G} samples per "
            f"step, {args.steps - args.warmup_steps} steps timed after {args.warmup_steps} warm-up. Latencies "
            f"(lognormal sigma {args.jitter}): generate {lat['generate_s'] * 1e3:.1f} ms and reward "
            f"{lat['reward_s'] * 1e3:.1f} ms per sample, train {lat['train_s']:.3f} s and sync "
            f"{lat['sync_s']:.3f} s per step. Predicted: the planning model fed this run's measured "
            f"per-sample stage times and driver time per event; from entered latencies: fed the "
            f"latencies above only.\n\n")
    rows = [(r["staleness"], r["step_s"], r["slowest_s"], r["step_s"] / r["slowest_s"], r["cpu_per_sample_ms"],
             r["samples_per_s"], r["rollout_idle"], r["reward_idle"], r["learner_idle"], r["pred_step_s"],
             f"{100 * r['error']:+.1f} %", r["entered_step_s"], f"{100 * r['entered_error']:+.1f} %")
            for r in results]
    body = head + _report.table(
        ["max_staleness", "step s", "slowest stage s", "step / slowest", "driver CPU ms/sample", "samples/s",
         "rollout idle", "reward idle", "learner idle", "predicted step s", "error",
         "predicted from entered latencies", "error"], rows)
    _report.publish(args, f"driver-scale-{R}x{W}", f"Driver at scale: {R} rollout + {W} reward workers", body)


def cmd_plan(args) -> None:
    lat = latencies(args)
    stages = Stages(lat["generate_s"], lat["reward_s"], lat["train_s"], lat["sync_s"], args.driver_ms / 1e3, 0.0)
    plans = plan(stages, args.gpus, args.learner_gpus, args.prompts_per_step, args.group_size,
                 args.max_staleness, gpus_per_rollout=args.gpus_per_rollout, gpus_per_reward=args.gpus_per_reward)
    if not plans:
        sys.exit(f"{args.gpus} GPUs leave no room for a rollout and a reward worker beside {args.learner_gpus} learner GPUs")
    top = best(plans)
    print(f"{args.gpus} GPUs: learner {args.learner_gpus}; per sample generate {lat['generate_s']:.3g} s, reward "
          f"{lat['reward_s']:.3g} s; train {lat['train_s']:.3g} s + sync {lat['sync_s']:.3g} s per step; "
          f"{args.prompts_per_step} prompts x {args.group_size}, max_staleness {args.max_staleness}")
    shown = [p for i, p in enumerate(plans) if args.all or i % 4 == 0 or p is top or i == len(plans) - 1]
    rows = [(p.rollout_workers, p.reward_workers, p.step_s, p.slowest_stage_s,
             args.prompts_per_step * args.group_size / p.step_s, p.rollout_idle, p.reward_idle, p.learner_idle,
             "<- best" if p is top else "") for p in shown]
    print(_report.table(["rollout", "reward", "step s", "slowest stage s", "samples/s", "rollout idle",
                         "reward idle", "learner idle", ""], rows))


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.cmd == "plan":
        cmd_plan(args)
    else:
        cmd_run(args)


if __name__ == "__main__":
    main()
