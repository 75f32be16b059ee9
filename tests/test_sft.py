"""`rlkd sft`: GSRM examples with assistant-only, part-weighted loss on real SmolLM2 tokens, the
R1-format distillation examples, the weighted loss, and training through the DeepSpeed learner
actors (GSRM: the loss falls on a small repeated set; distillation: a model transformers loads)."""

import json

import pytest
import torch

from rlkd_ray.algo.losses import sft_loss
from rlkd_ray.config import RLKD_SYSTEM_PROMPT, SFTWeights, load_config
from rlkd_ray.controller.prompt_source import chat_messages
from rlkd_ray.engines.base import build_prompt_ids
from rlkd_ray.gsrm import build_decompose_messages
from rlkd_ray.offline.sft import (
    SFTDataError,
    batch_order,
    collate,
    distill_example,
    gsrm_example,
    read_annotations,
    run_sft,
    tokenise,
)
from rlkd_ray.rewards.rules import accuracy_reward, format_reward

TARGET = "[sub-think 1]: Add them.\n[Query 1]: What is 2+2?\n[Answer 1]: 4\nSo the final answer is: 4"
WEIGHTS = SFTWeights(meta=2.0, solving=0.5, format=1.0)


@pytest.fixture(scope="module")
def tokenizer(student_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(student_path)


def test_gsrm_example_mask_and_part_weights(tokenizer):
    problem, reasoning = "What is 2+2?", "2 + 2 = 4."
    row = tokenise(tokenizer, gsrm_example("a", problem, reasoning, TARGET, "math", 2), WEIGHTS, 4096)
    # The prompt is token for token the GSRM prompt at inference, with its few-shots; all weight 0.
    inference = build_prompt_ids(tokenizer, build_decompose_messages(problem, reasoning, "math", 2), 4096)
    assert row.input_ids[: row.prompt_len] == inference and row.prompt_len == len(inference)
    assert set(row.weights[: row.prompt_len]) == {0.0}
    start = row.prompt_len
    assistant = [(tokenizer.decode([i]), w) for i, w in zip(row.input_ids[start:], row.weights[start:])]
    F, M, S = 1.0, 2.0, 0.5
    assert assistant == [
        ("[", F), ("sub", F), ("-", F), ("think", F), (" ", F), ("1", F), ("]:", F),
        (" Add", M), (" them", M), (".", M), ("\n", F),
        ("[", F), ("Query", F), (" ", F), ("1", F), ("]:", F),
        (" What", S), (" is", S), (" ", S), ("2", S), ("+", S), ("2", S), ("?", S), ("\n", F),
        ("[", F), ("Answer", F), (" ", F), ("1", F), ("]:", F), (" ", F), ("4", S), ("\n", F),
        ("So", F), (" the", F), (" final", F), (" answer", F), (" is", F), (":", F), (" ", F), ("4", S),
        ("<|im_end|>", F),
    ]


def test_gsrm_training_prompt_is_the_inference_prompt(tokenizer):
    """GroupScorer.decompose (inference) sends exactly the prompt tokens the GSRM is trained on."""
    from rlkd_ray.engines.base import Completion
    from rlkd_ray.rewards.scoring import GroupScorer

    class RecordingEngine:  # stands in for the GSRM engine: records the prompts, answers TARGET
        version = 0

        def __init__(self):
            self.prompts = []

        def generate(self, prompts, sampling):
            self.prompts.extend(list(p) for p in prompts)
            return [[Completion([], [], TARGET, "stop")] for _ in prompts]

    cfg = load_config(None, ["reward.decompose_examples=1", "reward.domain=science"])
    engine = RecordingEngine()
    structures = GroupScorer(cfg.reward, engine, engine, tokenizer, tokenizer).decompose("What is 2+2?", ["2 + 2 = 4."])
    row = tokenise(tokenizer, gsrm_example("a", "What is 2+2?", "2 + 2 = 4.", TARGET, cfg.reward.domain,
                                           cfg.reward.decompose_examples), WEIGHTS, 4096)
    assert engine.prompts == [row.input_ids[: row.prompt_len]]
    assert structures[0].steps and not structures[0].errors


def test_gsrm_example_canonical_target_and_length_limit(tokenizer):
    messy = "**[sub-think 1]:** Add them.\n[Query 1]:What is 2+2?\n[Answer 1]: 4\nSo the final answer is: 4"
    example = gsrm_example("a", "p", "r", messy, "math", 0)
    assert example.target == TARGET
    assert [example.target[s:e] for s, e, _ in example.spans] == ["Add them.", "What is 2+2?", "4", "4"]
    assert [part for _, _, part in example.spans] == ["meta", "solving", "solving", "solving"]
    row = tokenise(tokenizer, example, WEIGHTS, 4096)
    assert tokenise(tokenizer, example, WEIGHTS, len(row.input_ids) - 1) is None  # too long: left out
    assert tokenise(tokenizer, example, WEIGHTS, len(row.input_ids)) is not None
    with pytest.raises(SFTDataError, match="example b: target does not parse cleanly: step 1: missing"):
        gsrm_example("b", "p", "r", "[sub-think 1]: x\nSo the final answer is: 4", "math", 0)


def test_distill_example_is_r1_with_the_student_prompt(tokenizer):
    # teacher_reasoning as the prepared rows hold it: already cut to the <think> content (rlkd_ray/data/sources.py)
    example = distill_example("d", "What is 2+2?", "Add: 2 + 2 = 4.", "4", RLKD_SYSTEM_PROMPT)
    assert example.target == "<think>\nAdd: 2 + 2 = 4.\n</think>\n<answer>\n\\boxed{4}\n</answer>"
    assert format_reward(example.target) == 1.0 and accuracy_reward(example.target, "4").score == 1.0
    row = tokenise(tokenizer, example, None, 4096)
    assert row.input_ids[: row.prompt_len] == build_prompt_ids(
        tokenizer, chat_messages(RLKD_SYSTEM_PROMPT, "What is 2+2?"), 4096)
    assert tokenizer.decode(row.input_ids[row.prompt_len:]) == example.target + "<|im_end|>"
    assert row.weights == [0.0] * row.prompt_len + [1.0] * (len(row.input_ids) - row.prompt_len)


def test_sft_loss_is_the_weighted_token_mean():
    logp = torch.tensor([[0.0, -1.0, -2.0, -3.0], [0.0, -0.5, -4.0, -1.0]], requires_grad=True)
    w = torch.tensor([[0.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.5, 0.0]])
    loss, metrics = sft_loss(logp, w)
    # (1·1 + 2·2 + 0.5·4) / (1 + 2 + 0.5) = 7 / 3.5
    assert loss.item() == pytest.approx(2.0)
    assert metrics == {"loss": pytest.approx(2.0), "nll": pytest.approx((1 + 2 + 4) / 3)}
    loss.backward()
    assert torch.allclose(logp.grad, -w / 3.5)
    assert sft_loss(logp, w, normaliser=7.0)[0].item() == pytest.approx(1.0)  # the step's weight sum
    assert sft_loss(logp, torch.zeros_like(w))[0].item() == 0.0


def test_batch_order_and_collate(tokenizer):
    order = batch_order(3, 2, steps=4, seed=1)
    assert [len(b) for b in order] == [2, 2, 2, 2]
    flat = [i for b in order for i in b]
    assert sorted(flat[:3]) == [0, 1, 2] and sorted(flat[3:6]) == [0, 1, 2]  # whole epochs, reshuffled
    rows = [tokenise(tokenizer, gsrm_example(str(i), "p" * (i + 1), "r", TARGET, "math", 0), WEIGHTS, 4096)
            for i in range(2)]
    batch = collate(rows, pad_id=2)
    assert batch.input_ids.shape == (2, max(len(r.input_ids) for r in rows))
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        assert batch.input_ids[i, :n].tolist() == r.input_ids and batch.attention_mask[i].sum() == n
        assert batch.loss_mask[i, :n].tolist() == r.weights and batch.loss_mask[i, n:].sum() == 0
    assert batch.num_tokens == sum(sum(w > 0 for w in r.weights) for r in rows)


def test_read_annotations_names_the_bad_line(tmp_path):
    path = tmp_path / "ann.jsonl"
    good = {"id": "a", "problem": "p", "reasoning": "r", "target": TARGET}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"id": "b", "problem": "p"}) + "\n")
    with pytest.raises(SFTDataError, match=r"ann\.jsonl line 2: KeyError"):
        read_annotations(path, "math", 0)
    assert [e.id for e in read_annotations(path, "math", 0, limit=1)] == ["a"]
    with pytest.raises(SFTDataError, match="no annotations at"):
        read_annotations(tmp_path / "missing.jsonl", "math", 0)


