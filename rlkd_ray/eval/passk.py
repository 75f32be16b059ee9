"""pass@k: the unbiased estimator of Chen et al. (2021) and percentile-bootstrap intervals over problems."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n samples (c of
    them correct) is correct."""
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    # Chen et al. 2021, eq. 1: 1 - C(n-c, k) / C(n, k), as the stable product 1 - prod_{i=n-c+1}^{n} (1 - k/i).
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def default_ks(n: int) -> List[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
    return ks if ks[-1] == n else ks + [n]


def bootstrap_ci(values: Sequence[float], confidence: float = 0.95, resamples: int = 1000,
                 seed: int = 0) -> Tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-problem `values` (problems resampled with
    replacement)."""
    if len(values) == 0:
        raise ValueError("bootstrap_ci: no values")
    if not 0 < confidence < 1 or resamples < 1:
        raise ValueError(f"bootstrap_ci: need 0 < confidence < 1 and resamples >= 1, got {confidence}, {resamples}")
    x = np.asarray(values, dtype=np.float64)
    rows = np.random.default_rng(seed).integers(0, len(x), size=(resamples, len(x)))
    means = x[rows].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


@dataclass
class Interval:
    estimate: float  # mean over problems of the per-problem pass@k
    low: float
    high: float


def pass_at_k_table(counts: Sequence[Tuple[int, int]], ks: Sequence[int], confidence: float = 0.95,
                    resamples: int = 1000, seed: int = 0) -> Dict[int, Interval]:
    """pass@k with its interval for each k, from (n, c) per problem."""
    out = {}
    for k in ks:
        per_problem = [pass_at_k(n, c, k) for n, c in counts]
        low, high = bootstrap_ci(per_problem, confidence, resamples, seed)
        out[k] = Interval(float(np.mean(per_problem)), low, high)
    return out
