"""One Ray session per command: join the cluster of `ray.address` / $RAY_ADDRESS, else start a
loopback cluster in this process; a cluster started here is shut down when the block ends.

    with ray_session(cfg):
        ...  # actors, remote calls
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

from rlkd_ray.config import RLKDConfig

# Settings of a loopback cluster started here (never of a cluster we joined); the Makefile exports
# the same for the processes it starts.
LOCAL_RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                 "TOKENIZERS_PARALLELISM": "false"}
LOOPBACK = "127.0.0.1"


def init_ray(cfg: RLKDConfig) -> bool:
    """Join or start a cluster. Returns True when this process started it (and so shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return False
    for k, v in LOCAL_RAY_ENV.items():
        os.environ.setdefault(k, v)
    # Loopback: the node's address is 127.0.0.1 and no dashboard or job server starts.
    ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False, log_to_driver=True,
             _node_ip_address=LOOPBACK, runtime_env={"env_vars": {k: os.environ[k] for k in LOCAL_RAY_ENV}})
    return True


@contextlib.contextmanager
def ray_session(cfg: RLKDConfig) -> Iterator[None]:
    import ray

    started_here = init_ray(cfg)
    try:
        yield
    finally:
        if started_here:
            ray.shutdown()
