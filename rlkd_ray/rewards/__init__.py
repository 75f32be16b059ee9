"""Rule rewards (accuracy, format, tag count), custom rewards and the weighted total."""

from rlkd_ray.rewards.registry import (
    RewardError,
    RuleRewards,
    call_custom,
    load_custom,
    rule_components,
    total_reward,
)
from rlkd_ray.rewards.rules import (
    Accuracy,
    accuracy_reward,
    extract_answer,
    format_reward,
    tag_count_reward,
)

__all__ = [
    "Accuracy",
    "RewardError",
    "RuleRewards",
    "accuracy_reward",
    "call_custom",
    "extract_answer",
    "format_reward",
    "load_custom",
    "rule_components",
    "tag_count_reward",
    "total_reward",
]