def sft_config(tmp_path, *extra):
    return load_config(None, [
        f"paths.cache_dir={tmp_path / 'cache'}", "model.dtype=float32", "learner.world_size=1",
        "learner.num_cpus=2", "learner.num_gpus=0", "learner.micro_batch_size=2", f"sft.output_dir={tmp_path / 'sft'}",
        "sft.batch_size=2", "sft.optim.warmup_ratio=0", "sft.optim.schedule=constant_with_warmup",
        "logging.tensorboard=false", "logging.progress=false", *extra])


@pytest.mark.slow
def test_gsrm_sft_loss_falls(ray_cluster, student_path, tmp_path):
    from transformers import AutoModelForCausalLM

    annotations = tmp_path / "ann.jsonl"
    with open(annotations, "w") as f:
        for i, (a, b) in enumerate([(12, 30), (7, 8)]):
            target = (f"[sub-think 1]: The sum is asked, so add the two numbers.\n[Query 1]: What is {a} + {b}?\n"
                      f"[Answer 1]: {a + b}\n[sub-think 2]: Check the sum by subtracting one number.\n"
                      f"[Query 2]: Is {a + b} - {b} = {a}?\n[Answer 2]: Yes\nSo the final answer is: {a + b}")
            f.write(json.dumps({"id": str(i), "problem": f"What is {a} + {b}?", "target": target,
                                "reasoning": f"{a} + {b} = {a + b}. Check: {a + b} - {b} = {a}. So {a + b}."}) + "\n")
    cfg = sft_config(tmp_path, f"model.gsrm={student_path}", f"sft.annotations={annotations}", "sft.total_steps=3",
                     "reward.decompose_examples=0", "sft.optim.lr=1e-4", "sft.weights.meta=2.0")
    summary = run_sft(cfg)
    print(f"GSRM SFT on SmolLM2: losses {summary.losses}, s/step {summary.step_seconds}")
    assert (summary.examples, summary.too_long, summary.steps) == (2, 0, 3)
    assert summary.losses[-1] < 0.5 * summary.losses[0], summary.losses
    metrics = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and metrics[0]["lr"] == pytest.approx(1e-4)
    assert all(m["grad_norm"] > 0 and m["tokens"] > 0 for m in metrics)
    tuned = AutoModelForCausalLM.from_pretrained(summary.hf_dir).state_dict()
    base = AutoModelForCausalLM.from_pretrained(student_path).state_dict()
    assert max((tuned[k] - base[k]).abs().max().item() for k in base) > 1e-4


