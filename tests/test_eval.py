"""Evaluation: the pass@k estimator, bootstrap intervals, benchmark layouts and scoring, results
tables, `rlkd compare`, and an end-to-end eval of SmolLM2 on real MATH-500 and GSM8K problems."""

from __future__ import annotations

import csv
import json
from math import comb
from pathlib import Path

import pytest

from rlkd_ray.data import BadRow, DataError
from rlkd_ray.eval import bootstrap_ci, default_ks, eval_metrics, pass_at_k, pass_at_k_table
from rlkd_ray.eval.benchmarks import (
    as_integer,
    choice_letter,
    choice_score,
    integer_score,
    load_benchmark,
    parse_benchmark_spec,
)
from rlkd_ray.eval.results import markdown_table, summarise, write_results
from rlkd_ray.report.compare import compare_table, results_folder

CONF = Path(__file__).resolve().parent.parent / "conf"


# -- pass@k ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,c,k", [(10, 3, 1), (10, 3, 5), (16, 1, 4), (16, 15, 2), (20, 7, 13), (5, 2, 3)])
def test_pass_at_k_matches_closed_form(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), abs=1e-12)


def test_pass_at_k_hand_values_and_edge_cases():
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 - C(3,2)/C(4,2) = 1 - 3/6
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # pass@1 = c/n
    assert pass_at_k(3, 1, 3) == 1.0  # n = k: any correct sample is drawn
    assert pass_at_k(3, 0, 3) == 0.0  # n = k, none correct
    assert pass_at_k(16, 0, 1) == 0.0 and pass_at_k(16, 0, 16) == 0.0  # zero correct
    assert pass_at_k(16, 16, 1) == 1.0 and pass_at_k(16, 16, 8) == 1.0  # all correct
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0


@pytest.mark.parametrize("n,c,k", [(4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_default_ks():
    assert default_ks(16) == [1, 2, 4, 8, 16]
    assert default_ks(6) == [1, 2, 4, 6]
    assert default_ks(1) == [1]


def test_bootstrap_interval_contains_estimate_and_narrows_with_more_problems():
    few = [1.0, 0.0] * 10  # 20 problems, mean 0.5
    many = [1.0, 0.0] * 200  # 400 problems, mean 0.5
    low_few, high_few = bootstrap_ci(few, 0.95, 2000, seed=1)
    low_many, high_many = bootstrap_ci(many, 0.95, 2000, seed=1)
    assert low_few <= 0.5 <= high_few and low_many <= 0.5 <= high_many
    # the width shrinks like 1/sqrt(problems): about sqrt(20) times narrower with 20x the problems
    assert (high_many - low_many) < 0.5 * (high_few - low_few)
    assert bootstrap_ci([0.25] * 7) == (0.25, 0.25)
    with pytest.raises(ValueError, match="no values"):
        bootstrap_ci([])


def test_pass_at_k_table_is_the_mean_of_per_problem_estimates():
    counts = [(4, 0), (4, 1), (4, 4)]  # pass@2 per problem: 0, 0.5, 1
    table = pass_at_k_table(counts, [1, 2, 4], resamples=500)
    assert table[1].estimate == pytest.approx((0 + 0.25 + 1) / 3)
    assert table[2].estimate == pytest.approx(0.5)
    assert table[4].estimate == pytest.approx(2 / 3)
    for interval in table.values():
        assert interval.low <= interval.estimate <= interval.high


# -- benchmark specs, layouts and scoring ----------------------------------------------------------
def test_benchmark_specs():
    assert parse_benchmark_spec("math500").path is None
    spec = parse_benchmark_spec("data/aime24.jsonl:layout=aime")
    assert (spec.name, spec.path, spec.layout, spec.problem, spec.answer) == \
        ("aime24", "data/aime24.jsonl", "integer", "problem", "answer")
    gpqa = parse_benchmark_spec("gpqa_diamond.csv:layout=gpqa:name=gpqa")
    assert (gpqa.name, gpqa.layout, gpqa.problem, gpqa.correct) == ("gpqa", "choice", "Question", "Correct Answer")
    assert gpqa.incorrect == ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
    mine = parse_benchmark_spec("x.jsonl:problem=question:answer=final:incorrect=a|b:correct=c:layout=choice")
    assert (mine.problem, mine.answer, mine.incorrect, mine.correct) == ("question", "final", ("a", "b"), "c")
    for bad, message in [("x.jsonl:colour=red", "colour=red"), ("x.jsonl:layout=essay", "layout 'essay'"),
                         ("x.jsonl:layout=choice", "choices=COLUMN"), ("gsm8k:layout=aime", "takes no options")]:
        with pytest.raises(DataError, match=message):
            parse_benchmark_spec(bad)


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_aime_layout_reads_integer_answers_with_case_insensitive_columns(tmp_path):
    path = _write_jsonl(tmp_path / "aime.jsonl", [
        {"ID": "2024-I-1", "Problem": "Find x.", "Answer": 33},
        {"ID": "2024-I-2", "Problem": "Find y.", "Answer": "033"},
        {"ID": "2024-I-3", "Problem": "Find z.", "Answer": "204"},
    ])
    bench = load_benchmark(parse_benchmark_spec(f"{path}:layout=aime:id=ID"), limit=2)
    assert [(p.id, p.problem, p.answer) for p in bench.problems] == [("2024-I-1", "Find x.", "33"),
                                                                     ("2024-I-2", "Find y.", "33")]
    assert bench.score(r"so $\boxed{033}$", "33").score == 1.0
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"problem": "p", "answer": "1"}, {"problem": "q", "answer": "1/2"}])
    with pytest.raises(BadRow, match=r"bad.jsonl row 2: field 'answer' is '1/2', not an integer"):
        load_benchmark(parse_benchmark_spec(f"{bad}:layout=aime"))
    missing = _write_jsonl(tmp_path / "missing.jsonl", [{"question": "p", "answer": "1"}])
    with pytest.raises(BadRow, match=r"missing.jsonl row 1: field 'problem' is missing"):
        load_benchmark(parse_benchmark_spec(f"{missing}:layout=aime"))


