"""`rlkd sft`: supervised fine-tuning on the learner group (DeepSpeed ranks as Ray actors).

Two tasks (`sft.task`):
- `gsrm`: the GSRM from annotations (`rlkd annotate`). The prompt is `build_decompose_messages` of
  the problem and reasoning with `reward.domain` and `reward.decompose_examples`, the same call that
  builds the GSRM prompt at inference; the assistant turn is the structured target. Only assistant
  tokens are trained, each weighted by the part of the target it falls in (`sft.weights`): the
  meta-reasoning ([sub-think i] contents), the solving ([Query i], [Answer i] contents and the final
  answer) or the format (tags, line breaks, the end-of-turn token). Equal weights give plain SFT.
- `distill`: the SFT-distillation baseline. The student learns the teacher traces of the prepared
  dataset in the R1 format `<think>\\n…\\n</think>\\n<answer>\\n\\boxed{gold}\\n</answer>`, prompted
  as in RL (`rollout.system_prompt`, the student's chat template); every assistant token weight 1.

The prompt tokens are exactly those of inference (`build_prompt_ids`); the assistant turn is
tokenised on its own, with character offsets mapping each token to its part. The model lands in
`<sft.output_dir>/hf` (Hugging Face format), beside the DeepSpeed state and `metrics.jsonl`.
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from rlkd_ray.config import ConfigError, RLKDConfig, SFTWeights, to_yaml
from rlkd_ray.gsrm import build_decompose_messages, format_structure, parse_structure
from rlkd_ray.gsrm.parser import FIELDS, FINAL_ANSWER_PREFIX, Structure, tag
from rlkd_ray.run_dirs import claim_fresh

Messages = List[Dict[str, str]]
# The part of a structured target each field's content belongs to.
FIELD_PART = {"meta": "meta", "query": "solving", "answer": "solving"}


class SFTDataError(ValueError):
    """Training data that cannot be used; the message names the file, line or example."""


@dataclass
class Example:
    id: str
    messages: Messages  # the prompt turns
    target: str  # the assistant turn
    spans: List[Tuple[int, int, str]] = field(default_factory=list)  # (start, end, part) in `target`


@dataclass
class Tokenised:
    id: str
    input_ids: List[int]
    weights: List[float]  # per token: 0 on the prompt, the part's weight on the assistant turn
    prompt_len: int


# -- targets --------------------------------------------------------------------------------------
def structure_spans(target: str, structure: Structure) -> List[Tuple[int, int, str]]:
    """Character spans of each field's content in `target` = format_structure(structure)."""
    spans, pos = [], 0
    pieces = [(tag(name, i), getattr(step, name), FIELD_PART[name])
              for i, step in enumerate(structure.steps, start=1) for name in FIELDS]
    if structure.final_answer is not None:
        pieces.append((FINAL_ANSWER_PREFIX, structure.final_answer, "solving"))
    for opening, content, part in pieces:
        at = target.index(opening, pos) + len(opening)
        if content:
            at += 1  # the space after the tag
            if target[at:at + len(content)] != content:
                raise SFTDataError(f"target is not in canonical form at {opening!r}")
            spans.append((at, at + len(content), part))
        pos = at + len(content)
    return spans


def gsrm_example(id: str, problem: str, reasoning: str, target: str, domain: str, n_examples: int) -> Example:
    """A GSRM training example; `target` must parse without errors (it is re-rendered canonically)."""
    structure = parse_structure(target)
    if structure.errors:
        raise SFTDataError(f"example {id}: target does not parse cleanly: {'; '.join(structure.errors[:3])}")
    canonical = format_structure(structure)
    return Example(id, build_decompose_messages(problem, reasoning, domain, n_examples), canonical,
                   structure_spans(canonical, structure))


def r1_target(reasoning: str, answer: str) -> str:
    """The R1 layout the format and accuracy rewards check, with the answer boxed."""
    return f"<think>\n{reasoning.strip()}\n</think>\n<answer>\n\\boxed{{{answer}}}\n</answer>"


