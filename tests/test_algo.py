"""GRPO advantages and losses against hand-computed values."""

import math

import pytest
import torch

from rlkd_ray.algo import (
    entropy_from_logits,
    group_advantages,
    grpo_loss,
    kl_penalty,
    masked_mean,
    policy_loss,
)
from rlkd_ray.algo.losses import logprob_gap, truncated_is_weights

LN2 = math.log(2.0)


# ---------- advantages ----------


def test_grpo_equal_rewards_give_exact_zero():
    adv = group_advantages(torch.tensor([[3.0, 3.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0]]))
    assert torch.equal(adv, torch.zeros(2, 4))


def test_grpo_known_group():
    # mean 0.25, deviations (.75, -.25, -.25, -.25), sample variance 0.75/3 = 0.25, std 0.5
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), "grpo", eps=1e-4)
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25]]) / 0.5001
    torch.testing.assert_close(adv, expected)


def test_grpo_groups_are_independent():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]]))
    torch.testing.assert_close(adv[0], torch.tensor([0.75, -0.25, -0.25, -0.25]) / 0.5001)
    assert torch.equal(adv[1], torch.zeros(4))


def test_dr_grpo_is_centred_without_std():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0], [4.0, 2.0, 0.0, 2.0]]), "dr_grpo")
    torch.testing.assert_close(adv, torch.tensor([[0.75, -0.25, -0.25, -0.25], [2.0, 0.0, -2.0, 0.0]]))


def test_rloo_subtracts_mean_of_the_others():
    adv = group_advantages(torch.tensor([[4.0, 2.0, 0.0], [1.0, 1.0, 1.0]]), "rloo")
    # 4 - (2+0)/2, 2 - (4+0)/2, 0 - (4+2)/2
    torch.testing.assert_close(adv, torch.tensor([[3.0, 0.0, -3.0], [0.0, 0.0, 0.0]]))


def test_advantage_errors():
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        group_advantages(torch.zeros(1, 4), "ppo")
    with pytest.raises(ValueError, match="group size >= 2"):
        group_advantages(torch.zeros(3, 1), "grpo")
    with pytest.raises(ValueError, match=r"\[num_groups, G\]"):
        group_advantages(torch.zeros(4))


# ---------- policy loss ----------


def test_ratio_one_gives_minus_token_mean_of_advantages():
    logprobs = torch.full((2, 3), -1.0)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    loss, metrics = policy_loss(logprobs, logprobs.clone(), torch.tensor([1.0, -2.0]), mask, clip_eps=0.2)
    # token-level mean: (1 + 1 + 1 - 2) / 4 tokens, negated
    assert loss.item() == pytest.approx(-0.25)
    assert metrics["ratio_mean"] == pytest.approx(1.0)
    assert metrics["clip_fraction"] == 0.0
    assert metrics["policy_loss"] == pytest.approx(-0.25)


def _clip_case():
    # one token per sequence: ratios 1.5, 0.5, 0.5, 1.5 with advantages +1, +1, -1, -1
    logprobs = torch.log(torch.tensor([[1.5], [0.5], [0.5], [1.5]])).requires_grad_()
    return logprobs, torch.zeros(4, 1), torch.tensor([1.0, 1.0, -1.0, -1.0]), torch.ones(4, 1)


def test_clipping_positive_and_negative_advantages():
    logprobs, old, adv, mask = _clip_case()
    loss, metrics = policy_loss(logprobs, old, adv, mask, clip_eps=0.2)
    # per token -min(r·A, clip(r)·A): -1.2 (clipped), -0.5, +0.8 (clipped), +1.5
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 0.8 + 1.5) / 4)
    assert metrics["clip_fraction"] == pytest.approx(0.5)
    assert metrics["ratio_mean"] == pytest.approx(1.0)
    loss.backward()
    # clipped tokens get no gradient; others d(-r·A)/dlogp = -r·A, over 4 tokens
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0], [-0.125], [0.0], [0.375]]))


