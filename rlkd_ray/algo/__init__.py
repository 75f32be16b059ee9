"""GRPO math: group-relative advantages and the clipped-ratio loss with a KL penalty."""

from rlkd_ray.algo.advantages import group_advantages
from rlkd_ray.algo.losses import entropy_from_logits, grpo_loss, kl_penalty, masked_mean, policy_loss

__all__ = ["entropy_from_logits", "group_advantages", "grpo_loss", "kl_penalty", "masked_mean", "policy_loss"]