def distill_example(id: str, problem: str, teacher_reasoning: str, answer: str, system_prompt: str,
                    completion_prefix: str = "") -> Example:
    """The R1 target less what the student's chat template already forced into the turn (`<think>\\n`)."""
    from rlkd_ray.controller.prompt_source import chat_messages

    target = r1_target(teacher_reasoning, answer)
    return Example(id, chat_messages(system_prompt, problem), target.removeprefix(completion_prefix))


def read_annotations(path: Path, domain: str, n_examples: int, limit: Optional[int] = None) -> List[Example]:
    """GSRM examples from the accepted records of `rlkd annotate` (JSON lines)."""
    if not path.is_file():
        raise SFTDataError(f"no annotations at {path}; run `rlkd annotate` or set sft.annotations")
    examples = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if limit is not None and len(examples) >= limit:
                break
            try:
                r = json.loads(line)
                examples.append(gsrm_example(str(r["id"]), r["problem"], r["reasoning"], r["target"], domain,
                                             n_examples))
            except (ValueError, KeyError, TypeError) as e:
                raise SFTDataError(f"{path} line {n}: {type(e).__name__}: {e}") from None
    if not examples:
        raise SFTDataError(f"{path} holds no annotations")
    return examples


def teacher_traces(cfg: RLKDConfig, completion_prefix: str) -> List[Example]:
    """Distillation examples from the train split of the prepared dataset `data.name`, in the order an
    RL run with the same `trainer.seed` reads it (`data.shuffle`; exact when no training problem is
    left out for its length): with `sft.limit`, SFT sees the prompts of that run's first steps."""
    from rlkd_ray.controller.prompt_source import epoch_order
    from rlkd_ray.data import load_split, prepare_data

    prepare_data(cfg.data, cfg.paths.cache_dir)
    rows = load_split(cfg.paths.cache_dir, cfg.data, "train")
    order = epoch_order(cfg.trainer.seed, 0, len(rows)) if cfg.data.shuffle else range(len(rows))
    examples = [distill_example(str(r["id"]), r["problem"], r["teacher_reasoning"], r["answer"],
                                cfg.rollout.system_prompt, completion_prefix)
                for r in (rows[int(i)] for i in order) if (r["teacher_reasoning"] or "").strip()]
    if not examples:
        raise SFTDataError(f"data {cfg.data.name!r}: the train split has no teacher traces")
    return examples[: cfg.sft.limit]


# -- tokens and weights ---------------------------------------------------------------------------
def tokenise(tokenizer, example: Example, weights: Optional[SFTWeights], max_seq_len: int) -> Optional[Tokenised]:
    """Prompt ids as at inference + the assistant turn (up to its end-of-turn token) with per-token
    weights: the part of the token's first non-space character (`weights` None: all 1). None when
    the example is longer than `max_seq_len`."""
    from rlkd_ray.engines.base import PromptTooLong, build_prompt_ids

    try:
        prompt_ids = build_prompt_ids(tokenizer, example.messages, max_seq_len)
    except PromptTooLong:
        return None
    prompt_text = tokenizer.apply_chat_template(example.messages, add_generation_prompt=True, tokenize=False)
    full_text = tokenizer.apply_chat_template(
        example.messages + [{"role": "assistant", "content": example.target}], tokenize=False)
    if not full_text.startswith(prompt_text):
        raise SFTDataError(f"example {example.id}: the chat template renders the prompt differently once the "
                           "assistant turn follows; cannot separate the assistant tokens")
    turn = full_text[len(prompt_text):].rstrip()  # the assistant turn through its end-of-turn token
    offset = turn.find(example.target)
    if offset < 0:
        raise SFTDataError(f"example {example.id}: the chat template changed the assistant text")
    enc = tokenizer(turn, add_special_tokens=False, return_offsets_mapping=True)
    if len(prompt_ids) + len(enc["input_ids"]) > max_seq_len:
        return None
    part = ["format"] * len(turn)
    for start, end, name in example.spans:
        part[offset + start: offset + end] = [name] * (end - start)
    token_weights = []
    for start, end in enc["offset_mapping"]:
        if weights is None:
            token_weights.append(1.0)
            continue
        text = turn[start:end]
        first = start + (len(text) - len(text.lstrip())) if text.strip() else start
        token_weights.append(float(getattr(weights, part[first] if first < len(turn) else "format")))
    ids = prompt_ids + list(enc["input_ids"])
    return Tokenised(example.id, ids, [0.0] * len(prompt_ids) + token_weights, len(prompt_ids))


