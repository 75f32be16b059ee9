"""GPU weight sync: learner rank 0 broadcasts the whole student to every engine worker over one
collective group, in buckets of a fixed byte budget, version and manifest checked on both ends.

One sync, called by every member of the group at the same time (rank 0 sends, all others receive):

1. header: rank 0 broadcasts (version, bucket budget, manifest length) and then the manifest, the
   names, shapes and dtypes of the tensors in send order, as JSON bytes;
2. verdict: each member checks the header (a receiver: the version is not older than its own and the
   manifest equals what its model expects) and the group all-reduces the largest status code; any
   non-zero code makes every member raise before a byte of weights moves, so a rejection never
   leaves a member waiting on a broadcast;
3. buckets: both ends derive the same plan from the manifest (`plan_buckets`, a pure function); each
   bucket is one flat uint8 buffer of at most the budget, one broadcast each. A tensor larger than the
   budget spans several buckets; the receiver hands each tensor to its loader once its last byte came.

The group is a torch.distributed backend on its own TCP store (`SyncGroup`): it is neither the default
process group of the learner's DeepSpeed world nor vLLM's tensor-parallel group, so it can span both.
NCCL on CUDA devices, gloo on CPU (where the protocol is tested).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

ALIGN = 16  # byte alignment of every tensor inside a bucket, so a uint8 slice views as any dtype
OK, STALE_VERSION, MANIFEST_MISMATCH = 0, 1, 2
REASONS = {STALE_VERSION: "its version is older than the receiver's", MANIFEST_MISMATCH: "manifest mismatch"}


class WeightSyncError(RuntimeError):
    """A sync that cannot go on; the message says which member and why."""


class ManifestMismatch(WeightSyncError):
    """The sender's tensors differ from the receiver's model (names, shapes or dtypes)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: Tuple[int, ...]
    dtype: str  # torch dtype name without the "torch." prefix, e.g. "bfloat16"

    @property
    def torch_dtype(self) -> torch.dtype:
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"tensor '{self.name}': {self.dtype!r} is not a torch dtype")
        return dtype

    @property
    def nbytes(self) -> int:
        numel = 1
        for d in self.shape:
            numel *= d
        return numel * self.torch_dtype.itemsize


@dataclass(frozen=True)
class Slot:
    """Bytes [start, start + length) of tensor `index` of the manifest, at `offset` in its bucket."""

    index: int
    start: int
    length: int
    offset: int


@dataclass(frozen=True)
class Bucket:
    slots: Tuple[Slot, ...]
    nbytes: int  # size of the flat buffer


# -- manifests -------------------------------------------------------------------------------------
def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def alias_key(t: torch.Tensor) -> tuple:
    """Equal for two names of one tensor (tied weights, e.g. lm_head = embed_tokens)."""
    return t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype


