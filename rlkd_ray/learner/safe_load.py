"""DeepSpeed checkpoints read without unpickling code.

DeepSpeed's own checkpoint engine calls `torch.load(..., weights_only=False)`, which runs whatever a
pickled object asks for; a checkpoint folder is a path the user passes (`paths.run_dir` on resume).
`WeightsOnlyCheckpointEngine` reads the same files with `weights_only=True`: tensors, numbers,
strings, plain containers and a few plain-data DeepSpeed classes only. A file that holds anything
else is refused and named.
"""

from __future__ import annotations

import pickle

import torch
from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine


class UnsafeCheckpoint(RuntimeError):
    """A checkpoint file that holds pickled objects beyond tensors and plain containers."""


def _deepspeed_state_classes() -> list:
    """The plain-data classes of DeepSpeed's ZeRO optimizer states (the loss scaler, the stage enum,
    the slice address of each parameter), rebuilt from their fields: nothing of theirs runs while loading."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
    def load(self, path: str, map_location=None):
        try:
            with torch.serialization.safe_globals(_deepspeed_state_classes()):
                return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:
            lines = [line.strip() for line in str(e).split("\n") if "Unsupported global" in line]
            reason = lines[0].split(" was not")[0] if lines else type(e).__name__
            raise UnsafeCheckpoint(f"{path}: refused, it holds pickled objects other than tensors and plain "
                                   f"containers (loaded with weights_only=True): {reason}") from None


def use_weights_only_loads(engine) -> None:
    """Swap the DeepSpeed engine's checkpoint engine for the weights-only one (same file layout)."""
    if type(engine.checkpoint_engine) is not TorchCheckpointEngine:
        raise TypeError(f"expected DeepSpeed's {TorchCheckpointEngine.__name__}, got "
                        f"{type(engine.checkpoint_engine).__name__}; its loads are not known to be weights-only")
    engine.checkpoint_engine = WeightsOnlyCheckpointEngine(engine._config)