def collate(rows: Sequence[Tokenised], pad_id: int):
    """A TrainBatch whose `loss_mask` holds the token weights (right-padded)."""
    import torch

    from rlkd_ray.controller.batching import TrainBatch

    width = max(len(r.input_ids) for r in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    loss_mask = torch.zeros((n, width), dtype=torch.float32)
    for i, r in enumerate(rows):
        input_ids[i, : len(r.input_ids)] = torch.tensor(r.input_ids)
        attention_mask[i, : len(r.input_ids)] = 1
        loss_mask[i, : len(r.weights)] = torch.tensor(r.weights)
    return TrainBatch(input_ids, attention_mask, loss_mask, torch.zeros((n, width)), torch.zeros(n),
                      num_tokens=int((loss_mask > 0).sum().item()))


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> List[List[int]]:
    """Example indices of each step: seeded permutations, one per epoch, read as one stream."""
    stream: List[int] = []
    epoch = 0
    while len(stream) < steps * batch_size:
        order = list(range(n))
        random.Random(seed + epoch).shuffle(order)
        stream.extend(order)
        epoch += 1
    return [stream[s * batch_size:(s + 1) * batch_size] for s in range(steps)]


def reduce_metrics(per_rank: List[Dict[str, float]]) -> Dict[str, float]:
    """`DeepSpeedPolicy.sft_step` sums of all ranks → the step's weighted loss and plain token NLL."""
    weight = sum(m["weight"] for m in per_rank)
    tokens = sum(m["tokens"] for m in per_rank)
    return {"loss": sum(m["loss_sum"] for m in per_rank) / max(weight, 1e-12),
            "nll": sum(m["nll_sum"] for m in per_rank) / max(tokens, 1.0),
            "tokens": tokens, "grad_norm": per_rank[0]["grad_norm"], "lr": per_rank[0]["lr"]}


# -- the run --------------------------------------------------------------------------------------
@dataclass
class SFTSummary:
    task: str
    examples: int  # examples trained on
    too_long: int  # left out: longer than sft.max_seq_len
    steps: int
    losses: List[float]  # weighted loss of each step
    step_seconds: List[float]
    hf_dir: str


def base_model(cfg: RLKDConfig) -> str:
    return cfg.sft.base_model or (cfg.model.gsrm if cfg.sft.task == "gsrm" else cfg.model.student)


def learner_config(cfg: RLKDConfig, model_path: str, total_steps: int) -> RLKDConfig:
    """The learner group's view of an SFT run: the model to tune, no KL reference, the SFT optimiser."""
    out = copy.deepcopy(cfg)
    out.model.student, out.model.reference = model_path, None
    out.algo.kl_beta = 0.0
    out.trainer.total_steps = total_steps
    out.learner.optim = copy.deepcopy(cfg.sft.optim)
    return out


def build_examples(cfg: RLKDConfig, tokenizer) -> Tuple[List[Tokenised], int]:
    """(tokenised examples of `sft.task`, number left out as too long)."""
    from tqdm import tqdm

    s = cfg.sft
    if s.task == "gsrm":
        path = Path(s.annotations or cfg.annotate.output)
        examples = read_annotations(path, cfg.reward.domain, cfg.reward.decompose_examples, s.limit)
        weights: Optional[SFTWeights] = s.weights
        for name in ("meta", "solving", "format"):
            if getattr(weights, name) < 0:
                raise ConfigError(f"'sft.weights.{name}' must be >= 0, got {getattr(weights, name)}")
    else:
        from rlkd_ray.controller.prompt_source import forced_prefix

        examples, weights = teacher_traces(cfg, forced_prefix(tokenizer)), None
    rows = [tokenise(tokenizer, e, weights, s.max_seq_len)
            for e in tqdm(examples, desc="tokenising", disable=not cfg.logging.progress)]
    kept = [r for r in rows if r is not None]
    if not kept:
        raise SFTDataError(f"all {len(rows)} examples are longer than sft.max_seq_len={s.max_seq_len}")
    return kept, len(rows) - len(kept)


def run_sft(cfg: RLKDConfig) -> SFTSummary:
    """Fine-tune `base_model(cfg)` on the examples of `sft.task`; needs Ray initialised."""
    from tqdm import tqdm

    from actors.learner import LearnerWorker
    from rlkd_ray.assets import resolve_model
    from rlkd_ray.controller.metrics import MetricsWriter
    from rlkd_ray.controller.pools import LearnerGroup
    from rlkd_ray.controller.prompt_source import student_tokenizer
    from rlkd_ray.engines.base import pad_token_id

    s = cfg.sft
    per_call = cfg.learner.micro_batch_size * cfg.learner.world_size
    if s.batch_size % per_call:
        raise ConfigError(f"sft.batch_size={s.batch_size} must be a multiple of learner.micro_batch_size x "
                          f"learner.world_size = {per_call}")
    model_path = resolve_model(base_model(cfg), cfg.paths.cache_dir)
    # distill: the student's chat template, as in RL (rollout.chat_template)
    tokenizer = student_tokenizer(model_path, cfg.rollout.chat_template if s.task == "distill" else None)
    pad_id = pad_token_id(tokenizer)
    rows, too_long = build_examples(cfg, tokenizer)
    steps = s.total_steps or math.ceil(s.epochs * len(rows) / s.batch_size)
    print(f"[sft] {s.task}: {len(rows)} examples ({too_long} over sft.max_seq_len left out), {steps} steps of "
          f"{s.batch_size} from {model_path}", flush=True)
    out = claim_fresh(s.output_dir, to_yaml(cfg))  # a folder holding an earlier SFT run: out/version_N
    writer = MetricsWriter(out, cfg)
    group = LearnerGroup(LearnerWorker, learner_config(cfg, model_path, steps))
    losses, seconds = [], []
    bar = tqdm(total=steps, desc=f"sft {s.task}", unit="step", dynamic_ncols=True, disable=not cfg.logging.progress)
    try:
        for step, index in enumerate(batch_order(len(rows), s.batch_size, steps, cfg.trainer.seed), start=1):
            batch = collate([rows[i] for i in index], pad_id)
            t0 = time.perf_counter()
            metrics = reduce_metrics(group.sft_step(batch))
            metrics["step_s"] = time.perf_counter() - t0
            writer.log(step, metrics)
            losses.append(metrics["loss"])
            seconds.append(metrics["step_s"])
            bar.set_postfix({"loss": f"{metrics['loss']:.4f}"}, refresh=False)
            bar.update(1)
        bar.close()
        group.save(str(out), {"step": steps, "sft_task": s.task})
    finally:
        bar.close()
        writer.close()
        group.shutdown()
    return SFTSummary(s.task, len(rows), too_long, steps, losses, seconds, str(out / "hf"))


def cmd_sft(cfg: RLKDConfig, args) -> None:
    from rlkd_ray.ray_session import ray_session

    with ray_session(cfg):
        summary = run_sft(cfg)
    print(f"[sft] {summary.steps} steps, loss {summary.losses[0]:.4f} -> {summary.losses[-1]:.4f}, "
          f"{sum(summary.step_seconds) / summary.steps:.2f} s/step")
    print(f"[sft] model (Hugging Face format): {summary.hf_dir}")
