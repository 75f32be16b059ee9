"""Control: a named actor through which a running job's pools are resized (`rlkd scale`)."""

from __future__ import annotations

from typing import Dict

import ray


def control_name(run_dir: str) -> str:
    return f"rlkd-control:{run_dir}"


@ray.remote(num_cpus=0)
class Control:
    def __init__(self, sizes: Dict[str, int]):
        self._sizes = dict(sizes)

    def set_size(self, pool: str, size: int) -> None:
        if pool not in self._sizes:
            raise KeyError(f"unknown pool {pool!r}; pools: {', '.join(self._sizes)}")
        if size < 1:
            raise ValueError(f"{pool} pool size must be >= 1, got {size}")
        self._sizes[pool] = size

    def sizes(self) -> Dict[str, int]:
        return dict(self._sizes)
