"""Eval results: per-problem records → pass@k with intervals per benchmark; `results.json` and
`results.md` in the eval folder, and the flat metrics of an in-training eval.

An eval folder holds:

    settings.json              model and sampling; a resumed eval must use the same
    completions/<bench>.jsonl  one line per problem: every completion with its score
    results.json               {"settings": ..., "benchmarks": {name: summary}}
    results.md                 the same as a markdown table
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from statistics import mean
from typing import Any, Dict, List, Sequence

from rlkd_ray.eval.passk import pass_at_k_table

RESULTS_JSON, RESULTS_MD, SETTINGS_JSON, COMPLETIONS = "results.json", "results.md", "settings.json", "completions"


def summarise(records: Sequence[Dict[str, Any]], ks: Sequence[int], confidence: float, resamples: int,
              seed: int) -> Dict[str, Any]:
    """pass@k with bootstrap intervals and length statistics of one benchmark's problem records."""
    counts = [(r["n"], r["correct"]) for r in records]
    table = pass_at_k_table(counts, ks, confidence, resamples, seed)
    completions = [c for r in records for c in r["completions"]]
    return {
        "problems": len(records),
        "n": min(n for n, _ in counts),
        "pass@k": {str(k): asdict(interval) for k, interval in table.items()},
        "mean_response_tokens": mean(c["tokens"] for c in completions),
        "truncated_fraction": mean(c["finish_reason"] == "length" for c in completions),
        "no_answer_fraction": mean(c["predicted"] is None for c in completions),
    }


def percent(interval: Dict[str, float]) -> str:
    """`41.2 [38.1, 44.0]` (percent)."""
    return f"{100 * interval['estimate']:.1f} [{100 * interval['low']:.1f}, {100 * interval['high']:.1f}]"


def ks_of(summaries: Sequence[Dict[str, Any]]) -> List[int]:
    return sorted({int(k) for s in summaries for k in s["pass@k"]})


def markdown_table(results: Dict[str, Any]) -> str:
    s = results["settings"]
    benchmarks = results["benchmarks"]
    ks = ks_of(list(benchmarks.values()))
    lines = [
        f"# Evaluation of {s['model']}",
        "",
        f"n={s['n']} samples per problem, temperature {s['temperature']}, top_p {s['top_p']}, "
        f"max_new_tokens {s['max_new_tokens']}. pass@k in percent (unbiased estimator) with "
        f"{100 * s['confidence']:g}% bootstrap intervals over problems ({s['bootstrap_resamples']} resamples).",
        "",
        "| benchmark | problems | " + " | ".join(f"pass@{k}" for k in ks) + " | mean tokens | truncated | left out |",
        "|---|---:|" + "---:|" * len(ks) + "---:|---:|---|",
    ]
    for name, b in benchmarks.items():
        cells = [percent(b["pass@k"][str(k)]) if str(k) in b["pass@k"] else "—" for k in ks]
        left_out = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in b["left_out"].items() if v) or "none"
        lines.append(f"| {name} | {b['problems']} | " + " | ".join(cells) +
                     f" | {b['mean_response_tokens']:.0f} | {100 * b['truncated_fraction']:.0f}% | {left_out} |")
    return "\n".join(lines) + "\n"


def write_results(folder: Path, results: Dict[str, Any]) -> None:
    (folder / RESULTS_JSON).write_text(json.dumps(results, indent=1) + "\n")
    (folder / RESULTS_MD).write_text(markdown_table(results))


def read_results(folder: Path) -> Dict[str, Any]:
    path = folder / RESULTS_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no eval results (run `rlkd eval --output {folder}` first)")
    return json.loads(path.read_text())


def eval_metrics(results: Dict[str, Any]) -> Dict[str, float]:
    """`eval/<benchmark>/pass@<k>` (and its interval) for the metrics sinks of a training run."""
    out = {}
    for name, b in results["benchmarks"].items():
        for k, interval in b["pass@k"].items():
            out[f"eval/{name}/pass@{k}"] = interval["estimate"]
            out[f"eval/{name}/pass@{k}_low"] = interval["low"]
            out[f"eval/{name}/pass@{k}_high"] = interval["high"]
        out[f"eval/{name}/response_length"] = b["mean_response_tokens"]
    return out