def test_gpqa_layout_shuffles_options_by_id_and_keeps_the_gold_letter(tmp_path):
    path = tmp_path / "gpqa.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["Record ID", "Question", "Correct Answer", "Incorrect Answer 1",
                                    "Incorrect Answer 2", "Incorrect Answer 3"])
        writer.writeheader()
        for i in range(6):
            writer.writerow({"Record ID": f"rec{i}", "Question": f"Which is right, {i}?\nThink.",
                             "Correct Answer": f"right {i}", "Incorrect Answer 1": f"wrong a{i}",
                             "Incorrect Answer 2": f"wrong b{i}", "Incorrect Answer 3": f"wrong c{i}"})
    spec = parse_benchmark_spec(f"{path}:layout=gpqa:id=Record ID")
    bench = load_benchmark(spec)
    assert len(bench.problems) == 6
    for i, p in enumerate(bench.problems):
        assert p.problem.startswith(f"Which is right, {i}?\nThink.\n\n")
        assert f"{p.answer}) right {i}\n" in p.problem  # the gold letter labels the correct option
        assert p.problem.count(") wrong ") == 3
    assert len({p.answer for p in bench.problems}) > 1  # the correct option is not always first
    again = load_benchmark(spec)
    assert [p.problem for p in again.problems] == [p.problem for p in bench.problems]


def test_choice_layout_with_a_list_column_and_index_letter_or_text_answers(tmp_path):
    path = _write_jsonl(tmp_path / "mc.jsonl", [
        {"question": "2+2?", "choices": ["3", "4", "5"], "answer": 1},
        {"question": "Capital of France?", "choices": ["Rome", "Paris"], "answer": "B"},
        {"question": "Red?", "choices": ["blue", "red"], "answer": "red"},
    ])
    bench = load_benchmark(parse_benchmark_spec(f"{path}:layout=choice:problem=question:choices=choices"))
    assert [p.answer for p in bench.problems] == ["B", "B", "B"]
    assert bench.problems[0].problem == "2+2?\n\nA) 3\nB) 4\nC) 5\n\nAnswer with the letter of the correct " \
                                        "option in \\boxed{}."
    bad = _write_jsonl(tmp_path / "mc_bad.jsonl", [{"question": "q", "choices": ["x", "y"], "answer": 2}])
    with pytest.raises(BadRow, match=r"mc_bad.jsonl row 1: field 'answer' is 2: not a letter A-B"):
        load_benchmark(parse_benchmark_spec(f"{bad}:layout=choice:problem=question:choices=choices"))


