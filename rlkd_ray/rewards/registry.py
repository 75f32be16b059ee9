"""Reward components of one sample and their weighted total.

A sample is a dict with at least `completion` and `answer` (the gold); the reward worker adds the
`structure` component from the GSRM. Custom rewards from the config are called as fn(sample).
"""

from __future__ import annotations

import importlib
import math
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from rlkd_ray.config import CustomReward, RewardConfig, RewardWeights
from rlkd_ray.rewards.rules import accuracy_reward, format_reward, tag_count_reward

Components = Dict[str, Optional[float]]
CustomFn = Callable[[dict], float]

BUILTIN = ("accuracy", "format", "tag_count", "structure")


def rule_components(sample: Mapping) -> Components:
    """accuracy (None when the gold is unscorable), format and tag_count of one sample."""
    for key in ("completion", "answer"):
        if key not in sample:
            raise KeyError(f"reward sample has no '{key}' field (fields: {sorted(sample)})")
    return {
        "accuracy": accuracy_reward(sample["completion"], sample["answer"]).score,
        "format": format_reward(sample["completion"]),
        "tag_count": tag_count_reward(sample["completion"]),
    }


def load_custom(custom: List[CustomReward]) -> List[Tuple[str, CustomFn, float]]:
    """Import each `reward.custom[i].fn` (`package.module:function`) as (name, fn, weight)."""
    loaded = []
    for i, entry in enumerate(custom):
        where = f"reward.custom[{i}] (name={entry.name!r}, fn={entry.fn!r})"
        if entry.name in BUILTIN or entry.name in (n for n, _, _ in loaded):
            raise ValueError(f"{where}: name {entry.name!r} is already a reward component")
        module_name, sep, attr = entry.fn.partition(":")
        if not sep or not module_name or not attr:
            raise ValueError(f"{where}: fn must be 'package.module:function'")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ImportError(f"{where}: cannot import module {module_name!r}: {e}") from e
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise AttributeError(f"{where}: module {module_name!r} has no callable {attr!r}")
        loaded.append((entry.name, fn, float(entry.weight)))
    return loaded


class RewardError(ValueError):
    """A custom reward function that raised or returned something other than a finite number; the
    message names the reward, its function and the sample."""


def _sample_label(sample: Mapping) -> str:
    sid = sample.get("id")
    return f"sample {sid!r}" + (f" (problem {sample['problem_id']!r})" if "problem_id" in sample else "") \
        if sid is not None else "a sample without an 'id' field"


def call_custom(name: str, fn: CustomFn, sample: dict) -> float:
    """fn(sample), which must return a finite real number; anything else is a RewardError naming the
    sample (`sample['id']`)."""
    where = f"custom reward {name!r} ({fn.__module__}.{fn.__qualname__})"
    try:
        value = fn(sample)
    except Exception as e:
        raise RewardError(f"{where} raised {type(e).__name__}: {e} on {_sample_label(sample)}") from e
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RewardError(f"{where} returned {value!r} for {_sample_label(sample)}; it must return a finite float")
    return float(value)


def total_reward(
    components: Components, weights: RewardWeights, custom_weights: Mapping[str, float]
) -> float:
    """Weighted sum of the components. A None accuracy (unscorable gold) adds 0: the caller counts it.

    A component with weight 0 may be absent (e.g. `structure` in the outcome-only baseline).
    """
    # Paper's total reward: 15·accuracy + 10·format + 10·tag_count + 15·structure (+ custom terms).
    terms = {name: getattr(weights, name) for name in BUILTIN} | dict(custom_weights)
    total = 0.0
    for name, weight in terms.items():
        if weight == 0:
            continue
        if name not in components:
            raise KeyError(
                f"reward component {name!r} (weight {weight}) is missing; got {sorted(components)}"
            )
        value = components[name]
        if value is None and name != "accuracy":
            raise ValueError(f"reward component {name!r} is None; only accuracy may be unscorable")
        total += weight * (value or 0.0)
    return total


class RuleRewards:
    """The rule and custom rewards of one `RewardConfig` (unscorable golds are counted per group by
    `GroupScorer`, as `unscorable_accuracy`)."""

    def __init__(self, cfg: RewardConfig):
        self.weights = cfg.weights
        self.custom = load_custom(cfg.custom)
        self.custom_weights = {name: weight for name, _, weight in self.custom}

    def components(self, sample: dict) -> Components:
        """Rule components plus one entry per custom reward (no `structure`: the GSRM adds it)."""
        out = rule_components(sample)
        for name, fn, _ in self.custom:
            out[name] = call_custom(name, fn, sample)
        return out

    def total(self, components: Components) -> float:
        return total_reward(components, self.weights, self.custom_weights)
