"""PromptSource: the training problems in a fixed order, as chat prompts of the student; and the
student's chat (its template, the prompt messages, the text the template forces into the answer).

The order is a pure function of (seed, epoch), so the data position of step s is s·P and a resumed
run sees exactly the prompts it would have seen. Problems whose prompt is over
`rollout.max_prompt_tokens` are left out once, at start, and counted (`left_out`, with the bad rows
that `data.skip_bad_rows` skipped).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from rlkd_ray.assets import resolve_model
from rlkd_ray.config import ConfigError, PromptExample, RLKDConfig
from rlkd_ray.controller.samples import Problem, PromptGroup
from rlkd_ray.data import DataError, load_split, prepare_data
from rlkd_ray.data.structure_control import shuffled_structures
from rlkd_ray.engines.base import PromptTooLong, build_prompt_ids, pad_token_id


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which a shuffled run reads its n training problems in `epoch`."""
    return np.random.default_rng(seed + epoch).permutation(n)


def group_seed(seed: int, step: int, slot: int) -> int:
    """The sampling seed of one prompt group: fixed by (seed, step, slot), whichever worker runs it."""
    digest = hashlib.sha256(f"{seed}:{step}:{slot}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def chat_messages(system_prompt: str, problem: str, examples: Sequence[PromptExample] = ()) -> List[dict]:
    """The system prompt, each worked example as a user turn and an assistant turn, then the problem."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    shots = [{"role": role, "content": text} for e in examples
             for role, text in (("user", e.problem), ("assistant", e.solution))]
    return system + shots + [{"role": "user", "content": problem}]


# Packaged chat templates (`rollout.chat_template: <name>`).
CHAT_TEMPLATES = {
    # DeepSeek-R1-Distill's turn format with an empty generation prompt: the model writes `<think>`
    # itself, as in the template the RLKD release trains its R1-Distill student with (DeepSeek's own
    # template ends the prompt in `<think>\n`). The system prompt goes first, as there.
    "r1_distill": (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}{% endif %}"
        "{% endfor %}{% for m in messages %}{% if m['role'] == 'user' %}{{ '<｜User｜>' + m['content'] }}"
        "{% elif m['role'] == 'assistant' %}{{ '<｜Assistant｜>' + m['content'] + '<｜end▁of▁sentence｜>' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
    ),
}


def load_chat_template(spec: str) -> str:
    """The Jinja text of `rollout.chat_template`: a packaged name or a file."""
    if spec in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[spec]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(f"'rollout.chat_template' is {spec!r}: neither a packaged template "
                          f"({', '.join(CHAT_TEMPLATES)}) nor a file")
    return path.read_text()


def student_tokenizer(model_path: str, chat_template: Optional[str]):
    """The student's tokenizer with the chat template of `rollout.chat_template` (None: its own)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if chat_template is not None:
        tokenizer.chat_template = load_chat_template(chat_template)
    return tokenizer


def forced_prefix(tokenizer) -> str:
    """What the chat template writes into the assistant turn before the model's first token: the
    generation prompt from its last `<think>` on (`<think>\n` for DeepSeek's R1-Distill template), or ""."""
    turn = [{"role": "user", "content": "x"}]
    closed = tokenizer.apply_chat_template(turn, tokenize=False)
    opened = tokenizer.apply_chat_template(turn, tokenize=False, add_generation_prompt=True)
    generation_prompt = opened[len(closed):] if opened.startswith(closed) else opened
    at = generation_prompt.rfind("<think>")
    return generation_prompt[at:] if at != -1 else ""


class PromptSource:
    def __init__(self, cfg: RLKDConfig):
        self.cfg = cfg
        self.tokenizer = student_tokenizer(resolve_model(cfg.model.student, cfg.paths.cache_dir),
                                           cfg.rollout.chat_template)
        self.completion_prefix = forced_prefix(self.tokenizer)
        self.pad_id = pad_token_id(self.tokenizer)
        prepared = prepare_data(cfg.data, cfg.paths.cache_dir)
        dataset = load_split(cfg.paths.cache_dir, cfg.data, "train")
        self.problems: List[Problem] = []
        self.prompt_ids: List[List[int]] = []
        too_long = 0
        for row in tqdm(dataset, desc="tokenising prompts", disable=not cfg.logging.progress):
            problem = Problem.from_row(row)
            try:
                messages = chat_messages(cfg.rollout.system_prompt, problem.problem, cfg.rollout.examples)
                ids = build_prompt_ids(self.tokenizer, messages, cfg.rollout.max_prompt_tokens)
            except PromptTooLong:
                too_long += 1
                continue
            self.problems.append(problem)
            self.prompt_ids.append(ids)
        if cfg.data.shuffle_teacher_structures:
            structures = shuffled_structures([p.teacher_structure for p in self.problems], cfg.trainer.seed)
            self.problems = [replace(p, teacher_structure=s) for p, s in zip(self.problems, structures)]
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
            self._order = epoch_order(self.cfg.trainer.seed, epoch, len(self.problems))
            self._order_epoch = epoch
        return int(self._order[offset])

    def group(self, step: int, slot: int) -> PromptGroup:
        i = self.index(step * self.cfg.trainer.prompts_per_step + slot)
        return PromptGroup(uid=f"s{step}-p{slot}", step=step, problem=self.problems[i],
                           prompt_ids=self.prompt_ids[i], seed=group_seed(self.cfg.trainer.seed, step, slot),
                           completion_prefix=self.completion_prefix)
