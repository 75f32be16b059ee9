"""Transformers engine: our own token-by-token sampling loop over the KV cache.

The log-prob of each sampled token is log_softmax(logits / T) over the full vocabulary, taken
*before* top-k / top-p truncation, so it equals what a trainer computes on the same ids at the same
temperature (greedy, T = 0: log_softmax(logits)). Sequences run in batches with left padding; the
`n` samples of a prompt share one prefill. Rows leave the batch (and the KV cache) when they finish.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Set

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from rlkd_ray.engines.base import (
    Completion,
    Sampling,
    check_request,
    choice_token_ids,
    pad_token_id,
    pin_to_cores,
    torch_dtype,
)
from rlkd_ray.weight_sync.protocol import SyncGroup, manifest_of, receive, unique_tensors


class HFEngine:
    """`Engine` on a transformers causal LM (CPU or one GPU)."""

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        batch_size: int = 16,
        max_model_len: int = 2048,
        seed: int = 0,
        threads: Optional[int] = None,
        cpu_cores: Optional[str] = None,
    ):
        dtype = torch_dtype(dtype)
        if cpu_cores is not None:
            threads = threads or len(pin_to_cores(cpu_cores))
        if threads is not None:
            torch.set_num_threads(threads)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        device = "cuda" if torch.cuda.is_available() else "cpu"  # a Ray actor sees only its own GPU
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
        self.device = self.model.device
        self.batch_size = batch_size
        self.max_model_len = max_model_len
        self.eos_ids = eos_token_ids(self.tokenizer, self.model.generation_config)
        self.pad_id = pad_token_id(self.tokenizer)
        self.rng = torch.Generator(device=self.device).manual_seed(seed)
        self.sync_ranks = 1  # members of a broadcast weight-sync group
        self.sync_group: Optional[SyncGroup] = None
        self.version = 0

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], sampling: Sampling) -> List[List[Completion]]:
        """`sampling.n` completions per prompt, in prompt order; see the module docstring."""
        check_request(prompts, sampling, self.max_model_len)
        rng = self.rng if sampling.seed is None else torch.Generator(self.device).manual_seed(sampling.seed)
        per_batch = max(1, self.batch_size // sampling.n)  # whole groups per batch
        out: List[List[Completion]] = []
        for start in range(0, len(prompts), per_batch):
            chunk = prompts[start : start + per_batch]
            rows = self._generate_batch(chunk, sampling, rng)
            out.extend(rows[i * sampling.n : (i + 1) * sampling.n] for i in range(len(chunk)))
        return out

    def _generate_batch(self, prompts: Sequence[Sequence[int]], sampling: Sampling, rng) -> List[Completion]:
        ids, mask = self._left_pad(prompts)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(ids, mask, positions, cache)
        n = sampling.n
        if n > 1:  # one prefill per prompt, then n rows decode from it
            cache.batch_repeat_interleave(n)
            logits, mask = logits.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)
            positions = positions.repeat_interleave(n, 0)
        next_pos = positions[:, -1:] + 1
        alive = list(range(len(prompts) * n))  # batch row -> output row
        tokens: List[List[int]] = [[] for _ in alive]
        logps: List[List[float]] = [[] for _ in alive]
        finish: List[str] = ["length"] * len(alive)
        stops = StopStrings(self.tokenizer, sampling.stop)
        for _ in range(sampling.max_new_tokens):
            tok, lp = sample_next(logits, sampling, rng)
            keep = []
            for j, (r, t, logp) in enumerate(zip(alive, tok.tolist(), lp.tolist())):
                tokens[r].append(t)
                logps[r].append(logp)
                if t in self.eos_ids or stops.completed(tokens[r]):
                    finish[r] = "stop"
                elif len(tokens[r]) < sampling.max_new_tokens:
                    keep.append(j)
            if not keep:
                break
            if len(keep) < len(alive):
                idx = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(idx)
                mask, next_pos, tok = mask[idx], next_pos[idx], tok[idx]
                alive = [alive[j] for j in keep]
            mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
            logits = self._forward(tok[:, None], mask, next_pos, cache)
            next_pos = next_pos + 1
        return [
            Completion(t, lp, stops.cut(self.tokenizer.decode(t, skip_special_tokens=True)), f)
            for t, lp, f in zip(tokens, logps, finish)
        ]

    def _left_pad(self, prompts: Sequence[Sequence[int]]):
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(list(p))
            mask[i, width - len(p) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _forward(self, ids, mask, positions, cache) -> torch.Tensor:
        """Logits (float32) at the last position of each row."""
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
            use_cache=cache is not None, logits_to_keep=1,
        )
        return out.logits[:, -1].float()

    @torch.inference_mode()
    def score_choices(self, prompts: Sequence[Sequence[int]], choices: Sequence[str]) -> List[List[float]]:
        """log_softmax(logits) at the first generated position, at the first token of each choice."""
        ids = torch.tensor(choice_token_ids(self.tokenizer, choices), device=self.device)
        for i, p in enumerate(prompts):
            if not 0 < len(p) < self.max_model_len:
                raise ValueError(f"prompt {i} has {len(p)} tokens; need 1 to {self.max_model_len - 1}")
        out: List[List[float]] = []
        for start in range(0, len(prompts), self.batch_size):
            tokens, mask = self._left_pad(prompts[start : start + self.batch_size])
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logp = torch.log_softmax(self._forward(tokens, mask, positions, None), dim=-1)
            out.extend(logp[:, ids].tolist())
        return out

    @torch.no_grad()
    def load_weights(self, version: int, weights: Dict[str, torch.Tensor]) -> None:
        """One strict load_state_dict; a tied lm_head may be absent (or equal to the embedding).
        Names are checked first, so a bad dict leaves the old weights whole."""
        weights = untie_lm_head(self.model, weights)
        expected = set(self.model.state_dict())
        missing, unexpected = expected - set(weights), set(weights) - expected
        if missing or unexpected:
            raise KeyError(f"weights do not match the model: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
        self.model.load_state_dict(weights, strict=True)
        self.version = version

    def join_weight_sync(self, host: str, port: int, first_rank: int, world_size: int, timeout_s: float) -> None:
        self.sync_expected = manifest_of(unique_tensors(self.model.state_dict()))  # a tied lm_head once
        self.sync_group = SyncGroup(host, port, first_rank, world_size, self.device, timeout_s)

    def receive_weights(self) -> int:
        """One broadcast sync: rank 0 of the group sends the state dict, checked against this model's."""
        received: Dict[str, torch.Tensor] = {}
        version = receive(self.sync_group, self.sync_expected, self.version, received.update)
        self.load_weights(version, received)
        return version

    def leave_weight_sync(self) -> None:
        group, self.sync_group = self.sync_group, None
        if group is not None:
            group.close()

    def close(self) -> None:
        self.leave_weight_sync()
        self.model = None
        self.tokenizer = None


