"""The training progress bar: step, samples/s, ETA and mean reward."""

from __future__ import annotations

from typing import Dict

from tqdm import tqdm


class StepProgress:
    def __init__(self, total_steps: int, start_step: int, enabled: bool = True):
        self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", disable=not enabled,
                        dynamic_ncols=True)

    def update(self, metrics: Dict[str, float]) -> None:
        self.bar.set_postfix({"reward": f"{metrics.get('reward/total', float('nan')):.2f}",
                              "acc": f"{metrics.get('accuracy', float('nan')):.2f}",
                              "samples/s": f"{metrics.get('samples_per_s', 0.0):.2f}"}, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
