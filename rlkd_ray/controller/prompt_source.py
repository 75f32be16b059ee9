"""PromptSource: the training problems in a fixed order, as chat prompts of the student.

The order is a pure function of (seed, epoch), so the data position of step s is s·P and a resumed
run sees exactly the prompts it would have seen. Problems whose prompt is over
`rollout.max_prompt_tokens` are left out once, at start, and counted (`left_out`, with the bad rows
that `data.skip_bad_rows` skipped).
"""

from __future__ import annotations

import hashlib
from typing import List

import numpy as np
from tqdm import tqdm

from rlkd_ray.assets import resolve_model
from rlkd_ray.config import RLKDConfig
from rlkd_ray.controller.samples import Problem, PromptGroup
from rlkd_ray.data import DataError, load_split, prepare_data
from rlkd_ray.engines.base import PromptTooLong, build_prompt_ids


def group_seed(seed: int, step: int, slot: int) -> int:
    """The sampling seed of one prompt group: fixed by (seed, step, slot), whichever worker runs it."""
    digest = hashlib.sha256(f"{seed}:{step}:{slot}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def chat_messages(system_prompt: str, problem: str) -> List[dict]:
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return system + [{"role": "user", "content": problem}]


class PromptSource:
    def __init__(self, cfg: RLKDConfig):
        from transformers import AutoTokenizer

        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.model.student, cfg.paths.cache_dir))
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        prepared = prepare_data(cfg.data, cfg.paths.cache_dir)
        dataset = load_split(cfg.paths.cache_dir, cfg.data.name, "train")
        self.problems: List[Problem] = []
        self.prompt_ids: List[List[int]] = []
        too_long = 0
        for row in tqdm(dataset, desc="tokenising prompts", disable=not cfg.logging.progress):
            problem = Problem.from_row(row)
            try:
                ids = build_prompt_ids(self.tokenizer, chat_messages(cfg.rollout.system_prompt, problem.problem),
                                       cfg.rollout.max_prompt_tokens)
            except PromptTooLong:
                too_long += 1
                continue
            self.problems.append(problem)
            self.prompt_ids.append(ids)
        if too_long:
            print(f"data: left out {too_long} of {len(dataset)} problems whose prompt is over "
                  f"rollout.max_prompt_tokens={cfg.rollout.max_prompt_tokens}")
        # Rows left out, by reason: in every step's metrics (`data/<reason>`) and the run's summary.
        self.left_out = {"bad_rows": prepared.bad_rows, "prompts_too_long": too_long}
        self._order_epoch, self._order = -1, None
        if not self.problems:
            raise DataError(f"data {cfg.data.name!r}: no training problem fits rollout.max_prompt_tokens="
                            f"{cfg.rollout.max_prompt_tokens}")

    def __len__(self) -> int:
        return len(self.problems)

    def index(self, position: int) -> int:
        """Dataset index at a global data position (epochs reshuffle with seed + epoch)."""
        epoch, offset = divmod(position, len(self.problems))
        if not self.cfg.data.shuffle:
            return offset
        if self._order_epoch != epoch:  # one permutation per epoch, not one per prompt group
            self._order = np.random.default_rng(self.cfg.trainer.seed + epoch).permutation(len(self.problems))
            self._order_epoch = epoch
        return int(self._order[offset])

    def group(self, step: int, slot: int) -> PromptGroup:
        i = self.index(step * self.cfg.trainer.prompts_per_step + slot)
        return PromptGroup(uid=f"s{step}-p{slot}", step=step, problem=self.problems[i],
                           prompt_ids=self.prompt_ids[i], seed=group_seed(self.cfg.trainer.seed, step, slot))
