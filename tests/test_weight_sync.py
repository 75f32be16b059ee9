"""The GPU weight-sync path: bucket planning, packing and unpacking of a real state dict, manifest
checks, and the whole protocol between two processes over a gloo group (NCCL on the GPU test)."""

from __future__ import annotations

import io
import multiprocessing as mp
import socket

import pytest
import torch

from rlkd_ray.weight_sync.protocol import (
    ALIGN,
    Assembler,
    Bucket,
    ManifestMismatch,
    Slot,
    SyncGroup,
    TensorSpec,
    WeightSyncError,
    check_manifest,
    decode_manifest,
    encode_manifest,
    manifest_from_checkpoint,
    manifest_of,
    pack_bucket,
    plan_buckets,
    receive,
    send,
    unique_tensors,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_state(model_path: str) -> dict:
    """The tiny model's state dict (lm_head tied to the embedding) plus tensors of other dtypes,
    a 0-d tensor, a non-contiguous one and an empty one."""
    from transformers import AutoModelForCausalLM

    state = dict(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).state_dict())
    g = torch.Generator().manual_seed(1)
    state["extra.bf16"] = torch.randn(7, 3, generator=g).to(torch.bfloat16)
    state["extra.int64"] = torch.arange(5, dtype=torch.int64)
    state["extra.scalar"] = torch.tensor(2.5, dtype=torch.float16)
    state["extra.transposed"] = torch.randn(4, 6, generator=g).t()
    state["extra.empty"] = torch.zeros(0, 3)
    return state


def round_trip(weights: dict, bucket_bytes: int, device: str) -> dict:
    manifest = manifest_of(weights)
    plan = plan_buckets(manifest, bucket_bytes)
    tensors = list(weights.values())
    buffer = torch.empty(max(b.nbytes for b in plan), dtype=torch.uint8, device=device)
    assembler = Assembler(manifest, torch.device(device))
    out = {}
    for bucket in plan:
        flat = pack_bucket(bucket, tensors, buffer).clone()  # the receiver owns its buffer
        for name, t in assembler.unpack(bucket, flat):
            assert name not in out
            out[name] = t
    return out


def test_plan_hand_example():
    manifest = [TensorSpec("a", (3,), "float32"), TensorSpec("b", (10,), "bfloat16"), TensorSpec("c", (2, 2), "float32")]
    assert [s.nbytes for s in manifest] == [12, 20, 16]
    # a at 0; b at the next 16-byte boundary, 16 of its 20 bytes fit; the rest of b opens bucket 2; c at 16.
    assert plan_buckets(manifest, 32) == [
        Bucket((Slot(0, 0, 12, 0), Slot(1, 0, 16, 16)), 32),
        Bucket((Slot(1, 16, 4, 0), Slot(2, 0, 16, 16)), 32),
    ]
    assert plan_buckets(manifest, 1024) == [Bucket((Slot(0, 0, 12, 0), Slot(1, 0, 20, 16), Slot(2, 0, 16, 48)), 64)]
    with pytest.raises(ValueError, match="below the 16 B alignment"):
        plan_buckets(manifest, 8)


