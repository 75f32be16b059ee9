"""Scored groups → the batch of their step (`Batcher`, of docs/design.md's diagram) → learner tensors
(`build_batch`), and their split over ranks and micro-batches. Token positions are aligned with
`input_ids`: `loss_mask[i, t] = 1` where token t of row i was sampled, and `behaviour_logprobs[i, t]`
is its log-prob under the engine that sampled it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, Iterator, List, Sequence

import torch

from rlkd_ray.controller.samples import PromptGroup


class Batcher:
    """Scored groups, collected into the batch of their step. A group is keyed by its uid, so one
    that arrives twice counts once; a group of a step already taken is not added again."""

    def __init__(self, prompts_per_step: int, group_size: int):
        self.prompts_per_step, self.group_size = prompts_per_step, group_size
        self.next_step = 0  # the step whose batch is taken next (a resumed run sets it)
        self.steps: Dict[int, Dict[str, PromptGroup]] = {}  # step -> uid -> group

    def add(self, group: PromptGroup) -> bool:
        """True when the group is new to its step's batch."""
        if len(group.samples) != self.group_size:
            raise RuntimeError(f"group {group.uid}: {len(group.samples)} samples, "
                               f"expected rollout.group_size={self.group_size}")
        if group.step < self.next_step:
            return False
        batch = self.steps.setdefault(group.step, {})
        return batch.setdefault(group.uid, group) is group

    def full(self, step: int) -> bool:
        return len(self.steps.get(step, {})) >= self.prompts_per_step

    def take(self, step: int) -> List[PromptGroup]:
        """The full batch of `step` (the next one), in uid order."""
        if step != self.next_step or not self.full(step):
            raise RuntimeError(f"batch of step {step} taken out of order or before it is full")
        batch = self.steps.pop(step)
        self.next_step += 1
        return [batch[uid] for uid in sorted(batch)]


@dataclass
class TrainBatch:
    input_ids: torch.Tensor  # [N, L] prompt + completion, right-padded
    attention_mask: torch.Tensor  # [N, L]
    loss_mask: torch.Tensor  # [N, L] 1 on completion tokens
    behaviour_logprobs: torch.Tensor  # [N, L] the engine's log-probs on completion tokens, 0 elsewhere
    advantages: torch.Tensor  # [N]
    num_tokens: int  # completion tokens of the whole global batch: the loss normaliser

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, index: Sequence[int] | slice) -> "TrainBatch":
        """A subset of rows, trimmed to its longest sequence; `num_tokens` stays global."""
        parts = {f.name: getattr(self, f.name)[index] for f in fields(self) if f.name != "num_tokens"}
        width = int(parts["attention_mask"].sum(dim=1).max().item()) if len(parts["attention_mask"]) else 0
        for name in ("input_ids", "attention_mask", "loss_mask", "behaviour_logprobs"):
            parts[name] = parts[name][:, :width]
        return TrainBatch(**parts, num_tokens=self.num_tokens)


def build_batch(groups: List[PromptGroup], pad_id: int) -> TrainBatch:
    """One row per sample; every sample must already carry its advantage."""
    rows = [(g.prompt_ids, s) for g in groups for s in g.samples]
    if not rows:
        raise ValueError("build_batch: no samples")
    width = max(len(p) + len(s.token_ids) for p, s in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    loss_mask = torch.zeros((n, width), dtype=torch.float32)
    behaviour_logprobs = torch.zeros((n, width), dtype=torch.float32)
    for i, (prompt, s) in enumerate(rows):
        if len(s.logprobs) != len(s.token_ids):
            raise ValueError(f"sample {i}: {len(s.token_ids)} tokens but {len(s.logprobs)} log-probs")
        p, c = len(prompt), len(s.token_ids)
        input_ids[i, : p + c] = torch.tensor(list(prompt) + list(s.token_ids))
        attention_mask[i, : p + c] = 1
        loss_mask[i, p : p + c] = 1.0
        behaviour_logprobs[i, p : p + c] = torch.tensor(s.logprobs, dtype=torch.float32)
    advantages = torch.tensor([s.advantage for _, s in rows], dtype=torch.float32)
    if not torch.isfinite(advantages).all():
        raise ValueError("build_batch: a sample has no finite advantage")
    return TrainBatch(input_ids, attention_mask, loss_mask, behaviour_logprobs, advantages,
                      num_tokens=int(loss_mask.sum().item()))


def shard(batch: TrainBatch, rank: int, world_size: int) -> TrainBatch:
    """The rows of one data-parallel rank (a strided split keeps ranks balanced)."""
    return batch.rows(list(range(rank, len(batch), world_size)))


def micro_batches(batch: TrainBatch, size: int) -> Iterator[TrainBatch]:
    for start in range(0, len(batch), size):
        yield batch.rows(slice(start, start + size))
