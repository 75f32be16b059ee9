"""The policy learner of one data-parallel rank: a DeepSpeed engine over the student, a frozen
reference for the KL term, the GRPO step over micro-batches, weight gathering, checkpoints.

`actors/learner.py` wraps one `DeepSpeedPolicy` per rank in a Ray actor; the ranks of a group form one
torch.distributed world (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import math
import os
import random
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from rlkd_ray.algo.losses import entropy_from_logits, grpo_loss, logprob_gap, sft_loss, truncated_is_weights
from rlkd_ray.config import LearnerConfig, RLKDConfig
from rlkd_ray.controller.batching import TrainBatch, micro_batches, shard
from rlkd_ray.engines.base import torch_dtype


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float,
                   with_entropy: bool = False, entropy_grad: bool = False,
                   chunk_tokens: int = LearnerConfig.logprob_chunk_tokens, first: int = 1):
    """log softmax(logits / T) of each token given its prefix, aligned to token positions
    (position 0, which has no prefix, gets 0). The behaviour policy of the engines is the same.

    Only what the loss needs is computed: positions from `first` on (earlier ones get 0; the loss
    masks them: see `first_scored_position`), so the vocabulary projection and softmax of the prompt
    are never built; and `chunk_tokens` positions at a time in float32 (`sampled_logprobs`,
    `token_entropy`): no full-vocabulary float32 tensor is built or kept for the backward pass. The
    entropy (with_entropy) has gradients only with `entropy_grad`."""
    first = min(max(1, first), input_ids.shape[1])
    keep = input_ids.shape[1] - first + 1  # the logits at positions first-1 .. L-1
    kwargs = {"logits_to_keep": keep} if first > 1 else {}
    logits = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits
    logp = torch.nn.functional.pad(sampled_logprobs(logits, input_ids[:, first - 1:], temperature, chunk_tokens),
                                   (first, 0))
    if not with_entropy:
        return logp, None
    return logp, torch.nn.functional.pad(entropy_with_grad(logits, temperature, chunk_tokens, entropy_grad), (first, 0))


def entropy_with_grad(logits: torch.Tensor, temperature: float, chunk_tokens: int, grad: bool) -> torch.Tensor:
    """`token_entropy`, with gradients only when `grad` (the entropy bonus is on)."""
    if grad:
        return token_entropy(logits, temperature, chunk_tokens)
    with torch.no_grad():
        return token_entropy(logits, temperature, chunk_tokens)


def shared_prompt_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor,
                           temperature: float, with_entropy: bool = False, entropy_grad: bool = False,
                           chunk_tokens: int = LearnerConfig.logprob_chunk_tokens):
    """`token_logprobs` on the completions (the positions `loss_mask` scores, zeros elsewhere), with
    each distinct prompt of the batch run once: a GRPO group's G samples share one prompt, which is
    most of each sequence. One forward pass over the distinct prompts (right-padded) keeps their keys
    and values; they are repeated for each row of the prompt and the completions attend to them in a
    second pass (their own positions, the prompts' padding masked). The same function of the weights:
    gradients flow into the prompt pass through the repeated keys and values, summed over the group.

    A row's prompt is everything before its first scored token; a row that scores nothing is all
    prompt and gets zeros."""
    rows, width = input_ids.shape
    lengths = attention_mask.sum(dim=1).tolist()
    scored = loss_mask.ne(0)
    starts = [int(scored[i].nonzero()[0]) if scored[i].any() else lengths[i] for i in range(rows)]
    starts = [max(1, p) for p in starts]  # position 0 has no prefix: it is always prompt
    prompts: Dict[tuple, int] = {}
    owner = [prompts.setdefault(tuple(input_ids[i, :starts[i]].tolist()), len(prompts)) for i in range(rows)]
    device = input_ids.device
    p_len = torch.tensor([len(p) for p in prompts], device=device)
    prompt_ids = torch.zeros((len(prompts), int(p_len.max())), dtype=input_ids.dtype, device=device)  # 0: padding
    for u, p in enumerate(prompts):
        prompt_ids[u, :len(p)] = torch.tensor(p, dtype=input_ids.dtype)
    prompt_mask = (torch.arange(prompt_ids.shape[1], device=device) < p_len[:, None]).long()
    last = torch.unique(p_len - 1)  # the prompts' last positions: they predict the first completion token
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True, logits_to_keep=last)
    owner_t = torch.tensor(owner, device=device)
    first_logits = out.logits[owner_t, torch.searchsorted(last, p_len[owner_t] - 1)][:, None]  # [rows, 1, V]
    cache = out.past_key_values
    cache.batch_select_indices(owner_t)  # each row gets its prompt's keys and values

    c_len = torch.tensor([n - p for n, p in zip(lengths, starts)], device=device).clamp(min=0)
    steps = torch.arange(max(int(c_len.max()), 1), device=device)
    c_mask = (steps < c_len[:, None]).long()
    positions = torch.tensor(starts, device=device)[:, None] + steps  # of the completion tokens in the rows
    c_ids = input_ids.gather(1, positions.clamp(max=width - 1)) * c_mask  # 0: padding, masked
    logits = model(input_ids=c_ids, attention_mask=torch.cat([prompt_mask[owner_t], c_mask], dim=1),
                   position_ids=positions, past_key_values=cache).logits
    logits = torch.cat([first_logits.to(logits.dtype), logits], dim=1)  # [rows, C + 1, V] predicting C tokens
    targets = torch.cat([c_ids[:, :1], c_ids], dim=1)  # position 0 is the prompt's last: never a target

    def placed(values: torch.Tensor) -> torch.Tensor:
        """[rows, C] values of completion tokens -> [rows, width] at their positions, zeros elsewhere."""
        full = values.new_zeros(rows, width + len(steps))
        return full.scatter(1, positions, values * c_mask)[:, :width]

    logp = placed(sampled_logprobs(logits, targets, temperature, chunk_tokens))
    if not with_entropy:
        return logp, None
    return logp, placed(entropy_with_grad(logits, temperature, chunk_tokens, entropy_grad))


def first_scored_position(loss_mask: torch.Tensor) -> int:
    """The first position any row of the batch scores (its first completion token): the prompts
    before it need no log-probs."""
    scored = loss_mask.ne(0).any(dim=0).nonzero()
    return int(scored[0]) if len(scored) else loss_mask.shape[1]


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 logits / T (greedy, T = 0: the logits themselves)."""
    z = logits.float()
    return z / temperature if temperature > 0 else z


def _row_chunks(logits: torch.Tensor, chunk_tokens: int) -> Iterator[tuple]:
    """(batch row, position slice) over the positions that predict a next token (all but the last),
    `chunk_tokens` at a time: each `logits[b, s]` is a contiguous [n, V] block."""
    positions = logits.shape[1] - 1
    for b in range(logits.shape[0]):
        for start in range(0, positions, chunk_tokens):
            yield b, slice(start, min(start + chunk_tokens, positions))


class _SampledLogProbs(torch.autograd.Function):
    """log softmax(logits / T)[next token], chunk by chunk. Backward keeps only the logits (in the
    model's dtype) and one float32 log-normaliser per position, and rebuilds the softmax per chunk:
    d logp_t / d z_t = (onehot(x_t+1) - softmax(z_t / T)) / T."""

    @staticmethod
    def forward(ctx, logits, input_ids, temperature, chunk_tokens):
        B, L, _ = logits.shape
        out = torch.zeros(B, L - 1, dtype=torch.float32, device=logits.device)
        lse = torch.zeros_like(out)
        targets = input_ids[:, 1:]
        for b, s in _row_chunks(logits, chunk_tokens):
            z = _scaled(logits[b, s], temperature)
            lse[b, s] = torch.logsumexp(z, dim=-1)
            out[b, s] = z.gather(-1, targets[b, s, None]).squeeze(-1) - lse[b, s]
        ctx.save_for_backward(logits, targets, lse)
        ctx.temperature, ctx.chunk_tokens = temperature, chunk_tokens
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, targets, lse = ctx.saved_tensors
        T = ctx.temperature
        grad = torch.zeros_like(logits)
        for b, s in _row_chunks(logits, ctx.chunk_tokens):
            g = grad_out[b, s].float()
            # -softmax(z/T) * g, plus g at the sampled token; / T for the temperature
            chunk = torch.exp(_scaled(logits[b, s], T) - lse[b, s, None]).mul_(-g[:, None])
            chunk.scatter_add_(-1, targets[b, s, None], g[:, None])
            if T > 0:
                chunk.div_(T)
            grad[b, s] = chunk.to(grad.dtype)
        return grad, None, None, None


def sampled_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, temperature: float,
                     chunk_tokens: int) -> torch.Tensor:
    """[B, L-1] float32 log-probs of tokens 1..L-1 under softmax(logits[:, :-1] / T)."""
    return _SampledLogProbs.apply(logits, input_ids, temperature, chunk_tokens)


