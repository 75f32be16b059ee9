"""What every actor does first: its thread budget."""

from __future__ import annotations

import math
import os
from typing import Optional


def set_threads(num_cpus: float, override: Optional[int] = None) -> int:
    """torch/OMP threads for this actor: the override, else its whole CPUs (at least 1)."""
    import torch

    n = override or max(1, math.floor(num_cpus))
    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    return n