def untie_lm_head(model, weights: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """With tied embeddings, fill `lm_head.weight` from the embedding (erroring if both differ)."""
    head = "lm_head.weight"
    params = dict(model.named_parameters(remove_duplicate=False))
    if not model.config.get_text_config().tie_word_embeddings or head not in params:
        return weights
    embed_key = next(k for k, p in params.items() if p is params[head] and k != head)
    if embed_key not in weights:
        raise KeyError(f"weights lack '{embed_key}' (tied to {head})")
    embed = weights[embed_key]
    if head in weights and not (weights[head] is embed or torch.equal(weights[head], embed)):
        raise ValueError(f"'{head}' differs from '{embed_key}' but the model ties them")
    return {**weights, head: embed}


def eos_token_ids(tokenizer, generation_config) -> Set[int]:
    """EOS ids of the tokenizer and of the generation config (an int or a list)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    extra = getattr(generation_config, "eos_token_id", None)
    ids.update(extra if isinstance(extra, (list, tuple)) else [extra] if extra is not None else [])
    if not ids:
        raise ValueError("neither the tokenizer nor the generation config names an EOS token")
    return ids


def sample_next(logits: torch.Tensor, sampling: Sampling, rng: torch.Generator):
    """Next token per row and its log-prob log_softmax(logits / T), before any truncation."""
    if sampling.temperature == 0:
        logp = torch.log_softmax(logits, dim=-1)
        tok = logp.argmax(dim=-1)
    else:
        logp = torch.log_softmax(logits / sampling.temperature, dim=-1)
        kept = truncate(logp, sampling.top_k, sampling.top_p)
        tok = torch.multinomial(kept.exp(), 1, generator=rng).squeeze(1)
    return tok, logp.gather(-1, tok[:, None]).squeeze(1)


def truncate(logp: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k, then top-p on the renormalised rest (the smallest set with mass >= top_p); -inf elsewhere."""
    if top_k != -1 and top_k < logp.shape[-1]:
        kth = logp.topk(top_k, dim=-1).values[:, -1:]
        logp = torch.log_softmax(logp.masked_fill(logp < kth, float("-inf")), dim=-1)
    if top_p < 1:
        sorted_lp, order = logp.sort(dim=-1, descending=True)
        probs = sorted_lp.exp()
        drop_sorted = probs.cumsum(-1) - probs >= top_p  # mass of the better tokens already reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logp = logp.masked_fill(drop, float("-inf"))
    return logp


class StopStrings:
    """Detects the token that completes a stop string; the text keeps the stop string and ends there."""

    def __init__(self, tokenizer, stops: Sequence[str]):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        # every token decodes to >= 1 character except special and partial-byte tokens: 8 spare
        self.window = max((len(s) for s in self.stops), default=0) + 8

    def completed(self, tokens: List[int]) -> bool:
        if not self.stops:
            return False
        tail = self.tokenizer.decode(tokens[-self.window :], skip_special_tokens=True)
        before = self.tokenizer.decode(tokens[-self.window : -1], skip_special_tokens=True)
        return any(s in tail and s not in before for s in self.stops)

    def cut(self, text: str) -> str:
        ends = [text.find(s) + len(s) for s in self.stops if s in text]
        return text[: min(ends)] if ends else text
