"""One Ray session per command: join the cluster of `ray.address` / $RAY_ADDRESS, else start a
loopback cluster in this process; a cluster started here is shut down when the block ends, and its
processes end with this process however it ends (rlkd_ray/process_guard.py).

    with ray_session(cfg):
        ...  # actors, remote calls
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, Optional

from rlkd_ray.config import RLKDConfig
from rlkd_ray.process_guard import start_guard

# Settings of a loopback cluster started here (never of a cluster we joined); the Makefile exports
# the same for the processes it starts.
LOCAL_RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                 "TOKENIZERS_PARALLELISM": "false"}
LOOPBACK = "127.0.0.1"


def init_ray(cfg: RLKDConfig) -> Optional[int]:
    """Join or start a cluster. When this process starts it (and so shuts it down), returns the pipe
    end that keeps its process guard waiting; None otherwise."""
    import ray

    if ray.is_initialized():
        return None
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return None
    for k, v in LOCAL_RAY_ENV.items():
        os.environ.setdefault(k, v)
    guard = start_guard()
    try:
        # Loopback: the node's address is 127.0.0.1 and no dashboard or job server starts.
        ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False, log_to_driver=True,
                 _node_ip_address=LOOPBACK, runtime_env={"env_vars": {k: os.environ[k] for k in LOCAL_RAY_ENV}})
    except BaseException:
        os.close(guard)
        raise
    return guard


@contextlib.contextmanager
def ray_session(cfg: RLKDConfig) -> Iterator[None]:
    import ray

    guard = init_ray(cfg)
    try:
        yield
    finally:
        if guard is not None:
            ray.shutdown()
            os.close(guard)  # the guard ends what shutdown left, if anything
