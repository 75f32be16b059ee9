"""The engine interface shared by the student rollouts, the GSRM decomposer and the judge.

Every backend (transformers, vLLM) implements `Engine`; one contract test suite runs against all.
Prompts travel as token ids, so every backend sees exactly the same input (the caller applies the
chat template once, with `build_prompt_ids`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Protocol, Sequence

import torch

from rlkd_ray.config import DTYPES


@dataclass
class Sampling:
    """Sampling of one generate call. `temperature=0` means greedy."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 256
    stop: List[str] = field(default_factory=list)
    seed: Optional[int] = None
    # Behaviour log-probs are needed for training. Evaluation may set False, which lets the vLLM
    # engine apply top-p / top-k (its log-probs would be post-truncation); `Completion.logprobs`
    # is then empty on that engine.
    logprobs: bool = True


@dataclass
class Completion:
    token_ids: List[int]  # sampled tokens, the stop string included, padding excluded
    logprobs: List[float]  # behaviour log-prob of each sampled token: log softmax(logits / T)
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length"


class Engine(Protocol):
    version: int  # policy version of the weights now loaded

    def generate(self, prompts: Sequence[Sequence[int]], sampling: Sampling) -> List[List[Completion]]:
        """`sampling.n` completions for each prompt, in prompt order."""

    def score_choices(self, prompts: Sequence[Sequence[int]], choices: Sequence[str]) -> List[List[float]]:
        """Log-prob of the first token of each choice at the first generated position, per prompt."""

    def load_weights(self, version: int, weights: Dict[str, torch.Tensor]) -> None:
        """Replace all weights in place (one transfer) and set `version`."""

    # Broadcast weight sync (`cluster.weight_sync: broadcast`, rlkd_ray/weight_sync/protocol.py): the engine's
    # `sync_ranks` processes join the group as ranks first_rank, first_rank + 1, ...
    sync_ranks: int

    def join_weight_sync(self, host: str, port: int, first_rank: int, world_size: int, timeout_s: float) -> None:
        """Join the group whose rank 0 (learner rank 0) hosts the rendezvous at host:port."""

    def receive_weights(self) -> int:
        """Take part in one sync: receive the full state, load it in place, set and return `version`."""

    def leave_weight_sync(self) -> None:
        """Close this engine's part of the group (before the group is formed anew)."""

    def close(self) -> None:
        """Free the engine's memory and processes."""


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a `model.dtype` name."""
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r}: choose one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def pad_token_id(tokenizer) -> int:
    """The tokenizer's pad token, else its end-of-sequence token (pads are masked out)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an eos token")
    return pad


def build_prompt_ids(tokenizer, messages: List[Dict[str, str]], max_prompt_tokens: int) -> List[int]:
    """Chat template → token ids, with the generation prompt; errors if it does not fit."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # transformers >= 5 returns a BatchEncoding
        ids = ids["input_ids"]
    ids = list(ids)
    if len(ids) > max_prompt_tokens:
        raise PromptTooLong(len(ids), max_prompt_tokens)
    return ids


class PromptTooLong(ValueError):
    def __init__(self, n_tokens: int, limit: int):
        super().__init__(f"prompt has {n_tokens} tokens, over the limit of {limit}")
        self.n_tokens = n_tokens
        self.limit = limit


def parse_cpu_cores(spec: str) -> List[int]:
    """`"0"`, `"0-3"`, `"0,2,4-5"` → sorted core ids."""
    cores = set()
    for part in spec.split(","):
        part = part.strip()
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()):
            raise ValueError(f"cpu_cores {spec!r}: '{part}' is not a core id or range like 0-3")
        cores.update(range(int(lo), int(hi or lo) + 1))
    return sorted(cores)


def pin_to_cores(spec: str) -> List[int]:
    """Bind every thread of this process to the cores of `spec` (threads started later inherit it)."""
    cores = parse_cpu_cores(spec)
    if cores[-1] >= os.cpu_count():
        raise ValueError(f"cpu_cores {spec!r}: this machine has cores 0-{os.cpu_count() - 1}")
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except ProcessLookupError:  # the thread ended since the listing
            pass
    return cores


def check_request(prompts: Sequence[Sequence[int]], sampling: Sampling, max_model_len: int) -> None:
    """Reject sampling values no backend supports and prompts that cannot fit their completion."""
    if sampling.n < 1 or sampling.max_new_tokens < 1:
        raise ValueError(f"sampling.n and sampling.max_new_tokens must be >= 1, got {sampling}")
    bad_top_k = sampling.top_k < 1 and sampling.top_k != -1
    if sampling.temperature < 0 or not 0 < sampling.top_p <= 1 or bad_top_k:
        raise ValueError(f"need temperature >= 0, 0 < top_p <= 1, top_k = -1 or >= 1; got {sampling}")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty")
        if len(p) + sampling.max_new_tokens > max_model_len:
            raise ValueError(
                f"prompt {i} has {len(p)} tokens; with max_new_tokens={sampling.max_new_tokens} it "
                f"exceeds max_model_len={max_model_len}"
            )


def choice_token_ids(tokenizer, choices: Sequence[str]) -> List[int]:
    """First token of each choice (no special tokens); the choices must start with distinct tokens."""
    ids = []
    for c in choices:
        toks = tokenizer(c, add_special_tokens=False)["input_ids"]
        if not toks:
            raise ValueError(f"choice {c!r} tokenises to nothing")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise ValueError(f"choices {list(choices)} do not start with distinct tokens: {ids}")
    return ids
