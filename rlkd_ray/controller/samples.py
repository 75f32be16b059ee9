"""The records that flow through the pipeline: a Problem becomes a PromptGroup, the rollout pool
fills its samples' generations, the reward pool fills their rewards, the batcher turns groups into
learner tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class Problem:
    id: str
    problem: str
    answer: str
    teacher_reasoning: str = ""
    teacher_structure: Optional[str] = None  # the GSRM decomposition of the teacher trace, if prepared

    @classmethod
    def from_row(cls, row: Dict[str, Any]) -> "Problem":
        return cls(
            id=str(row["id"]),
            problem=row["problem"],
            answer=row["answer"],
            teacher_reasoning=row.get("teacher_reasoning") or "",
            teacher_structure=row.get("teacher_structure") or None,
        )


@dataclass
class Sample:
    """One completion of a prompt and everything computed about it."""

    token_ids: List[int]
    logprobs: List[float]  # behaviour log-probs, one per token of token_ids
    text: str
    finish_reason: str
    version: int  # policy version of the weights that generated it
    rewards: Dict[str, Optional[float]] = field(default_factory=dict)  # component -> value (None: unscorable)
    total: float = math.nan  # weighted total reward
    advantage: float = math.nan
    structure: Optional[Dict[str, Any]] = None  # StructureScore as a dict, plus the parsed steps


@dataclass
class PromptGroup:
    """The G samples of one prompt. `uid` is stable across retries, so a group is counted once."""

    uid: str
    step: int  # the optimizer step whose batch this group belongs to
    problem: Problem
    prompt_ids: List[int]
    seed: int
    samples: List[Sample] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)  # stage -> seconds spent on this group
    counters: Dict[str, int] = field(default_factory=dict)  # e.g. judge_non_answers, parse failures
    # Text the chat template forces at the start of the assistant turn (`<think>\n` for DeepSeek's
    # R1-Distill template); the rewards score it + each completion, the text as the model sees it.
    completion_prefix: str = ""
