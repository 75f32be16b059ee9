"""`rlkd report`: plots from a run's metrics.jsonl and the structure-alignment page from samples.jsonl,
written by the real MetricsWriter from scored groups shaped as the reward workers shape them."""

from __future__ import annotations

import sys
import types
from dataclasses import asdict
from pathlib import Path

import pytest
from PIL import Image

from rlkd_ray.config import load_config
from rlkd_ray.controller.metrics import MetricsWriter, batch_metrics
from rlkd_ray.controller.samples import Problem, PromptGroup, Sample
from rlkd_ray.eval import eval_metrics
from rlkd_ray.gsrm import judge_requests, parse_structure, score_from_verdicts
from rlkd_ray.report.training import PLOTS, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

TEACHER = """[sub-think 1]: First find how many eggs are left after breakfast and baking.
[Query 1]: How many eggs remain each day?
[Answer 1]: 16 - 3 - 4 = 9
[sub-think 2]: Then the money is the eggs sold times the price.
[Query 2]: How much does she make?
[Answer 2]: 9 * 2 = 18
So the final answer is: 18"""

STUDENT = """[sub-think 1]: Start from the eggs that are left.
[Query 1]: How many eggs are left?
[Answer 1]: 9 <b>eggs</b>
[sub-think 2]: Multiply by the price.
[Query 2]: What is 9 times 2?
[Answer 2]: 17
[sub-think 3]: Check the sum.
[Query 3]: Is it right?
[Answer 3]: yes
So the final answer is: 17"""


def scored_group(step: int, slot: int, structure_weighted: bool = True) -> PromptGroup:
    """A group of two samples, structure fields filled exactly as `scoring.GroupScorer.score` does."""
    teacher, student = parse_structure(TEACHER), parse_structure(STUDENT)
    requests = judge_requests(teacher, student)
    # step 1: meta yes, query yes, answer yes; step 2: meta yes, query no, answer no judge answer
    verdicts = {(0, "meta"): True, (0, "query"): True, (0, "answer"): True,
                (1, "meta"): True, (1, "query"): False, (1, "answer"): None}
    score = score_from_verdicts(teacher, student, requests, [verdicts[(r.step, r.kind)] for r in requests])
    problem = Problem(id=f"gsm8k/{slot}", problem="Janet's ducks lay 16 eggs per day...", answer="18")
    group = PromptGroup(uid=f"s{step}-p{slot}", step=step, problem=problem, prompt_ids=[1, 2, 3], seed=0)
    for i in range(2):
        rewards = {"accuracy": float(i), "format": 1.0, "tag_count": 0.75, "structure": score.total}
        sample = Sample(token_ids=list(range(20 + 10 * step + i)), logprobs=[-1.0] * (20 + 10 * step + i),
                        text="<think>\n...\n</think>\n<answer>\n\\boxed{17}\n</answer>", finish_reason="stop",
                        version=step - 1, rewards=rewards, total=15 * i + 10 + 7.5 + 15 * score.total, advantage=0.5 - i)
        sample.structure = asdict(score) | {
            "student_steps_parsed": [asdict(s) for s in student.steps],
            "teacher_steps_parsed": [asdict(s) for s in teacher.steps],
            "student_parse_errors": student.errors[:5],
        }
        group.samples.append(sample)
    group.timings.update(generate=1.5 + step, reward=0.7)
    group.counters.update(judge_non_answers=score.judge_non_answers, student_parse_failures=0,
                          teacher_parse_failures=0, unscorable_accuracy=0)
    return group


def test_wandb_run_carries_the_run_config(tmp_path, monkeypatch):
    """W&B is an optional extra (not installed here): a module in its place records what `init` gets."""
    calls = []
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: calls.append(kw)))
    cfg = load_config("conf/rlkd.yaml", ["logging.tensorboard=false", "logging.wandb_project=rlkd"])
    MetricsWriter(tmp_path / "run", cfg)
    (init,) = calls
    assert init["project"] == "rlkd"
    assert init["config"]["algo"]["kl_beta"] == 0.04 and init["config"]["model"]["student"] == cfg.model.student
    assert init["config"]["rollout"]["system_prompt"] == cfg.rollout.system_prompt


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "run"
    writer = MetricsWriter(run, load_config(None, ["logging.tensorboard=false"]))
    for step in (1, 2, 3):
        groups = [scored_group(step, slot) for slot in range(2)]
        metrics = batch_metrics(groups, step - 1)
        metrics.update({"time/train": 3.0, "time/sync": 0.2, "time/step": 6.0})
        writer.log(step, metrics)
        writer.log_samples(step, groups, limit=1)
    eval_results = {"benchmarks": {"math500": {"pass@k": {"1": {"estimate": 0.2, "low": 0.1, "high": 0.3}},
                                               "mean_response_tokens": 50.0}}}
    writer.log(2, eval_metrics(eval_results))
    writer.close()
    return run


def test_report_writes_valid_pngs_and_the_alignment_page(run_dir):
    files = write_report(run_dir)
    assert files.skipped == []
    assert sorted(p.name for p in files.plots) == sorted(name for name, _, _ in PLOTS)
    for path in files.plots:
        assert path.parent == run_dir / "report"
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            image.load()  # decodes every pixel
            assert image.format == "PNG" and image.size == (800, 450)
            low, high = image.convert("L").getextrema()
            assert low < high  # something is drawn on the canvas

    page = files.html.read_text()
    assert page.count('class="sample"') == 3  # one logged sample per step
    for name, _, _ in PLOTS:
        assert f'src="{name}"' in page
    # teacher steps beside student steps, with tags of the one tag set
    assert "[sub-think 1]:</span> First find how many eggs are left after breakfast and baking." in page
    assert "[Query 2]:</span> What is 9 times 2?" in page
    assert "[Answer 3]:</span> yes" in page
    assert "9 &lt;b&gt;eggs&lt;/b&gt;" in page and "<b>eggs</b>" not in page  # step text is escaped
    # the verdicts and step scores of the prefix-gated reward: step 1 = 1, step 2 = 0.5 (a sub-problem
    # "no"; the sub-answer non-answer halves nothing), step 3 unaligned
    row2 = page.split("<tr><td>2</td>")[1].split("</tr>")[0]
    assert '<td class="yes">match</td><td class="no">mismatch</td><td class="none">no answer</td><td>0.5</td>' in row2
    row3 = page.split("<tr><td>3</td>")[1].split("</tr>")[0]
    assert "(no step)" in row3 and row3.count("not judged") == 3 and row3.endswith("<td>0</td>")
    assert "structure reward <b>1.5</b> · teacher steps 2 · student steps 3 · judge non-answers 1" in page


def test_report_command_and_skipped_plots(run_dir, tmp_path, capsys):
    from rlkd_ray.cli import main

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.jsonl").write_text("\n".join(line for line in lines if '"eval/' not in line).replace('"time/', '"t/') + "\n")
    assert main(["report", str(bare), "--output", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "plot: stage_times.png skipped" in printed and f"page: {tmp_path / 'out' / 'index.html'}" in printed
    assert "No samples logged yet" in (tmp_path / "out" / "index.html").read_text()
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        write_report(tmp_path / "missing")
