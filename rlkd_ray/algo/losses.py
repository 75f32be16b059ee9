"""GRPO loss: clipped-ratio policy surrogate + KL to the reference, token-level mean; the truncated
importance weights of tokens sampled by another policy (the engine).

Token tensors are [B, T] (log-prob of each completion token; `mask` 1 on completion tokens);
advantages are [B], one per sequence, broadcast over its tokens. Only `logprobs` gets gradients.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

KL_ESTIMATORS = ("k1", "k3")


def masked_mean(x: Tensor, mask: Tensor, num_tokens: Optional[float] = None) -> Tensor:
    """Sum of x over unmasked tokens / their count (or `num_tokens`, e.g. the whole step's count).

    Masked values never enter the sum; an all-masked input gives 0, not NaN.
    """
    denom = mask.sum() if num_tokens is None else torch.as_tensor(float(num_tokens), device=x.device)
    return torch.where(mask.bool(), x, torch.zeros_like(x)).sum() / denom.clamp(min=1)


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    num_tokens: Optional[float] = None,
    is_weights: Optional[Tensor] = None,
) -> Tuple[Tensor, Dict[str, float]]:
    """PPO/GRPO clipped surrogate, token-level mean, each token's term × `is_weights` when given
    (`truncated_is_weights`); metrics policy_loss, clip_fraction, ratio_mean."""
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be [B]={tuple(logprobs.shape[:1])}, got {tuple(advantages.shape)}")
    mask = mask.float()
    ratio = torch.exp(logprobs.float() - old_logprobs.detach().float())
    adv = advantages.detach().float().unsqueeze(1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    # PPO clipped objective (Schulman et al. 2017, eq. 7), as used by GRPO: -min(ratio·A, clip(ratio)·A).
    surrogate = -torch.min(unclipped, clipped)
    if is_weights is not None:
        surrogate = is_weights.detach() * surrogate
    loss = masked_mean(surrogate, mask, num_tokens)
    with torch.no_grad():
        metrics = {
            "policy_loss": masked_mean(surrogate, mask).item(),
            # tokens where the clip bounds the objective (their gradient is 0)
            "clip_fraction": masked_mean((clipped < unclipped).float(), mask).item(),
            "ratio_mean": masked_mean(ratio, mask).item(),
        }
    return loss, metrics


def truncated_is_weights(old_logprobs: Tensor, behaviour_logprobs: Tensor, cap: float) -> Tensor:
    """Per-token weight of a token sampled by the behaviour policy μ (the engine, possibly some
    versions back) for the learner's policy π_old."""
    # Truncated importance sampling (IMPALA, Espeholt et al. 2018): w = min(π_old / μ, C).
    return torch.clamp(torch.exp(old_logprobs.detach().float() - behaviour_logprobs.float()), max=cap)


def logprob_gap(logprobs: Tensor, behaviour_logprobs: Tensor, mask: Tensor) -> Dict[str, float]:
    """Mean and max over unmasked tokens of |learner - engine| log-prob of the same sampled token."""
    gap = (logprobs.detach().float() - behaviour_logprobs.float()).abs()
    on = mask.bool()
    return {"engine_logprob_diff": masked_mean(gap, mask).item(),
            "engine_logprob_diff_max": gap[on].max().item() if on.any() else 0.0}


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens (Schulman, 'Approximating KL')."""
    log_ratio = ref_logprobs.detach().float() - logprobs.float()
    if estimator == "k1":
        # k1 = log p - log p_ref
        return -log_ratio
    if estimator == "k3":
        # k3 = p_ref/p - log(p_ref/p) - 1  (>= 0, unbiased; GRPO eq. 4)
        return torch.exp(log_ratio) - log_ratio - 1
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {', '.join(KL_ESTIMATORS)}")


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Per-token entropy of softmax(logits) over the last (vocabulary) dimension."""
    logits = logits.float()
    # H = -sum p log p = logsumexp(z) - sum p z
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(dim=-1)


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    ref_logprobs: Optional[Tensor],
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    kl_beta: float,
    kl_estimator: str,
    entropy_coef: float = 0.0,
    entropy: Optional[Tensor] = None,
    num_tokens: Optional[float] = None,
    is_weights: Optional[Tensor] = None,
) -> Tuple[Tensor, Dict[str, float]]:
    """policy_loss (× `is_weights` per token when given) + kl_beta·KL - entropy_coef·entropy, each a
    token-level mean.

    `entropy` is per token (entropy_from_logits); needed when entropy_coef != 0. `num_tokens`
    replaces the local token count as denominator (for a mean over a whole step's micro-batches).
    Metrics: policy_loss, clip_fraction, ratio_mean, kl (when ref_logprobs is given), entropy (when
    given); each a mean over this call's unmasked tokens.
    """
    if kl_beta != 0 and ref_logprobs is None:
        raise ValueError(f"kl_beta={kl_beta} needs ref_logprobs (the frozen reference's log-probs)")
    if entropy_coef != 0 and entropy is None:
        raise ValueError(f"entropy_coef={entropy_coef} needs the per-token entropy")
    mask = mask.float()
    pg_loss, metrics = policy_loss(logprobs, old_logprobs, advantages, mask, clip_eps, num_tokens, is_weights)
    loss = pg_loss
    if ref_logprobs is not None:
        kl = kl_penalty(logprobs, ref_logprobs, kl_estimator)
        # GRPO objective (DeepSeekMath eq. 3): surrogate - beta·KL, i.e. loss + beta·KL.
        loss = loss + kl_beta * masked_mean(kl, mask, num_tokens)
        metrics["kl"] = masked_mean(kl.detach(), mask).item()
    if entropy is not None:
        # Entropy bonus: loss - c·H.
        loss = loss - entropy_coef * masked_mean(entropy, mask, num_tokens)
        metrics["entropy"] = masked_mean(entropy.detach(), mask).item()
    return loss, metrics


def sft_loss(logprobs: Tensor, weights: Tensor, normaliser: Optional[float] = None) -> Tuple[Tensor, Dict[str, float]]:
    """Supervised fine-tuning loss: weighted token-level cross-entropy mean.

    `logprobs` [B, T] are log p(token | prefix) of the target tokens; `weights` [B, T] are 0 where a
    token is not trained (prompt, padding). `normaliser` replaces the local weight sum (the whole
    step's, so that micro-batches and ranks add up to one mean). Metrics over this call: loss (the
    weighted mean), nll (the plain mean over tokens of weight > 0).
    """
    w = weights.float()
    nll = torch.where(w > 0, -logprobs.float(), torch.zeros_like(w))
    denom = float(w.sum()) if normaliser is None else float(normaliser)
    # Weighted cross-entropy: sum_t w_t · (-log p(x_t | x_<t)) / sum_t w_t.
    loss = (w * nll).sum() / (denom if denom > 0 else 1.0)
    with torch.no_grad():
        w_sum = float(w.sum())
        metrics = {"loss": float((w * nll).sum()) / w_sum if w_sum > 0 else 0.0,
                   "nll": masked_mean(nll, (w > 0).float()).item()}
    return loss, metrics
