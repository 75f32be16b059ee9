"""LearnerWorker: one Ray actor per data-parallel rank, holding that rank's `DeepSpeedPolicy`; the
ranks form one torch.distributed world and the driver holds them as one `LearnerGroup`."""

from __future__ import annotations

import os
import socket
from typing import Dict, List, Optional

import ray

from actors._common import set_threads
from rlkd_ray.assets import resolve_model
from rlkd_ray.config import RLKDConfig
from rlkd_ray.controller.batching import TrainBatch


@ray.remote
class LearnerWorker:
    def __init__(self, cfg: RLKDConfig, rank: int):
        set_threads(cfg.learner.num_cpus, cfg.learner.cpu_threads)
        self.cfg, self.rank = cfg, rank
        self.policy = None
        self.sync_group = None  # rank 0's member of the broadcast weight-sync group

    def address(self) -> tuple:
        """(ip, free port) of this node, for rank 0 to host the rendezvous."""
        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), s.getsockname()[1]

    def setup(self, master_addr: str, master_port: int) -> None:
        from rlkd_ray.learner.policy import DeepSpeedPolicy

        os.environ.update(RANK=str(self.rank), LOCAL_RANK="0", WORLD_SIZE=str(self.cfg.learner.world_size),
                          MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))
        cache = self.cfg.paths.cache_dir
        student = resolve_model(self.cfg.model.student, cache)
        reference = resolve_model(self.cfg.model.reference, cache) if self.cfg.model.reference else None
        self.policy = DeepSpeedPolicy(self.cfg, student, reference)

    def train_step(self, batch: TrainBatch) -> Dict[str, float]:
        return self.policy.train_step(batch)

    def sft_step(self, batch: TrainBatch) -> Dict[str, float]:
        return self.policy.sft_step(batch)

    def publish_weights(self) -> Optional[List[ray.ObjectRef]]:
        """Rank 0 puts the full state dict into the object store once and returns [its reference]."""
        weights = self.policy.gather_weights()
        return None if weights is None else [ray.put(weights)]

    def join_weight_sync(self, host: str, port: int, world_size: int, timeout_s: float) -> None:
        """Rank 0 hosts the broadcast group's rendezvous at host:port and is its rank 0 (the sender)."""
        from rlkd_ray.weight_sync.protocol import SyncGroup

        if self.rank == 0:
            self.sync_group = SyncGroup(host, port, 0, world_size, self.policy.device, timeout_s)

    def broadcast_weights(self, version: int) -> Optional[float]:
        """Collective over the learner ranks (ZeRO-3 gather); rank 0 sends, the engines receive."""
        bucket_bytes = self.cfg.cluster.bucket_mb * 2**20
        return self.policy.broadcast_weights(self.sync_group, version, bucket_bytes)

    def leave_weight_sync(self) -> None:
        group, self.sync_group = self.sync_group, None
        if group is not None:
            group.close()

    def close(self) -> None:
        """Before the actor is killed: leave the weight-sync group."""
        self.leave_weight_sync()

    def save(self, ckpt_dir: str, client_state: dict) -> None:
        self.policy.save(ckpt_dir, client_state)

    def load(self, ckpt_dir: str) -> dict:
        return self.policy.load(ckpt_dir)