def test_integer_and_choice_scoring():
    assert [as_integer(s) for s in ["033", "1,000", r"\text{12}", "7.0", "-4", "$ 5 $", "1/2", "x", "3.5"]] == \
        [33, 1000, 12, 7, -4, 5, None, None, None]
    assert integer_score(r"<answer>\boxed{204}</answer>", "204") == (1.0, "204", None)
    assert integer_score(r"\boxed{205}", "204").reason == "boxed answer differs from the gold"
    assert integer_score(r"\boxed{\frac{1}{2}}", "204").reason == "boxed answer is not an integer"
    assert integer_score("204", "204") == (0.0, None, "no \\boxed{} answer in the completion")
    assert [choice_letter(s) for s in ["B", "(B)", "b.", r"\text{B}", "B) its text", "AB", "Paris"]] == \
        ["B", "B", "B", "B", "B", None, None]
    assert choice_score(r"\boxed{(C)}", "C").score == 1.0
    assert choice_score(r"\boxed{D}", "C").score == 0.0
    assert choice_score(r"\boxed{Paris}", "C").reason == "boxed answer is not an option letter"


def test_packaged_math500_first_problems():
    bench = load_benchmark(parse_benchmark_spec("math500"), limit=2)
    assert [p.id for p in bench.problems] == ["math500/0", "math500/1"]
    assert bench.problems[0].answer == r"\left( 3, \frac{\pi}{2} \right)"
    assert bench.left_out == {"unscorable_gold": 0}
    assert bench.score(r"\boxed{(3, \frac{\pi}{2})}", bench.problems[0].answer).score == 1.0


# -- results and compare ---------------------------------------------------------------------------
def _record(pid: str, scores, tokens=10, finish="stop"):
    completions = [{"text": "t", "tokens": tokens, "finish_reason": finish, "score": s,
                    "predicted": "1" if s else None, "reason": None} for s in scores]
    return {"id": pid, "n": len(scores), "correct": int(sum(scores)), "completions": completions}


def _results(model: str, per_problem, temperature=0.6):
    records = [_record(str(i), s) for i, s in enumerate(per_problem)]
    n = len(per_problem[0])
    summary = summarise(records, default_ks(n), 0.95, 200, 0)
    settings = {"model": model, "n": n, "temperature": temperature, "top_p": 0.95, "max_new_tokens": 64,
                "confidence": 0.95, "bootstrap_resamples": 200}
    return {"settings": settings, "benchmarks": {"math500": {"layout": "math", "source": "packaged:math500",
                                                             **summary, "left_out": {"prompt_too_long": 1}}}}


