"""Group-relative advantages: one scalar per completion from the rewards of its prompt's group."""

from __future__ import annotations

from torch import Tensor

ESTIMATORS = ("grpo", "dr_grpo", "rloo")


def group_advantages(rewards: Tensor, estimator: str = "grpo", eps: float = 1e-4) -> Tensor:
    """Advantages of `rewards` [num_groups, G] (G completions of one prompt per row), same shape.

    grpo uses the sample standard deviation (Bessel-corrected, as in Open-R1/TRL, the recipe the
    paper follows). A group of equal rewards gets advantage exactly 0.
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [num_groups, G], got shape {tuple(rewards.shape)}")
    group_size = rewards.shape[1]
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    if estimator in ("grpo", "rloo") and group_size < 2:
        raise ValueError(f"{estimator} advantages need a group size >= 2, got {group_size}")
    rewards = rewards.float()
    mean = rewards.mean(dim=1, keepdim=True)
    if estimator == "grpo":
        # GRPO (DeepSeekMath eq. 3 with the std floor of docs/design.md): (r - mean) / (std + eps).
        return (rewards - mean) / (rewards.std(dim=1, keepdim=True) + eps)
    if estimator == "dr_grpo":
        # Dr. GRPO (Liu et al. 2025): r - mean, no std normalisation.
        return rewards - mean
    # RLOO (Ahmadian et al. 2024): r_i - mean of the other G-1 rewards.
    return rewards - (rewards.sum(dim=1, keepdim=True) - rewards) / (group_size - 1)
