"""The learner computes only what the loss needs: sampled-token log-probs by a chunked gather (no
full-vocabulary float32 tensor kept for backward), the entropy without gradients when its
coefficient is 0; ZeRO-3 weights gathered bucket by bucket for the sync; a sharded reference."""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import socket

import pytest
import torch

from rlkd_ray.algo.losses import entropy_from_logits
from rlkd_ray.learner.policy import sampled_logprobs, token_entropy, token_logprobs


def full_logprobs(logits, ids, temperature):
    z = logits[:, :-1].float()
    z = z / temperature if temperature > 0 else z
    return torch.log_softmax(z, -1).gather(-1, ids[:, 1:, None]).squeeze(-1), entropy_from_logits(z)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [0.7, 0.0])
def test_chunked_logprobs_and_entropy_equal_the_full_softmax(dtype, temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 11, 50, generator=g).to(dtype).requires_grad_(True)
    ids = torch.randint(0, 50, (3, 11), generator=g)
    w, v = torch.randn(3, 10, generator=g), torch.randn(3, 10, generator=g)
    want_lp, want_h = full_logprobs(logits, ids, temperature)
    want = torch.autograd.grad((want_lp * w).sum() + (want_h * v).sum(), logits)[0]
    got_lp = sampled_logprobs(logits, ids, temperature, chunk_tokens=4)  # 10 positions: chunks of 4, 4, 2
    got_h = token_entropy(logits, temperature, chunk_tokens=4)
    got = torch.autograd.grad((got_lp * w).sum() + (got_h * v).sum(), logits)[0]
    torch.testing.assert_close(got_lp, want_lp, atol=2e-6, rtol=0)
    torch.testing.assert_close(got_h, want_h, atol=2e-6, rtol=0)
    tol = 2e-6 if dtype == torch.float32 else 1e-2  # the gradient is rounded to the logits' dtype
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=0)


def saved_float32(fn):
    """Shapes of the float32 tensors autograd keeps for backward while `fn` runs."""
    shapes = []

    def pack(t):
        if t.dtype == torch.float32:
            shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, shapes


def test_no_full_vocabulary_float32_tensor_is_kept(tiny_model_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.bfloat16)
    vocab = model.config.vocab_size
    ids = torch.randint(5, vocab, (2, 40), generator=torch.Generator().manual_seed(0))
    (logp, entropy), shapes = saved_float32(lambda: token_logprobs(
        model, ids, torch.ones_like(ids), 0.7, with_entropy=True, entropy_grad=False, chunk_tokens=16))
    assert logp.requires_grad and not entropy.requires_grad  # entropy coefficient 0: no graph for it
    assert not [s for s in shapes if s and s[-1] == vocab], shapes
    # the old way keeps several [B, L-1, V] float32 tensors (log-softmax output, softmax, logits / T)
    _, old = saved_float32(lambda: full_logprobs(model(input_ids=ids).logits, ids, 0.7))
    assert len([s for s in old if s[-1] == vocab]) >= 2
    # with an entropy bonus the entropy has gradients, still recomputed chunk by chunk
    (_, entropy), shapes = saved_float32(lambda: token_logprobs(
        model, ids, torch.ones_like(ids), 0.7, with_entropy=True, entropy_grad=True, chunk_tokens=16))
    assert entropy.requires_grad and not [s for s in shapes if s and s[-1] == vocab], shapes


# -- ZeRO-3 on one CPU rank (gloo), in a child process of its own ---------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _zero3_rank(path: str, sync_port: int, results) -> None:
    try:
        from rlkd_ray.config import load_config
        from rlkd_ray.controller.batching import build_batch
        from rlkd_ray.learner.policy import DeepSpeedPolicy
        from rlkd_ray.weight_sync.protocol import SyncGroup

        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
        cfg = load_config(None, [
            f"model.student={path}", "model.dtype=float32", "learner.num_gpus=0", "learner.zero_stage=3",
            "learner.micro_batch_size=2", "trainer.prompts_per_step=2", "rollout.group_size=4",
            "cluster.bucket_mb=1", "learner.reference_memory=sharded", "algo.kl_beta=0.04", "learner.optim.warmup_ratio=0"])
        learner = DeepSpeedPolicy(cfg, path)
        weights = learner.gather_weights()  # 1 MiB buckets: the tiny model's ~13 MiB in several gathers
        buf = io.BytesIO()
        torch.save(weights, buf)
        results.put(("gathered", buf.getvalue()))
        from tests.test_learner import make_groups

        metrics = learner.train_step(build_batch(make_groups(path), pad_id=0))
        results.put(("trained", metrics))
        group = SyncGroup("127.0.0.1", sync_port, 0, 2, torch.device("cpu"), timeout_s=120)
        learner.broadcast_weights(group, 1, 1 << 20)
        buf = io.BytesIO()
        torch.save(learner.gather_weights(), buf)
        results.put(("sent", buf.getvalue()))
        group.close()
    except Exception:  # noqa: BLE001 - the parent fails with it
        import traceback

        results.put(("error", traceback.format_exc()))


@pytest.mark.slow
def test_zero3_gathers_bucket_by_bucket_and_trains_with_a_sharded_reference(tiny_model_path):
    from transformers import AutoModelForCausalLM

    from rlkd_ray.weight_sync.protocol import SyncGroup, manifest_of, receive, unique_tensors

    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).state_dict()
    ctx = mp.get_context("spawn")
    results, port = ctx.Queue(), free_port()
    child = ctx.Process(target=_zero3_rank, args=(tiny_model_path, port, results), daemon=True)
    child.start()
    try:
        kind, payload = results.get(timeout=600)
        assert kind == "gathered", payload
        gathered = torch.load(io.BytesIO(payload))
        assert list(gathered) == list(initial) and all(torch.equal(gathered[k], initial[k]) for k in initial)
        kind, metrics = results.get(timeout=600)
        assert kind == "trained", metrics
        assert metrics["kl_sum"] == pytest.approx(0.0, abs=1e-6)  # the first step: policy = reference
        assert metrics["grad_norm"] > 0
        group = SyncGroup("127.0.0.1", port, 1, 2, torch.device("cpu"), timeout_s=120)
        got = {}
        receive(group, manifest_of(unique_tensors(initial)), 0, lambda tensors: got.update(
            (n, t.clone()) for n, t in tensors))
        group.close()
        kind, payload = results.get(timeout=300)
        assert kind == "sent", payload
        trained = torch.load(io.BytesIO(payload))
        assert got.keys() == unique_tensors(initial).keys()
        assert all(torch.equal(got[n], trained[n]) for n in got)
        assert any(not torch.equal(trained[n], initial[n]) for n in got)  # the step moved the weights
    finally:
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
