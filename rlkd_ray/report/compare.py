"""`rlkd compare RUN_DIR...`: the eval results of several runs side by side, one table per benchmark
(pass@1 and the largest pass@k all runs share, in percent with their bootstrap intervals).

A RUN_DIR is an eval folder (it holds `results.json`) or a run folder with `eval/results.json`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from rlkd_ray.eval.results import RESULTS_JSON, percent, read_results


def results_folder(run_dir: str | Path) -> Path:
    """The eval folder of a run: `run_dir` itself or `run_dir/eval`."""
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir / "eval"):
        if (folder / RESULTS_JSON).is_file():
            return folder
    raise FileNotFoundError(f"{run_dir}: no {RESULTS_JSON} there or in {run_dir / 'eval'} "
                            f"(evaluate the run first: rlkd eval --model ... --output {run_dir / 'eval'})")


def _labels(run_dirs: Sequence[str | Path]) -> List[str]:
    """Folder names, or the paths as given where two names are the same."""
    names = [Path(d).name for d in run_dirs]
    return [n if names.count(n) == 1 else str(d) for n, d in zip(names, run_dirs)]


def compare_table(run_dirs: Sequence[str | Path]) -> str:
    """Markdown: one table per benchmark, one row per run."""
    if len(run_dirs) < 1:
        raise ValueError("compare: give at least one run directory")
    runs: List[Tuple[str, Dict[str, Any]]] = [
        (label, read_results(results_folder(d))) for label, d in zip(_labels(run_dirs), run_dirs)]
    benchmarks = list(dict.fromkeys(name for _, r in runs for name in r["benchmarks"]))
    confidence = {r["settings"]["confidence"] for _, r in runs}
    lines = [f"pass@k in percent with {'/'.join(f'{100 * c:g}%' for c in sorted(confidence))} bootstrap "
             "intervals over problems; — = not evaluated."]
    for name in benchmarks:
        present = [(label, r["settings"], r["benchmarks"][name]) for label, r in runs if name in r["benchmarks"]]
        k_max = max(set.intersection(*({int(k) for k in b["pass@k"]} for _, _, b in present)))
        ks = [1] if k_max == 1 else [1, k_max]
        lines += ["", f"## {name}", "",
                  "| run | model | problems | n | temperature | " + " | ".join(f"pass@{k}" for k in ks) + " |",
                  "|---|---|---:|---:|---:|" + "---:|" * len(ks)]
        for label, r in runs:
            if name not in r["benchmarks"]:
                lines.append(f"| {label} | {r['settings']['model']} | — | — | — | " + " | ".join("—" for _ in ks) + " |")
                continue
            b, s = r["benchmarks"][name], r["settings"]
            lines.append(f"| {label} | {s['model']} | {b['problems']} | {s['n']} | {s['temperature']} | "
                         + " | ".join(percent(b["pass@k"][str(k)]) for k in ks) + " |")
        terms = {(b["problems"], s["n"], s["temperature"], s["top_p"], s["max_new_tokens"]) for _, s, b in present}
        if len(terms) > 1:
            lines += ["", "Note: these runs differ in problems, n, temperature, top_p or max_new_tokens; "
                          "they are not compared on equal terms."]
    return "\n".join(lines) + "\n"


def add_compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="eval folders, or run folders with eval/")
    p.add_argument("--output", help="also write the tables to this markdown file")


def cmd_compare(cfg: None, args: argparse.Namespace) -> None:
    """`cfg` is None: compare reads finished run directories only."""
    table = compare_table(args.run_dirs)
    print(table, end="")
    if args.output:
        Path(args.output).write_text(table)