@pytest.mark.slow
def test_distill_baseline_saves_a_loadable_model(ray_cluster, tiny_model_path, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    traces = tmp_path / "traces.jsonl"
    with open(traces, "w") as f:
        for i in range(4):
            trace = f"<think>\n{i} + 1 = {i + 1}.\n</think>\n\\boxed{{{i + 1}}}"
            row = {"problem": f"What is {i} + 1?", "answer": str(i + 1), "teacher_reasoning": trace}
            f.write(json.dumps(row) + "\n")
    cfg = sft_config(tmp_path, "sft.task=distill", f"model.student={tiny_model_path}", "data.name=traces",
                     "data.train.kind=file", f"data.train.path={traces}", "data.eval=[]", "sft.optim.lr=1e-3")
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')  # an earlier SFT run's
    summary = run_sft(cfg)
    assert summary.hf_dir == str(tmp_path / "sft" / "version_1" / "hf")  # a folder of its own
    assert (tmp_path / "sft" / "metrics.jsonl").read_text() == '{"step": 1, "loss": 9.0}\n'
    assert (summary.task, summary.examples, summary.steps) == ("distill", 4, 2)
    model = AutoModelForCausalLM.from_pretrained(summary.hf_dir)
    tok = AutoTokenizer.from_pretrained(summary.hf_dir)
    assert tok.chat_template == AutoTokenizer.from_pretrained(tiny_model_path).chat_template
    ids = torch.tensor([build_prompt_ids(tok, chat_messages(RLKD_SYSTEM_PROMPT, "What is 1 + 1?"), 512)])
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape == (1, ids.shape[1] + 3)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    assert max((model.state_dict()[k] - base[k]).abs().max().item() for k in base) > 1e-4


def test_distill_traces_are_the_prompts_an_rl_run_sees_first(cache_dir, tmp_path):
    """SFT distillation with `sft.limit` = steps x prompts per step reads the problems the RL run with
    the same trainer.seed trains on in those steps (the repro-mini SFT arm against the RL arms)."""
    from rlkd_ray.config import load_config
    from rlkd_ray.controller.prompt_source import PromptSource
    from rlkd_ray.offline.sft import teacher_traces

    steps, per_step = 3, 4
    for seed in (1, 2):
        cfg = load_config("conf/local.yaml", [f"paths.cache_dir={cache_dir}", f"paths.run_dir={tmp_path}",
                                              f"trainer.seed={seed}", f"sft.limit={steps * per_step}",
                                              f"trainer.prompts_per_step={per_step}", "logging.progress=false"])
        source = PromptSource(cfg)
        rl = [source.group(step, slot).problem.id for step in range(steps) for slot in range(per_step)]
        sft = [e.id for e in teacher_traces(cfg, source.completion_prefix)]
        assert sft == rl, seed