def test_fully_masked_row_contributes_nothing():
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -0.7]])
    old = torch.tensor([[-1.2, -2.1], [-3.0, 4.0]])
    adv = torch.tensor([0.7, 100.0])
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    full, _ = policy_loss(logprobs, old, adv, mask, clip_eps=0.2)
    alone, _ = policy_loss(logprobs[:1], old[:1], adv[:1], mask[:1], clip_eps=0.2)
    assert full.item() == pytest.approx(alone.item())
    # ratios e^0.2, e^0.1 both clip at 1.2 / stay: -(1.2·0.7 + e^0.1·0.7) / 2
    assert full.item() == pytest.approx(-(1.2 * 0.7 + math.exp(0.1) * 0.7) / 2)


def test_all_masked_batch_gives_zero_loss_and_zero_grad():
    logprobs = torch.randn(3, 5, requires_grad=True)
    old, ref = torch.randn(3, 5), torch.randn(3, 5)
    loss, metrics = grpo_loss(logprobs, old, ref, torch.randn(3), torch.zeros(3, 5),
                              clip_eps=0.2, kl_beta=0.04, kl_estimator="k3")
    assert loss.item() == 0.0
    assert all(math.isfinite(v) for v in metrics.values())
    loss.backward()
    assert torch.equal(logprobs.grad, torch.zeros(3, 5))


def test_advantages_shape_is_checked():
    with pytest.raises(ValueError, match=r"advantages must be \[B\]"):
        policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3), 0.2)


def test_masked_mean_with_external_token_count():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    assert masked_mean(x, mask).item() == pytest.approx(8.0 / 3)
    assert masked_mean(x, mask, num_tokens=8).item() == pytest.approx(1.0)
    assert masked_mean(x, torch.zeros(2, 2)).item() == 0.0


def test_micro_batches_with_step_token_count_sum_to_full_batch_loss():
    torch.manual_seed(0)
    logprobs, old, ref = torch.randn(4, 6), torch.randn(4, 6), torch.randn(4, 6)
    adv = torch.randn(4)
    mask = (torch.rand(4, 6) > 0.3).float()
    kwargs = dict(clip_eps=0.2, kl_beta=0.04, kl_estimator="k3")
    full, _ = grpo_loss(logprobs, old, ref, adv, mask, **kwargs)
    n = mask.sum().item()
    parts = [grpo_loss(logprobs[s], old[s], ref[s], adv[s], mask[s], num_tokens=n, **kwargs)[0]
             for s in (slice(0, 2), slice(2, 4))]
    assert (parts[0] + parts[1]).item() == pytest.approx(full.item(), rel=1e-5)


# ---------- KL and entropy ----------


def test_kl_estimators_on_hand_values():
    logprobs = torch.log(torch.tensor([[0.5, 0.3, 0.25]]))
    ref = torch.log(torch.tensor([[0.25, 0.3, 0.5]]))
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k1"), torch.tensor([[LN2, 0.0, -LN2]]))
    # k3 = p_ref/p - log(p_ref/p) - 1
    torch.testing.assert_close(kl_penalty(logprobs, ref, "k3"),
                               torch.tensor([[0.5 + LN2 - 1, 0.0, 2 - LN2 - 1]]))


def test_k3_is_non_negative():
    torch.manual_seed(1)
    k3 = kl_penalty(torch.randn(64, 32) * 3, torch.randn(64, 32) * 3, "k3")
    assert (k3 >= 0).all()


def test_unknown_kl_estimator():
    with pytest.raises(ValueError, match="unknown KL estimator 'k2'"):
        kl_penalty(torch.zeros(1, 1), torch.zeros(1, 1), "k2")


def test_entropy_from_logits():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(3.0), -1e4, -1e4]]])
    # uniform over 4 -> ln 4; p = (1/4, 3/4) -> -(1/4 ln 1/4 + 3/4 ln 3/4)
    expected = torch.tensor([[math.log(4.0), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]])
    torch.testing.assert_close(entropy_from_logits(logits), expected)


# ---------- full GRPO loss ----------