def test_plan_within_budget_and_covers_every_byte(tiny_model_path):
    weights = unique_tensors(tiny_state(tiny_model_path))
    manifest = manifest_of(weights)
    budget = 1 << 20
    plan = plan_buckets(manifest, budget)
    assert all(0 < b.nbytes <= budget for b in plan)
    assert all(b.nbytes > budget - ALIGN for b in plan[:-1])  # greedy: only alignment gaps stay empty
    assert len(plan) == -(-sum(b.nbytes for b in plan) // budget)
    covered = {i: 0 for i in range(len(manifest))}
    for b in plan:
        ends = [(s.offset, s.offset + s.length) for s in b.slots]
        assert all(o % ALIGN == 0 for o, _ in ends)
        assert all(e1 <= o2 for (_, e1), (o2, _) in zip(ends, ends[1:]))  # no overlap
        for s in b.slots:
            assert s.start == covered[s.index]  # each tensor's bytes arrive in order
            covered[s.index] += s.length
    assert covered == {i: s.nbytes for i, s in enumerate(manifest)}
    embed = manifest[0]  # 49152 x hidden float32: a whole number k of MiB, filling the first k buckets
    assert embed.name == "model.embed_tokens.weight" and embed.nbytes % budget == 0
    k = embed.nbytes // budget
    assert [i for i, b in enumerate(plan) if any(s.index == 0 for s in b.slots)] == list(range(k))
    assert plan[k].slots[0] == Slot(1, 0, manifest[1].nbytes, 0)


def test_pack_unpack_round_trip_of_a_real_state_dict(tiny_model_path):
    state = tiny_state(tiny_model_path)
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()  # tied
    weights = unique_tensors(state)
    assert "lm_head.weight" not in weights and "model.embed_tokens.weight" in weights
    assert len(weights) == len(state) - 1
    extras = {n: t for n, t in weights.items() if n.startswith("extra.")}
    for subset, budget in ((weights, 1 << 20), (weights, 1 << 16), (extras, 32)):
        out = round_trip(subset, budget, "cpu")
        assert list(out) == list(subset)
        for name, t in subset.items():
            assert out[name].dtype == t.dtype and out[name].shape == t.shape, name
            assert torch.equal(out[name], t), name


def test_manifest_checks_name_every_difference():
    expected = [TensorSpec("w", (4, 2), "bfloat16"), TensorSpec("b", (4,), "bfloat16"), TensorSpec("gone", (1,), "bfloat16")]
    got = [TensorSpec("w", (2, 4), "bfloat16"), TensorSpec("b", (4,), "float32"), TensorSpec("new", (1,), "bfloat16")]
    with pytest.raises(ManifestMismatch) as e:
        check_manifest(expected, got)
    msg = str(e.value)
    assert "missing ['gone']" in msg and "unexpected ['new']" in msg
    assert "'w' has shape [2, 4], expected [4, 2]" in msg
    assert "'b' has dtype float32, expected bfloat16" in msg
    check_manifest(expected, list(reversed(expected)))  # order does not matter
    assert decode_manifest(encode_manifest(got)) == got


def test_manifest_from_checkpoint_matches_the_models_unique_tensors(tiny_model_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.bfloat16)
    check_manifest(manifest_from_checkpoint(tiny_model_path, "bfloat16"), manifest_of(unique_tensors(model.state_dict())))
    with pytest.raises(ManifestMismatch, match="has dtype bfloat16, expected float32"):
        check_manifest(manifest_from_checkpoint(tiny_model_path, "float32"), manifest_of(unique_tensors(model.state_dict())))


# -- the protocol between two processes ----------------------------------------------------------
def _receiver(port: int, expected, results) -> None:
    """Rank 1: five syncs in a row; reports each outcome (the tensors, or the error)."""
    group = SyncGroup("127.0.0.1", port, rank=1, world_size=2, device=torch.device("cpu"), timeout_s=60)
    version = 0
    for i in range(5):
        got = {}

        def load(tensors, got=got, i=i):
            for name, t in tensors:
                got[name] = t.clone()
                if i == 3:
                    raise RuntimeError("loader failed")

        try:
            version = receive(group, expected, version, load)
            buf = io.BytesIO()
            torch.save(got, buf)  # bytes: a tensor in a queue would be shared by a descriptor of this process
            results.put(("ok", version, buf.getvalue()))
        except Exception as e:  # noqa: BLE001 - the parent asserts on the type and message
            results.put(("error", type(e).__name__, str(e)))
    group.close()


def test_sync_protocol_between_two_processes(tiny_model_path):
    weights = unique_tensors(tiny_state(tiny_model_path))
    expected = manifest_of(weights)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    child = ctx.Process(target=_receiver, args=(port, expected, results), daemon=True)
    child.start()
    try:
        group = SyncGroup("127.0.0.1", port, rank=0, world_size=2, device=torch.device("cpu"), timeout_s=60)
        budget = 1 << 20

        stats = send(group, 3, weights, budget)  # 1. accepted
        assert (stats.version, stats.tensors) == (3, len(weights))
        kind, version, got = results.get(timeout=120)
        assert (kind, version) == ("ok", 3)
        got = torch.load(io.BytesIO(got))
        assert list(got) == list(weights) and all(torch.equal(got[n], t) for n, t in weights.items())

        with pytest.raises(WeightSyncError, match="refused it .its version is older"):  # 2. stale
            send(group, 2, weights, budget)
        assert results.get(timeout=60) == ("error", "WeightSyncError", "rank 1 holds version 3; refusing older version 2")

        changed = dict(weights)  # 3. a tensor missing, one reshaped
        del changed["extra.int64"]
        changed["extra.bf16"] = changed["extra.bf16"].reshape(3, 7)
        with pytest.raises(WeightSyncError, match="manifest mismatch"):
            send(group, 4, changed, budget)
        kind, name, msg = results.get(timeout=60)
        assert (kind, name) == ("error", "ManifestMismatch")
        assert "missing ['extra.int64']" in msg and "'extra.bf16' has shape [3, 7], expected [7, 3]" in msg

        send(group, 4, weights, budget)  # 4. the receiver's loader raises: it still takes every bucket
        assert results.get(timeout=60) == ("error", "RuntimeError", "loader failed")

        newer = {n: t + 1 if t.is_floating_point() else t for n, t in weights.items()}  # 5. the group still works
        send(group, 4, newer, 1 << 18)  # another budget: the receiver plans with the sender's
        kind, version, got = results.get(timeout=120)
        got = torch.load(io.BytesIO(got))
        assert (kind, version) == ("ok", 4) and all(torch.equal(got[n], t) for n, t in newer.items())
        group.close()
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0


@pytest.mark.gpu
def test_cuda_round_trip_and_nccl_send(tiny_model_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    weights = {n: t.to("cuda", torch.bfloat16) for n, t in unique_tensors(tiny_state(tiny_model_path)).items()
               if t.is_floating_point()}
    out = round_trip(weights, 1 << 20, "cuda")
    assert all(out[n].is_cuda and torch.equal(out[n], t) for n, t in weights.items())
    group = SyncGroup("127.0.0.1", free_port(), rank=0, world_size=1, device=torch.device("cuda"), timeout_s=60)
    try:
        stats = send(group, 1, weights, 1 << 20)
    finally:
        group.close()
    assert stats.tensors == len(weights) and stats.bytes >= sum(t.nbytes for t in weights.values())