def token_entropy(logits: torch.Tensor, temperature: float, chunk_tokens: int) -> torch.Tensor:
    """[B, L-1] entropy of softmax(logits[:, :-1] / T), chunk by chunk. With gradients, each chunk is
    recomputed in the backward pass (activation checkpointing) instead of keeping its float32 softmax."""
    from torch.utils.checkpoint import checkpoint

    def chunk_entropy(z: torch.Tensor) -> torch.Tensor:
        return entropy_from_logits(_scaled(z, temperature))

    rows = []
    for b in range(logits.shape[0]):
        parts = [checkpoint(chunk_entropy, logits[b, s], use_reentrant=False) if torch.is_grad_enabled()
                 else chunk_entropy(logits[b, s]) for _, s in _row_chunks(logits[b : b + 1], chunk_tokens)]
        rows.append(torch.cat(parts) if parts else logits.new_zeros(0, dtype=torch.float32))
    return torch.stack(rows)


def learner_autocast(dtype: Optional[str]):
    """`torch.autocast` on CPU at `dtype` (bfloat16), or a no-op context for None. The weights, the
    optimizer and the log-softmax over the logits stay float32."""
    return torch.autocast("cpu", dtype=torch_dtype(dtype), enabled=True) if dtype else nullcontext()


def lr_lambda(total_steps: int, warmup_ratio: float, schedule: str):
    """Learning-rate multiplier: linear warmup over warmup_ratio·total_steps, then constant
    (the paper's recipe) or cosine decay to 0; the schedules of transformers that the RLKD release
    uses (`get_constant_schedule_with_warmup`: step s of w warm-up steps gets s/w, so step 0 gets 0)."""
    warmup = max(0, int(round(warmup_ratio * total_steps)))

    def f(step: int) -> float:
        if step < warmup:
            return step / warmup
        if schedule == "cosine":
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return f