def unique_tensors(weights: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The state dict without names that alias an earlier tensor (a tied lm_head travels once, under
    the embedding's name, as in a saved checkpoint)."""
    seen = set()
    out = {}
    for name, t in weights.items():
        key = alias_key(t)
        if key not in seen:
            seen.add(key)
            out[name] = t
    return out


def manifest_of(weights: Mapping[str, torch.Tensor]) -> List[TensorSpec]:
    return [TensorSpec(n, tuple(t.shape), dtype_name(t.dtype)) for n, t in weights.items()]


def manifest_from_checkpoint(model_path: str, dtype: str) -> List[TensorSpec]:
    """Names and shapes stored in the safetensors files of a model folder, at the engine's dtype: what
    a vLLM worker loads (its own parameters are fused, the checkpoint's names are what it takes)."""
    from pathlib import Path

    from safetensors import safe_open

    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors file in {model_path}")
    specs = []
    for f in files:
        with safe_open(str(f), framework="pt") as fh:
            specs.extend(TensorSpec(n, tuple(fh.get_slice(n).get_shape()), dtype) for n in fh.keys())
    return specs


def check_manifest(expected: Sequence[TensorSpec], got: Sequence[TensorSpec]) -> None:
    """Raise `ManifestMismatch` naming every missing, unexpected, reshaped or retyped tensor."""
    want = {s.name: s for s in expected}
    have = {s.name: s for s in got}
    problems = []
    missing = [n for n in want if n not in have]
    unexpected = [n for n in have if n not in want]
    if missing:
        problems.append(f"missing {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected {_few(unexpected)}")
    for n in want.keys() & have.keys():
        w, h = want[n], have[n]
        if w.shape != h.shape:
            problems.append(f"'{n}' has shape {list(h.shape)}, expected {list(w.shape)}")
        if w.dtype != h.dtype:
            problems.append(f"'{n}' has dtype {h.dtype}, expected {w.dtype}")
    if problems:
        raise ManifestMismatch("weights do not match the model: " + "; ".join(sorted(problems)))


def _few(names: List[str], k: int = 5) -> str:
    more = f" and {len(names) - k} more" if len(names) > k else ""
    return str(sorted(names)[:k]) + more


def encode_manifest(manifest: Sequence[TensorSpec]) -> bytes:
    return json.dumps([[s.name, list(s.shape), s.dtype] for s in manifest]).encode()


def decode_manifest(data: bytes) -> List[TensorSpec]:
    return [TensorSpec(n, tuple(shape), dtype) for n, shape, dtype in json.loads(data.decode())]


# -- buckets ---------------------------------------------------------------------------------------
def plan_buckets(manifest: Sequence[TensorSpec], bucket_bytes: int) -> List[Bucket]:
    """Tensors in manifest order, packed greedily into buckets of at most `bucket_bytes`; each tensor
    starts at an ALIGN-ed offset; one larger than the room left is split across buckets."""
    if bucket_bytes < ALIGN:
        raise ValueError(f"bucket budget {bucket_bytes} B is below the {ALIGN} B alignment")
    buckets: List[Bucket] = []
    slots: List[Slot] = []
    used = 0
    for index, spec in enumerate(manifest):
        start, size = 0, spec.nbytes
        while True:
            offset = -(-used // ALIGN) * ALIGN
            if offset >= bucket_bytes:  # no room left: close the bucket
                buckets.append(Bucket(tuple(slots), used))
                slots, used, offset = [], 0, 0
            length = min(size - start, bucket_bytes - offset)
            slots.append(Slot(index, start, length, offset))
            used = offset + length
            start += length
            if start == size:
                break
            buckets.append(Bucket(tuple(slots), used))
            slots, used = [], 0
    if slots:
        buckets.append(Bucket(tuple(slots), used))
    return buckets


def tensor_bytes(t: torch.Tensor) -> torch.Tensor:
    """The bytes of a tensor as a flat uint8 view (a contiguous copy first if needed)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def pack_bucket(bucket: Bucket, tensors: Sequence[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """Copy the bucket's slices of `tensors` (manifest order) into `out[:bucket.nbytes]`; returns that."""
    flat = out[: bucket.nbytes]
    for s in bucket.slots:
        flat[s.offset : s.offset + s.length].copy_(tensor_bytes(tensors[s.index])[s.start : s.start + s.length])
    return flat


class Assembler:
    """Receiver side: turns the flat buffers of the plan's buckets, in order, into named tensors."""

    def __init__(self, manifest: Sequence[TensorSpec], device: torch.device):
        self.manifest = manifest
        self.device = device
        self.partial: Dict[int, Tuple[torch.Tensor, int]] = {}  # index -> (tensor, bytes received)

    def unpack(self, bucket: Bucket, flat: torch.Tensor) -> Iterator[Tuple[str, torch.Tensor]]:
        """The tensors whose last byte is in this bucket. A tensor wholly inside it is a view of `flat`."""
        for s in bucket.slots:
            spec = self.manifest[s.index]
            piece = flat[s.offset : s.offset + s.length]
            if s.start == 0 and s.length == spec.nbytes:
                yield spec.name, piece.view(spec.torch_dtype).view(spec.shape)
                continue
            if s.start == 0:
                self.partial[s.index] = (torch.empty(spec.shape, dtype=spec.torch_dtype, device=self.device), 0)
            t, got = self.partial[s.index]
            if got != s.start:
                raise WeightSyncError(f"tensor '{spec.name}': bytes from {s.start} arrived after only {got}")
            tensor_bytes(t)[s.start : s.start + s.length].copy_(piece)
            got += s.length
            if got == spec.nbytes:
                del self.partial[s.index]
                yield spec.name, t
            else:
                self.partial[s.index] = (t, got)


# -- the group -------------------------------------------------------------------------------------
class SyncGroup:
    """One member of the weight-sync group: rank 0 (the sender) hosts the TCP store, the others join."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, device: torch.device,
                 timeout_s: float = 600.0):
        timeout = timedelta(seconds=timeout_s)
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout,
                                   wait_for_workers=False)
        if self.device.type == "cuda":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.backend = dist.ProcessGroupNCCL(self.store, rank, world_size, options)
        else:
            self.backend = dist.ProcessGroupGloo(self.store, rank, world_size, timeout)

    def broadcast(self, tensor: torch.Tensor) -> None:
        """From rank 0 into `tensor` on every member."""
        options = dist.BroadcastOptions()
        options.rootRank, options.rootTensor = 0, 0
        self.backend.broadcast([tensor], options).wait()

    def max(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        options = dist.AllreduceOptions()
        options.reduceOp = dist.ReduceOp.MAX
        self.backend.allreduce([t], options).wait()
        return int(t.item())

    def close(self) -> None:
        self.backend.shutdown()
        self.backend = None
        self.store = None


def _send_header(group: SyncGroup, version: int, bucket_bytes: int, manifest: Sequence[TensorSpec]) -> None:
    data = encode_manifest(manifest)
    group.broadcast(torch.tensor([version, bucket_bytes, len(data)], dtype=torch.int64, device=group.device))
    group.broadcast(torch.frombuffer(bytearray(data), dtype=torch.uint8).to(group.device))


def _receive_header(group: SyncGroup) -> Tuple[int, int, List[TensorSpec]]:
    head = torch.zeros(3, dtype=torch.int64, device=group.device)
    group.broadcast(head)
    version, bucket_bytes, size = head.tolist()
    data = torch.empty(size, dtype=torch.uint8, device=group.device)
    group.broadcast(data)
    return version, bucket_bytes, decode_manifest(data.cpu().numpy().tobytes())


@dataclass
class SyncStats:
    version: int
    tensors: int
    buckets: int
    bytes: int
    seconds: float


def send(group: SyncGroup, version: int, weights: Mapping[str, torch.Tensor], bucket_bytes: int) -> SyncStats:
    """Rank 0: broadcast `weights` (tied names once) as `version`; raises if any receiver refused it."""
    start = time.perf_counter()
    weights = unique_tensors(weights)
    manifest = manifest_of(weights)
    plan = offer(group, version, manifest, bucket_bytes)
    tensors = list(weights.values())
    buffer = torch.empty(max(b.nbytes for b in plan), dtype=torch.uint8, device=group.device)
    for bucket in plan:
        group.broadcast(pack_bucket(bucket, tensors, buffer))
    return finish(group, version, manifest, plan, start)


def offer(group: SyncGroup, version: int, manifest: Sequence[TensorSpec], bucket_bytes: int) -> List[Bucket]:
    """Rank 0's header and the group's verdict; returns the bucket plan, whose buffers rank 0 then
    broadcasts in order (`send` does all of it; a sender that fills each bucket itself, e.g. from
    ZeRO-3 shards gathered bucket by bucket, calls this, broadcasts, then `finish`)."""
    if group.rank != 0:
        raise WeightSyncError(f"send is rank 0's part; this member is rank {group.rank}")
    if not manifest:
        raise WeightSyncError(f"weight sync of version {version}: no tensors to send")
    plan = plan_buckets(manifest, bucket_bytes)
    _send_header(group, version, bucket_bytes, manifest)
    verdict = group.max(OK)
    if verdict != OK:
        raise WeightSyncError(f"weight sync of version {version}: a receiver refused it "
                              f"({REASONS[verdict]}; its own error names the tensors)")
    return plan


def finish(group: SyncGroup, version: int, manifest: Sequence[TensorSpec], plan: Sequence[Bucket],
           start: float) -> SyncStats:
    if group.device.type == "cuda":
        torch.cuda.current_stream(group.device).synchronize()
    return SyncStats(version, len(manifest), len(plan), sum(b.nbytes for b in plan), time.perf_counter() - start)


def receive(group: SyncGroup, expected: Sequence[TensorSpec], current_version: int,
            load: Callable[[Iterator[Tuple[str, torch.Tensor]]], None]) -> int:
    """A receiver's part of one sync: check the header, then hand the tensors, as they arrive, to
    `load` (e.g. vLLM's `reload_weights(weights_iterator=...)`). Returns the version received."""
    if group.rank == 0:
        raise WeightSyncError("receive is the part of ranks >= 1; rank 0 sends")
    version, bucket_bytes, manifest = _receive_header(group)
    error: Optional[WeightSyncError] = None
    status = OK
    if version < current_version:
        status = STALE_VERSION
        error = WeightSyncError(f"rank {group.rank} holds version {current_version}; refusing older version {version}")
    else:
        try:
            check_manifest(expected, manifest)
        except ManifestMismatch as e:
            status, error = MANIFEST_MISMATCH, ManifestMismatch(f"rank {group.rank}, version {version}: {e}")
    if group.max(status) != OK:
        raise error or WeightSyncError(f"rank {group.rank}: another receiver refused version {version}")
    tensors = _arrivals(group, manifest, plan_buckets(manifest, bucket_bytes))
    try:
        load(tensors)
    finally:  # this member must take part in every broadcast, whatever the loader read or raised
        left = sum(1 for _ in tensors)
    if left:
        raise WeightSyncError(f"rank {group.rank}: the loader left {left} tensors of version {version} unread")
    return version


def _arrivals(group: SyncGroup, manifest: Sequence[TensorSpec], plan: Sequence[Bucket]):
    assembler = Assembler(manifest, group.device)
    for bucket in plan:
        flat = torch.empty(bucket.nbytes, dtype=torch.uint8, device=group.device)
        group.broadcast(flat)
        yield from assembler.unpack(bucket, flat)