def test_grpo_loss_hand_value_and_metrics():
    logprobs = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    ref = torch.log(torch.tensor([[0.25, 0.25], [0.5, 0.5]]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([2.0, -1.0])
    loss, metrics = grpo_loss(logprobs, logprobs.clone(), ref, adv, mask,
                              clip_eps=0.2, kl_beta=0.1, kl_estimator="k3")
    k3 = 0.5 + LN2 - 1  # first row's tokens; second row's k3 is 0
    policy = -(2 + 2 - 1) / 3
    kl = 2 * k3 / 3
    assert loss.item() == pytest.approx(policy + 0.1 * kl)
    assert metrics["policy_loss"] == pytest.approx(policy)
    assert metrics["kl"] == pytest.approx(kl)
    assert metrics["clip_fraction"] == 0.0
    assert metrics["ratio_mean"] == pytest.approx(1.0)


def test_grpo_loss_entropy_bonus():
    logprobs = torch.zeros(1, 2)
    entropy = torch.tensor([[1.0, 3.0]])
    loss, metrics = grpo_loss(logprobs, logprobs, None, torch.tensor([0.0]), torch.ones(1, 2), clip_eps=0.2,
                              kl_beta=0.0, kl_estimator="k3", entropy_coef=0.01, entropy=entropy)
    assert loss.item() == pytest.approx(-0.01 * 2.0)
    assert metrics["entropy"] == pytest.approx(2.0)
    assert "kl" not in metrics


def test_grpo_loss_missing_inputs_are_errors():
    t = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="kl_beta=0.04 needs ref_logprobs"):
        grpo_loss(t, t, None, torch.zeros(1), torch.ones(1, 2), 0.2, 0.04, "k3")
    with pytest.raises(ValueError, match="entropy_coef=0.1 needs the per-token entropy"):
        grpo_loss(t, t, t, torch.zeros(1), torch.ones(1, 2), 0.2, 0.04, "k3", entropy_coef=0.1)


def test_gradient_flows_only_through_logprobs():
    torch.manual_seed(2)
    logprobs = torch.randn(2, 3, requires_grad=True)
    old = torch.randn(2, 3, requires_grad=True)
    ref = torch.randn(2, 3, requires_grad=True)
    adv = torch.randn(2, requires_grad=True)
    loss, _ = grpo_loss(logprobs, old, ref, adv, torch.ones(2, 3),
                        clip_eps=0.2, kl_beta=0.04, kl_estimator="k3")
    loss.backward()
    assert logprobs.grad is not None and logprobs.grad.abs().sum() > 0
    assert old.grad is None and ref.grad is None and adv.grad is None


def test_k3_gradient_matches_hand_derivative():
    # d/dlogp [e^(ref-logp) - (ref-logp) - 1] = 1 - e^(ref-logp); with ratio 1 and A = 0 only KL remains
    logprobs = torch.log(torch.tensor([[0.5]])).requires_grad_()
    ref = torch.log(torch.tensor([[0.25]]))
    loss, _ = grpo_loss(logprobs, logprobs.detach(), ref, torch.zeros(1), torch.ones(1, 1),
                        clip_eps=0.2, kl_beta=0.5, kl_estimator="k3")
    loss.backward()
    assert logprobs.grad.item() == pytest.approx(0.5 * (1 - 0.5))


def test_truncated_is_weights_and_the_logprob_gap():
    """w = min(π_old/μ, C): the engine's μ below the learner's π_old weighs a token up to C."""
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5, 0.5]]))
    engine = torch.log(torch.tensor([[0.5, 0.25, 0.1, 0.9]]))
    w = truncated_is_weights(old, engine, cap=2.0)
    torch.testing.assert_close(w, torch.tensor([[1.0, 2.0, 2.0, 0.5 / 0.9]]))
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    gap = logprob_gap(old, engine, mask)
    assert gap["engine_logprob_diff_max"] == pytest.approx(LN2)  # the masked token's ln 5 does not count
    assert gap["engine_logprob_diff"] == pytest.approx((0 + LN2 + math.log(0.9 / 0.5)) / 3)
    logprobs = old.clone().requires_grad_(True)
    adv = torch.tensor([1.0])
    weighted, _ = policy_loss(logprobs, old, adv, mask, clip_eps=0.2, is_weights=w)
    plain, _ = policy_loss(logprobs, old, adv, mask, clip_eps=0.2)
    assert weighted.item() == pytest.approx(plain.item() * (1 + 2 + 0.5 / 0.9) / 3)