def deepspeed_config(cfg: RLKDConfig) -> dict:
    rows = cfg.trainer.prompts_per_step * cfg.rollout.group_size
    per_rank = rows // cfg.learner.world_size
    return {
        "train_batch_size": rows,
        "train_micro_batch_size_per_gpu": cfg.learner.micro_batch_size,
        "gradient_accumulation_steps": max(1, per_rank // cfg.learner.micro_batch_size),
        "gradient_clipping": cfg.learner.optim.grad_clip,
        "zero_optimization": {"stage": cfg.learner.zero_stage},
        "bf16": {"enabled": cfg.model.dtype == "bfloat16"},
        "fp16": {"enabled": cfg.model.dtype == "float16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class DeepSpeedPolicy:
    """The student policy of one data-parallel rank under DeepSpeed. Expects
    RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT in the environment."""

    def __init__(self, cfg: RLKDConfig, student_path: str, reference_path: Optional[str] = None):
        import deepspeed
        import deepspeed.ops
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rlkd_ray.learner.safe_load import use_weights_only_loads

        self.cfg = cfg
        self.rank = int(os.environ["RANK"])
        self.world_size = int(os.environ["WORLD_SIZE"])
        on_gpu = torch.cuda.is_available() and cfg.learner.num_gpus > 0
        self.device = torch.device(f"cuda:{torch.cuda.current_device()}" if on_gpu else "cpu")
        if not on_gpu:
            # DeepSpeed's optional shared-memory all-reduce compiles a C++ op for ~60-90 s on first use;
            # gloo does the same all-reduce without it.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
        torch.manual_seed(cfg.trainer.seed)

        dtype = torch_dtype(cfg.model.dtype)
        model = AutoModelForCausalLM.from_pretrained(student_path, dtype=dtype)
        if cfg.learner.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.tokenizer = AutoTokenizer.from_pretrained(student_path)
        optim = cfg.learner.optim
        optimizer = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                                      weight_decay=optim.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(cfg.trainer.total_steps, optim.warmup_ratio, optim.schedule))
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg))
        use_weights_only_loads(self.engine)  # resume never unpickles code from a checkpoint folder
        self.reference = None
        if cfg.algo.kl_beta > 0:
            self.reference = self._frozen_reference(reference_path or student_path, dtype)

    def _frozen_reference(self, path: str, dtype: torch.dtype):
        """The KL reference, as `learner.reference_memory` asks: a full copy on this rank's device, or
        a ZeRO-3 engine without optimizer whose shards are spread over the ranks (or kept in CPU memory)
        and gathered layer by layer in its forward pass."""
        import deepspeed
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval().requires_grad_(False)
        if self.cfg.learner.reference_memory == "replicated":
            return model.to(self.device)
        config = deepspeed_config(self.cfg)
        config.pop("gradient_clipping")
        config["zero_optimization"] = {"stage": 3}
        if self.cfg.learner.reference_memory == "offload":
            config["zero_optimization"]["offload_param"] = {"device": "cpu", "pin_memory": self.device.type == "cuda"}
        engine, _, _, _ = deepspeed.initialize(model=model, config=config)
        engine.eval()
        return engine

    # -- the GRPO step -------------------------------------------------------------------------
    def train_step(self, batch: TrainBatch) -> Dict[str, float]:
        """One GRPO optimizer step over this rank's share of the global batch. Returns token-weighted
        metric sums (`<name>_sum`, `tokens`) and maxima (`<name>_max`) that `LearnerGroup.reduce_metrics`
        combines over ranks."""
        cfg, algo = self.cfg, self.cfg.algo
        sums: Dict[str, float] = {"tokens": 0.0}
        tis = algo.tis or cfg.trainer.max_staleness > 0

        def logprobs(model, mb: TrainBatch, shared: bool, **kw):
            if shared:  # each distinct prompt once (a group's samples share it)
                return shared_prompt_logprobs(model, mb.input_ids, mb.attention_mask, mb.loss_mask,
                                              cfg.rollout.temperature, chunk_tokens=cfg.learner.logprob_chunk_tokens, **kw)
            return token_logprobs(model, mb.input_ids, mb.attention_mask, cfg.rollout.temperature,
                                  chunk_tokens=cfg.learner.logprob_chunk_tokens,
                                  first=first_scored_position(mb.loss_mask), **kw)

        # transformers keeps no key/value cache under gradient checkpointing: the student then runs whole rows
        shared_student = cfg.learner.shared_prompt_pass and not cfg.learner.gradient_checkpointing

        def micro_loss(mb: TrainBatch) -> torch.Tensor:
            logp, entropy = logprobs(self.engine, mb, shared_student, with_entropy=True,
                                     entropy_grad=algo.entropy_coef != 0)
            # One update per batch, as the paper's code: π_old is the learner itself, this forward's
            # log-probs detached (ratio exactly 1, gradient ∇log π; no extra pass, no engine numerics).
            old_logp = logp.detach()
            is_weights = truncated_is_weights(old_logp, mb.behaviour_logprobs, algo.tis_cap) if tis else None
            ref_logp = None
            if self.reference is not None:
                with torch.no_grad():
                    ref_logp, _ = logprobs(self.reference, mb, cfg.learner.shared_prompt_pass)
            loss, metrics = grpo_loss(
                logp, old_logp, ref_logp, mb.advantages, mb.loss_mask,
                clip_eps=algo.clip_eps, kl_beta=algo.kl_beta, kl_estimator=algo.kl_estimator,
                entropy_coef=algo.entropy_coef,
                entropy=entropy if algo.entropy_coef else entropy.detach(),
                num_tokens=batch.num_tokens, is_weights=is_weights)
            metrics |= logprob_gap(old_logp, mb.behaviour_logprobs, mb.loss_mask)
            n = float(mb.loss_mask.sum().item())
            sums["tokens"] += n
            for k, v in metrics.items():
                if k.endswith("_max"):  # the largest over micro-batches (and ranks)
                    sums[k] = max(sums.get(k, 0.0), v)
                else:  # token-weighted, so that ranks and micro-batches add up
                    sums[f"{k}_sum"] = sums.get(f"{k}_sum", 0.0) + v * n
            return loss

        sums["grad_norm"] = self._optimizer_step(batch, micro_loss)
        sums["lr"] = float(self.engine.get_lr()[0])
        return sums

    # -- supervised fine-tuning ----------------------------------------------------------------
    def sft_step(self, batch: TrainBatch) -> Dict[str, float]:
        """One optimizer step of `sft_loss` over this rank's share of the global batch; the loss
        weights are `batch.loss_mask`. Scaled as in `train_step`, so the gradient is that of the
        weighted mean over the whole batch. Sums for `rlkd_ray.offline.sft.reduce_metrics`."""
        if self.engine.train_batch_size() != len(batch):  # SFT batches need not match the RL step
            self.engine.set_train_batch_size(len(batch))
        total_weight = float(batch.loss_mask.sum().item())
        sums = {"loss_sum": 0.0, "weight": 0.0, "nll_sum": 0.0, "tokens": 0.0}

        def micro_loss(mb: TrainBatch) -> torch.Tensor:
            logp, _ = token_logprobs(self.engine, mb.input_ids, mb.attention_mask, temperature=1.0,
                                     chunk_tokens=self.cfg.learner.logprob_chunk_tokens,
                                     first=first_scored_position(mb.loss_mask))
            loss, metrics = sft_loss(logp, mb.loss_mask, normaliser=total_weight)
            weight, tokens = float(mb.loss_mask.sum().item()), float((mb.loss_mask > 0).sum().item())
            sums["loss_sum"] += metrics["loss"] * weight
            sums["weight"] += weight
            sums["nll_sum"] += metrics["nll"] * tokens
            sums["tokens"] += tokens
            return loss

        sums["grad_norm"] = self._optimizer_step(batch, micro_loss)
        sums["lr"] = float(self.engine.get_lr()[0])
        return sums

    def _optimizer_step(self, batch: TrainBatch, micro_loss) -> float:
        """Backward of `micro_loss(mb)` over this rank's micro-batches, then one optimizer step.

        Each micro-batch loss is normalised by the *global* batch (token count or weight); DeepSpeed
        divides by the accumulation steps and averages over ranks, so both are multiplied back: the
        gradient is that of the mean over the whole batch, whatever the world size. Returns the
        gradient norm before clipping."""
        self.engine.train()
        scale = self.engine.gradient_accumulation_steps() * self.world_size
        mbs = list(micro_batches(shard(batch, self.rank, self.world_size), self.cfg.learner.micro_batch_size))
        pre_step_norm = math.nan
        for i, mb in enumerate(mbs):
            with self.autocast():
                loss = micro_loss(_to(mb, self.device))
            self.engine.backward(loss * scale)
            if i == len(mbs) - 1:  # gradients are now all-reduced: the norm before clipping
                pre_step_norm = self._grad_norm()
            self.engine.step()
        norm = self.engine.get_global_grad_norm()  # set by DeepSpeed's ZeRO / mixed-precision optimizers
        return float(norm if norm is not None else pre_step_norm)

    def autocast(self):
        """The forward passes' compute dtype: bfloat16 autocast on CPU with `learner.autocast`."""
        return learner_autocast(self.cfg.learner.autocast if self.device.type == "cpu" else None)

    def _grad_norm(self) -> float:
        """Global L2 norm of the full gradients (plain fp32 stage 0, where DeepSpeed keeps no norm);
        NaN where the gradients are partitioned, and DeepSpeed reports the norm itself."""
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        if self.cfg.learner.zero_stage > 0 or not grads:
            return math.nan
        return float(torch.nn.utils.get_total_norm(grads).item())

    # -- weights and checkpoints ---------------------------------------------------------------
    def _named_weights(self) -> Tuple[List[Tuple[str, torch.Tensor]], Dict[str, str]]:
        """([(name, parameter or buffer)] of the state dict, each tensor once, in its order;
        {alias: name} of the names that share a tensor, e.g. a tied lm_head). Under ZeRO-3 these are
        the partitioned parameters (`ds_shape` holds the full shape)."""
        first: Dict[int, str] = {}
        named, aliases = [], {}
        for name, t in self.engine.module.state_dict(keep_vars=True).items():
            if id(t) in first:
                aliases[name] = first[id(t)]
            else:
                first[id(t)] = name
                named.append((name, t))
        return named, aliases

    @contextmanager
    def _gathered(self, tensors: List[torch.Tensor]) -> Iterator[None]:
        """Under ZeRO-3, the full data of these parameters inside the block (collective: every rank
        enters it with the same tensors); a no-op otherwise."""
        import deepspeed

        params = [t for t in tensors if hasattr(t, "ds_id")]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None,
                                               enabled=self.cfg.learner.zero_stage == 3 and bool(params)):
            yield

    def _manifest(self, named: List[Tuple[str, torch.Tensor]]):
        from rlkd_ray.weight_sync.protocol import TensorSpec, dtype_name

        return [TensorSpec(n, tuple(getattr(t, "ds_shape", t.shape)), dtype_name(t.dtype)) for n, t in named]

    def gather_weights(self) -> Optional[Dict[str, torch.Tensor]]:
        """A CPU copy of the full state dict on rank 0 (the object-store sync, checkpoints), tied names
        sharing one tensor. ZeRO-3 shards are gathered `cluster.bucket_mb` at a time, never all at once
        (collective: every rank calls it)."""
        from rlkd_ray.weight_sync.protocol import plan_buckets

        named, aliases = self._named_weights()
        out: Dict[str, torch.Tensor] = {}
        for bucket in plan_buckets(self._manifest(named), self.cfg.cluster.bucket_mb * 2**20):
            whole = [named[s.index] for s in bucket.slots if s.start == 0]  # each tensor once, where it starts
            with self._gathered([named[s.index][1] for s in bucket.slots]):
                if self.rank == 0:
                    for name, t in whole:
                        out[name] = t.detach().to("cpu", copy=True).contiguous()
        if self.rank != 0:
            return None
        out.update({alias: out[name] for alias, name in aliases.items()})
        return {name: out[name] for name in self.engine.module.state_dict(keep_vars=True)}

    def broadcast_weights(self, group, version: int, bucket_bytes: int) -> Optional[float]:
        """Rank 0 sends the full state dict from where it lives (GPU memory under NCCL) through the
        broadcast group `group` (rlkd_ray/weight_sync/protocol.py). ZeRO-3 shards are gathered bucket
        by bucket, each just before its broadcast (collective: every rank calls it, and hears rank 0's
        verdict first, so a refused sync leaves no rank waiting in a gather). Returns rank 0's seconds."""
        import time

        from rlkd_ray.weight_sync.protocol import WeightSyncError, finish, offer, pack_bucket, plan_buckets

        start = time.perf_counter()
        named, _ = self._named_weights()
        manifest = self._manifest(named)
        plan, refused = plan_buckets(manifest, bucket_bytes), None
        if self.rank == 0:
            try:
                offer(group, version, manifest, bucket_bytes)
            except WeightSyncError as e:
                refused = e
        if self.world_size > 1:
            verdict = torch.tensor([refused is not None], dtype=torch.int64, device=self.device)
            torch.distributed.broadcast(verdict, src=0)
            if verdict.item() and refused is None:
                raise WeightSyncError(f"learner rank {self.rank}: rank 0's weight sync of version {version} was refused")
        if refused is not None:
            raise refused
        tensors = [t for _, t in named]
        buffer = (torch.empty(max(b.nbytes for b in plan), dtype=torch.uint8, device=self.device)
                  if self.rank == 0 else None)
        for bucket in plan:
            with self._gathered([tensors[s.index] for s in bucket.slots]):
                if self.rank == 0:
                    group.broadcast(pack_bucket(bucket, tensors, buffer))
        return finish(group, version, manifest, plan, start).seconds if self.rank == 0 else None

    def save(self, ckpt_dir: str, client_state: dict) -> None:
        """DeepSpeed state (every rank) and the student in Hugging Face format (rank 0)."""
        # numpy's state as plain data (its key array as a tensor): checkpoints load weights-only (safe_load.py)
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        rng = {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate(),
               "numpy_rng": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
        if torch.cuda.is_available():
            rng["cuda_rng"] = torch.cuda.get_rng_state()
        self.engine.save_checkpoint(ckpt_dir, tag="deepspeed", client_state=client_state | rng)
        weights = self.gather_weights()
        if self.rank == 0:
            hf_dir = Path(ckpt_dir) / "hf"
            self.engine.module.save_pretrained(hf_dir, state_dict=weights, safe_serialization=True)
            self.tokenizer.save_pretrained(hf_dir)

    def load(self, ckpt_dir: str) -> dict:
        _, client_state = self.engine.load_checkpoint(ckpt_dir, tag="deepspeed")
        if client_state is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint under {ckpt_dir}")
        torch.set_rng_state(client_state.pop("torch_rng"))
        random.setstate(client_state.pop("python_rng"))
        name, keys, pos, has_gauss, gauss = client_state.pop("numpy_rng")
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        if "cuda_rng" in client_state:
            torch.cuda.set_rng_state(client_state.pop("cuda_rng"))
        return client_state


def _to(batch: TrainBatch, device: torch.device) -> TrainBatch:
    if device.type == "cpu":
        return batch
    return TrainBatch(**{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in vars(batch).items()})
