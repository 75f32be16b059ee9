"""A custom reward for the end-to-end tests (loaded by import path from `reward.custom`)."""


def length_bonus(sample: dict) -> float:
    """Longer completions score higher: gives every group non-zero advantages from step one."""
    return len(sample["completion"]) / 100.0


def not_a_number(sample: dict) -> float:
    """A buggy custom reward: NaN for every sample (the run must stop naming the sample)."""
    return float("nan")
