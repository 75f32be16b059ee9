"""`rlkd report RUN_DIR`: PNG plots of a training run from `metrics.jsonl` (reward components,
accuracy and in-training eval, response length, structure reward, steps parsed, stage times) and one
HTML page (`index.html`) with the plots and the sample-level structure alignment from `samples.jsonl`:
teacher steps beside student steps, each step's meta / query / answer verdict and its score.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from rlkd_ray.controller.metrics import read_metrics
from rlkd_ray.gsrm.parser import FIELDS, tag

Series = Dict[str, List[Tuple[int, float]]]  # metric key -> (step, value) in step order
_EVAL_PASS = re.compile(r"eval/[^/]+/pass@\d+")
_STEP_COUNTS = ("count/student_parse_failures", "count/teacher_parse_failures", "count/judge_non_answers")

# file, title, which metric keys it plots
PLOTS: Sequence[Tuple[str, str, Callable[[str], bool]]] = (
    ("rewards.png", "Reward components (batch mean)", lambda k: k.startswith("reward/")),
    ("accuracy.png", "Accuracy (train batches) and in-training eval pass@k",
     lambda k: k == "accuracy" or bool(_EVAL_PASS.fullmatch(k))),
    ("response_length.png", "Response length (tokens)", lambda k: k == "response_length" or
     (k.startswith("eval/") and k.endswith("/response_length"))),
    ("structure_reward.png", "Structure reward (batch mean)", lambda k: k == "reward/structure"),
    ("steps_parsed.png", "Steps parsed per path, and parse failures / judge non-answers per batch",
     lambda k: k.startswith("structure/") or k in _STEP_COUNTS),
    ("stage_times.png", "Stage times per step (s)", lambda k: k.startswith("time/")),
)
VERDICTS = {True: ("yes", "match"), False: ("no", "mismatch"), None: ("none", "no answer")}


@dataclass
class ReportFiles:
    html: Path
    plots: List[Path] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)  # plots without any data in metrics.jsonl


def metric_series(records: Sequence[Dict[str, Any]]) -> Series:
    """Every numeric, finite metric as (step, value) points; records of one step may be split
    (training metrics and eval metrics are logged as separate lines)."""
    out: Series = {}
    for rec in records:
        for key, value in rec.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                out.setdefault(key, []).append((int(rec["step"]), float(value)))
    return {k: sorted(v) for k, v in out.items()}


def plot(path: Path, title: str, series: Series, keys: Sequence[str]) -> None:
    """Lines of `keys` over steps; a key with `<key>_low` / `<key>_high` series gets its interval as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for key in keys:
        steps, values = zip(*series[key])
        line, = ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=key)
        if f"{key}_low" in series and f"{key}_high" in series:
            low, high = dict(series[f"{key}_low"]), dict(series[f"{key}_high"])
            band = [s for s in steps if s in low and s in high]
            ax.fill_between(band, [low[s] for s in band], [high[s] for s in band], alpha=0.2, color=line.get_color())
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_samples(run_dir: Path) -> List[Dict[str, Any]]:
    path = run_dir / "samples.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- the HTML page ---------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1400px}
