"""Light checks of what `make train-local` relies on: worked examples as chat turns in every student
prompt (training and eval alike), the batch metrics of the learning signal, and the end-of-training
summary (first / last step, held-out pass@1 before and after with intervals)."""

from __future__ import annotations

import json

from rlkd_ray.config import load_config
from rlkd_ray.controller.metrics import batch_metrics
from rlkd_ray.controller.prompt_source import chat_messages
from rlkd_ray.controller.samples import Problem, PromptGroup, Sample
from rlkd_ray.eval.runner import eval_settings
from rlkd_ray.report.summary import training_summary


def test_examples_are_chat_turns_before_the_problem():
    cfg = load_config("conf/local.yaml")
    r = cfg.rollout
    messages = chat_messages(r.system_prompt, "Compute 1 + 2.", r.examples)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[1]["content"] == r.examples[0].problem and messages[2]["content"] == r.examples[0].solution
    assert messages[-1] == {"role": "user", "content": "Compute 1 + 2."}
    assert chat_messages("", "Compute 1 + 2.") == [{"role": "user", "content": "Compute 1 + 2."}]
    # The eval prompts the student as training does, and records it with its settings.
    assert eval_settings(cfg, "m").examples == [[e.problem, e.solution] for e in r.examples]


def test_batch_metrics_count_groups_without_signal():
    def group(totals, structures):
        samples = []
        for t, st in zip(totals, structures):
            s = Sample([1], [-0.1], "", "stop", 0, rewards={"accuracy": 0.0, "structure": st}, total=t)
            samples.append(s)
        return PromptGroup("u", 0, Problem("p", "q", "1"), [1], 0, samples)

    m = batch_metrics([group([1.0, 1.0], [0.5, 0.5]), group([0.0, 15.0], [0.0, 1.0])], 0)
    assert m["batch/zero_signal_groups"] == 0.5 and m["structure/varying_groups"] == 0.5


def test_training_summary_first_last_and_eval_before_after(tmp_path):
    rows = [
        {"step": 0, "eval/arith_test/pass@1": 0.1, "eval/arith_test/pass@1_low": 0.06, "eval/arith_test/pass@1_high": 0.14},
        {"step": 1, "reward/total": 3.0, "reward/accuracy": 0.1, "reward/structure": 0.4, "accuracy": 0.1,
         "learner/grad_norm": 0.5},
        {"step": 2, "reward/total": 6.0, "reward/accuracy": 0.3, "reward/structure": 0.9, "accuracy": 0.3,
         "learner/grad_norm": 0.7},
        {"step": 2, "eval/arith_test/pass@1": 0.3, "eval/arith_test/pass@1_low": 0.25, "eval/arith_test/pass@1_high": 0.35},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = training_summary(tmp_path).splitlines()
    assert lines[0].split() == ["step", "1", "step", "2"]  # under 4 steps: no quarter means
    assert "reward/structure 0.400 0.900" in " ".join(" ".join(line.split()) for line in lines)
    assert lines[-1] == ("held-out arith_test pass@1 (95% interval): step 0: 10.0% [6.0, 14.0] -> "
                         "step 2: 30.0% [25.0, 35.0]")

    # 8 steps: the means of steps 1-2 and 7-8 beside the first and the last step
    rows = [{"step": i, "reward/total": float(i), "accuracy": i / 10, "learner/grad_norm": 1.0} for i in range(1, 9)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = [" ".join(line.split()) for line in training_summary(tmp_path).splitlines()]
    assert lines[0] == "step 1 step 8 steps 1-2 steps 7-8"
    assert "reward/total 1.000 8.000 1.500 7.500" in lines
    assert "accuracy 0.100 0.800 0.150 0.750" in lines
