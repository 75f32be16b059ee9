"""Checks that run before any actor starts, so that a run that cannot work stops at once with a
message instead of in every actor:

- each engine's context (`<pool>.engine.max_model_len`) against the context its model was built for
  (vLLM refuses a longer one; transformers silently runs past the trained positions), and the rollout
  lengths against the rollout engine's context;
- on a Ray cluster the command joins, paths that every node resolves to the same place: a relative
  path resolves inside each node's private copy of the job's working dir.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

from omegaconf import OmegaConf

from rlkd_ray.config import ConfigError, RLKDConfig

# Config fields holding a model's context length, as vLLM reads them (the smallest one present wins).
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length",
                 "max_seq_length", "seq_len")
# RoPE scalings that stretch the context by their `factor` (vLLM multiplies the derived length by it).
STRETCHING_ROPE = ("linear", "dynamic", "yarn")


def model_context(model_path: str) -> Optional[Tuple[int, str]]:
    """(longest context, where it came from) of the model at `model_path` (a folder or hub id), read
    from its config.json; None when the config names none."""
    from transformers import AutoConfig

    try:
        text = AutoConfig.from_pretrained(model_path).get_text_config()
    except (OSError, ValueError) as e:
        raise ConfigError(f"{model_path}: not a model folder or hub id whose config.json can be read: {e}") from None
    found = [(getattr(text, k), k) for k in POSITION_KEYS if isinstance(getattr(text, k, None), int)]
    if not found:
        return None
    length, key = min(found)
    rope = getattr(text, "rope_scaling", None) or getattr(text, "rope_parameters", None) or {}
    kind = rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else None
    if kind in STRETCHING_ROPE and rope.get("factor"):
        return int(length * rope["factor"]), f"{key}={length} x {kind} rope factor {rope['factor']}"
    return length, f"{key}={length}"


def check_model_lengths(cfg: RLKDConfig) -> None:
    """Every engine's max_model_len fits its model (that a prompt plus a completion fit the rollout
    engine is checked at config load, `config.validate`). Raises ConfigError naming the key, both
    numbers and the model."""
    from rlkd_ray.assets import resolve_model

    models = [("rollout", cfg.model.student)]
    if cfg.reward.runs_gsrm_model():  # the reward pool starts no engine for the rule backend or structure weight 0
        models += [("reward", m) for m in (cfg.model.gsrm, cfg.model.judge) if m]
    for pool, name in models:
        wanted = getattr(cfg, pool).engine.max_model_len
        context = model_context(resolve_model(name, cfg.paths.cache_dir))
        if context is not None and wanted > context[0]:
            raise ConfigError(
                f"{pool}.engine.max_model_len={wanted} is longer than the context of {name} ({context[1]} in its "
                f"config.json): vLLM refuses to start such an engine. Lower {pool}.engine.max_model_len to at most "
                f"{context[0]}" + (" (and rollout.max_new_tokens with it)" if pool == "rollout" else ""))


def joining_cluster(cfg: RLKDConfig) -> Optional[str]:
    """The address of the Ray cluster a command joins (`ray.address`, else $RAY_ADDRESS, which
    `ray job submit` sets); None when it starts its own loopback cluster."""
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    return address if address and address != "local" else None


def check_shared_paths(cfg: RLKDConfig, keys: Iterable[str]) -> None:
    """On a joined cluster, each of the dotted `keys` (paths.run_dir, ...) must be absolute."""
    address = joining_cluster(cfg)
    if address is None:
        return
    node = OmegaConf.structured(cfg)
    relative: List[str] = [f"{k}={OmegaConf.select(node, k)!r}" for k in keys
                           if not Path(OmegaConf.select(node, k)).expanduser().is_absolute()]
    if relative:
        raise ConfigError(
            f"{', '.join(relative)}: relative path on the Ray cluster at {address}. Every node resolves it inside "
            "its own copy of the job's working dir (lost when the job ends; checkpoints written on one node are "
            "missing on the others). Give an absolute path on storage every node mounts, e.g. "
            "paths.run_dir=/data/runs/NAME paths.cache_dir=/data/rlkd")