img{max-width:48%;margin:0.5%;border:1px solid #ddd}
.sample{border:1px solid #ccc;border-radius:6px;padding:0.8em;margin:1em 0}
table.align{border-collapse:collapse;width:100%;font-size:0.9em}
table.align td,table.align th{border:1px solid #ddd;padding:0.3em;vertical-align:top}
td.step{width:38%} .tag{font-weight:bold;color:#555}
td.yes{background:#d9f2d9} td.no{background:#f7d6d6} td.none{background:#f3ecc8} td.unaligned{color:#999}
pre{white-space:pre-wrap;background:#f7f7f7;padding:0.5em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _number(value: Any) -> str:
    return "—" if value is None else (f"{value:.3g}" if isinstance(value, float) else _e(value))


def _step_cell(step: Optional[Dict[str, str]], number: int) -> str:
    if step is None:
        return '<td class="step unaligned">(no step)</td>'
    parts = [f'<div><span class="tag">{_e(tag(f, number))}</span> {_e(step.get(f, ""))}</div>' for f in FIELDS]
    return f'<td class="step">{"".join(parts)}</td>'


def alignment_table(structure: Dict[str, Any]) -> str:
    """Teacher step i beside student step i with the judge's verdicts and the step score."""
    teacher, student = structure["teacher_steps_parsed"], structure["student_steps_parsed"]
    judgements, per_step = structure["judgements"], structure["per_step"]
    rows = ["<tr><th>#</th><th>teacher step</th><th>student step</th><th>meta</th><th>query</th><th>answer</th>"
            "<th>step score</th></tr>"]
    for i in range(max(len(teacher), len(student))):
        cells = [f"<td>{i + 1}</td>", _step_cell(teacher[i] if i < len(teacher) else None, i + 1),
                 _step_cell(student[i] if i < len(student) else None, i + 1)]
        for kind in FIELDS:
            if i < len(judgements):
                css, text = VERDICTS[judgements[i][kind]]
                cells.append(f'<td class="{css}">{text}</td>')
            else:
                cells.append('<td class="unaligned">not judged</td>')
        cells.append(f"<td>{_number(per_step[i]) if i < len(per_step) else '—'}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return '<table class="align">' + "".join(rows) + "</table>"


def sample_section(sample: Dict[str, Any]) -> str:
    rewards = ", ".join(f"{_e(k)} {_number(v)}" for k, v in (sample.get("rewards") or {}).items())
    head = (f"<h3>step {_e(sample['step'])} · problem {_e(sample['problem_id'])} · total reward "
            f"{_number(sample.get('total'))} · advantage {_number(sample.get('advantage'))}</h3>"
            f"<p>rewards: {rewards or '—'} · gold answer: <code>{_e(sample.get('gold', ''))}</code></p>"
            f"<details><summary>problem</summary><pre>{_e(sample.get('problem', ''))}</pre></details>"
            f"<details><summary>student completion</summary><pre>{_e(sample.get('completion', ''))}</pre></details>")
    structure = sample.get("structure")
    if not structure:
        return f'<div class="sample">{head}<p>No structure recorded for this sample.</p></div>'
    summary = (f"<p>structure reward <b>{_number(structure['total'])}</b> · teacher steps "
               f"{structure['teacher_steps']} · student steps {structure['student_steps']} · judge non-answers "
               f"{structure['judge_non_answers']}" + (f" · <b>{_e(structure['reason'])}</b>" if structure["reason"] else "")
               + "</p>")
    errors = structure.get("student_parse_errors") or []
    errors_html = f"<p>student parse notes: {_e('; '.join(errors))}</p>" if errors else ""
    return f'<div class="sample">{head}{summary}{errors_html}{alignment_table(structure)}</div>'


def report_html(run_dir: Path, plots: Sequence[Path], samples: Sequence[Dict[str, Any]], total_samples: int) -> str:
    images = "".join(f'<img src="{_e(p.name)}" alt="{_e(p.stem)}">' for p in plots) or "<p>No metrics yet.</p>"
    shown = (f"<p>The last {len(samples)} of {total_samples} logged samples (samples.jsonl).</p>"
             if samples else "<p>No samples logged yet (samples.jsonl).</p>")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>RLKD report: {_e(run_dir.name)}</title>"
            f"<style>{_CSS}</style></head><body><h1>RLKD report: {_e(run_dir)}</h1><h2>Training curves</h2>{images}"
            f"<h2>Structure alignment</h2>{shown}" + "".join(sample_section(s) for s in samples) + "</body></html>\n")


def write_report(run_dir: str | Path, output_dir: Optional[str | Path] = None, max_samples: int = 100) -> ReportFiles:
    """The plots and `index.html` into `output_dir` (default `run_dir/report`)."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl; is it a training run folder?")
    out = Path(output_dir) if output_dir else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    series = metric_series(read_metrics(run_dir))
    files = ReportFiles(html=out / "index.html")
    for name, title, wanted in PLOTS:
        keys = sorted(k for k in series if wanted(k))
        if not keys:
            files.skipped.append(name)
            continue
        plot(out / name, title, series, keys)
        files.plots.append(out / name)
    samples = read_samples(run_dir)
    files.html.write_text(report_html(run_dir, files.plots, samples[-max_samples:], len(samples)))
    return files


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a training run folder (metrics.jsonl, samples.jsonl)")
    p.add_argument("--output", help="report folder (default: RUN_DIR/report)")
    p.add_argument("--samples", type=int, default=100, help="show the last this many logged samples")


def cmd_report(cfg: None, args: argparse.Namespace) -> None:
    """`cfg` is None: report reads a finished (or running) run directory only."""
    files = write_report(args.run_dir, args.output, args.samples)
    for path in files.plots:
        print(f"plot: {path}")
    for name in files.skipped:
        print(f"plot: {name} skipped (its metrics are not in metrics.jsonl)")
    print(f"page: {files.html}")