def test_summary_markdown_and_eval_metrics():
    results = _results("m", [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    b = results["benchmarks"]["math500"]
    assert b["problems"] == 3 and b["n"] == 4 and sorted(b["pass@k"], key=int) == ["1", "2", "4"]
    assert b["pass@k"]["1"]["estimate"] == pytest.approx(3 / 12)
    assert b["pass@k"]["4"]["estimate"] == pytest.approx(2 / 3)
    assert b["no_answer_fraction"] == pytest.approx(9 / 12)
    table = markdown_table(results)
    assert "| math500 | 3 | 25.0 [" in table and "| pass@1 | pass@2 | pass@4 |" in table
    assert "1 prompt too long" in table
    metrics = eval_metrics(results)
    assert metrics["eval/math500/pass@1"] == pytest.approx(0.25)
    assert metrics["eval/math500/pass@4_low"] <= metrics["eval/math500/pass@4"] <= metrics["eval/math500/pass@4_high"]


def test_compare_two_run_directories(tmp_path):
    rlkd, grpo = tmp_path / "rlkd", tmp_path / "grpo"
    (rlkd / "eval").mkdir(parents=True)
    grpo.mkdir()
    write_results(rlkd / "eval", _results("runs/rlkd/hf", [[1, 1], [1, 0], [0, 1], [1, 1]]))
    write_results(grpo, _results("runs/grpo/hf", [[1, 0], [0, 0], [0, 1], [0, 0]]))
    assert results_folder(rlkd) == rlkd / "eval" and results_folder(grpo) == grpo
    table = compare_table([rlkd, grpo])
    assert "## math500" in table and "| run | model | problems | n | temperature | pass@1 | pass@2 |" in table
    assert "| rlkd | runs/rlkd/hf | 4 | 2 | 0.6 | 75.0 [" in table  # pass@1 = 6/8
    assert "| grpo | runs/grpo/hf | 4 | 2 | 0.6 | 25.0 [" in table  # pass@1 = 2/8
    assert "not compared on equal terms" not in table
    write_results(grpo, _results("runs/grpo/hf", [[1, 0], [0, 0], [0, 1], [0, 0]], temperature=1.0))
    assert "not compared on equal terms" in compare_table([rlkd, grpo])
    with pytest.raises(FileNotFoundError, match="no results.json"):
        compare_table([tmp_path / "nothing"])


def test_compare_command_prints_and_writes(tmp_path, capsys):
    from rlkd_ray.cli import main

    write_results(tmp_path, _results("m", [[1], [0]]))
    assert main(["compare", str(tmp_path), "--output", str(tmp_path / "table.md")]) == 0
    printed = capsys.readouterr().out
    assert "| 50.0 [" in printed and (tmp_path / "table.md").read_text() == printed


# -- end to end ------------------------------------------------------------------------------------
def _lines(path: Path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_eval_smollm2_on_math500_and_gsm8k_end_to_end_and_resume(ray_cluster, cache_dir, student_path, tmp_path):
    from actors.rollout import RolloutWorker
    from rlkd_ray.cli import main
    from rlkd_ray.config import load_config
    from rlkd_ray.controller.pools import ActorPool
    from rlkd_ray.eval.runner import EvalError, run_eval

    overrides = [f"paths.cache_dir={cache_dir}", "rollout.engine.backend=hf", "logging.progress=false",
                 "eval.n=2", "eval.max_new_tokens=24", "eval.bootstrap_resamples=200"]
    cfg = load_config(CONF / "math_local.yaml", overrides)
    out = tmp_path / "eval"
    # first through a rollout pool that outlives the eval (the in-training eval's way) ...
    pool = ActorPool("rollout", lambda i: (RolloutWorker.options(num_cpus=0.5).remote(cfg, i), None), 1)
    try:
        results = run_eval(cfg, pool, ["math500", "gsm8k"], out, limit=3, label=student_path)
        assert len(pool) == 1 and ray_cluster.get(pool.call(0, "version")) == 0  # still up
    finally:
        pool.shutdown()

    assert set(results["benchmarks"]) == {"math500", "gsm8k"}
    assert results["settings"]["n"] == 2 and results["settings"]["model"] == student_path
    for name, ids in [("math500", ["math500/0", "math500/1", "math500/2"]), ("gsm8k", ["gsm8k/0", "gsm8k/1", "gsm8k/2"])]:
        b = results["benchmarks"][name]
        assert b["problems"] == 3 and b["n"] == 2 and set(b["pass@k"]) == {"1", "2"}
        for interval in b["pass@k"].values():
            assert 0.0 <= interval["low"] <= interval["estimate"] <= interval["high"] <= 1.0
        records = _lines(out / "completions" / f"{name}.jsonl")
        assert [r["id"] for r in sorted(records, key=lambda r: r["id"])] == ids
        for r in records:
            assert r["n"] == 2 and len(r["completions"]) == 2
            assert r["correct"] == sum(c["score"] for c in r["completions"])
            for c in r["completions"]:
                assert c["score"] in (0.0, 1.0) and 1 <= c["tokens"] <= 24 and c["text"]
        # pass@1 is the mean fraction of correct samples
        assert b["pass@k"]["1"]["estimate"] == pytest.approx(sum(r["correct"] for r in records) / 6)
    assert "| math500 | 3 |" in (out / "results.md").read_text()
    assert json.loads((out / "results.json").read_text()) == results

    # ... then resumed by `rlkd eval` with its own workers: a problem whose line was lost is generated
    # again; finished ones are kept as they were
    path = out / "completions" / "gsm8k.jsonl"
    kept = _lines(path)[:2]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"id": "cut off')
    assert main(["eval", "--config", str(CONF / "math_local.yaml"), "--model", student_path, "--benchmarks", "gsm8k",
                 "--n", "2", "--max-new-tokens", "24", "--limit", "3", "--output", str(out), *overrides]) == 0
    again = _lines(path)
    assert again[:2] == kept and len(again) == 3
    assert set(json.loads((out / "results.json").read_text())["benchmarks"]) == {"math500", "gsm8k"}

    with pytest.raises(EvalError, match=r"n: 2 there, 4 now"):
        run_eval(load_config(CONF / "math_local.yaml", overrides + ["eval.n=4"]), student_path, ["gsm8k"], out, limit=3)
