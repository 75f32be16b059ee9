"""The DeepSpeed learner through real Ray actors: a 2-rank step equals a 1-rank step on the same
batch (the loss is a token-level mean over the global batch whatever the world size)."""

import random

import pytest
import torch

from rlkd_ray.config import load_config
from rlkd_ray.controller.batching import build_batch, micro_batches, shard
from rlkd_ray.controller.samples import Problem, PromptGroup, Sample
from rlkd_ray.learner.policy import first_scored_position, lr_lambda, shared_prompt_logprobs, token_logprobs


def make_groups(model_path, n_groups=2, group_size=4, seed=0):
    """Prompt groups with random completions of different lengths; behaviour log-probs from the
    model itself, so the first ratio is 1."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    rng = random.Random(seed)
    groups = []
    for g in range(n_groups):
        prompt = [rng.randrange(5, 1000) for _ in range(rng.randrange(3, 8))]
        samples = []
        for _ in range(group_size):
            tokens = [rng.randrange(5, 1000) for _ in range(rng.randrange(2, 9))]
            ids = torch.tensor([prompt + tokens])
            with torch.no_grad():
                logp, _ = token_logprobs(model, ids, torch.ones_like(ids), temperature=0.7)
            s = Sample(tokens, logp[0, len(prompt):].tolist(), "", "stop", version=0)
            s.advantage = rng.uniform(-1.5, 1.5)
            samples.append(s)
        groups.append(PromptGroup(f"g{g}", 0, Problem(str(g), "p", "1"), prompt, seed, samples))
    return groups


def test_batch_layout(tiny_model_path):
    groups = make_groups(tiny_model_path)
    batch = build_batch(groups, pad_id=0)
    assert len(batch) == 8
    assert batch.num_tokens == sum(len(s.token_ids) for g in groups for s in g.samples)
    row, g, s = 5, groups[1], groups[1].samples[1]
    p = len(g.prompt_ids)
    assert batch.input_ids[row, :p].tolist() == g.prompt_ids
    assert batch.input_ids[row, p : p + len(s.token_ids)].tolist() == s.token_ids
    assert batch.loss_mask[row].sum() == len(s.token_ids)
    assert torch.allclose(batch.behaviour_logprobs[row, p : p + len(s.token_ids)], torch.tensor(s.logprobs))
    halves = [shard(batch, r, 2) for r in range(2)]
    assert sorted(len(h) for h in halves) == [4, 4]
    assert all(h.num_tokens == batch.num_tokens for h in halves)
    mbs = list(micro_batches(halves[0], 3))
    assert [len(m) for m in mbs] == [3, 1]
    assert sum(m.loss_mask.sum() for m in mbs) == halves[0].loss_mask.sum()


def test_prompt_positions_are_skipped_with_the_same_scored_logprobs_and_gradients(tiny_model_path):
    """The learner computes logits only from the first completion token on (`first`): the scored
    log-probs, entropies and the gradient of a masked loss equal those of the full computation."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    batch = build_batch(make_groups(tiny_model_path, group_size=3), pad_id=0)
    first = first_scored_position(batch.loss_mask)
    assert 1 < first == min(int(row.nonzero()[0]) for row in batch.loss_mask)
    mask = batch.loss_mask.float()
    results = []
    for f in (1, first):
        model.zero_grad()
        logp, entropy = token_logprobs(model, batch.input_ids, batch.attention_mask, 0.7, with_entropy=True,
                                       entropy_grad=True, chunk_tokens=5, first=f)
        assert logp.shape == entropy.shape == batch.input_ids.shape
        ((logp + 0.1 * entropy) * mask).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((logp.detach(), entropy.detach(), grads))
    (full_logp, full_ent, full_grad), (logp, ent, grad) = results
    assert torch.equal(logp[:, :first], torch.zeros_like(logp[:, :first]))
    torch.testing.assert_close(logp[:, first:], full_logp[:, first:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent[:, first:], full_ent[:, first:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, full_grad, rtol=1e-4, atol=1e-5)
    assert first_scored_position(torch.zeros(2, 7)) == 7  # nothing scored: nothing computed


def test_shared_prompt_pass_gives_the_same_logprobs_entropies_and_gradients(tiny_model_path):
    """Each distinct prompt run once, its keys and values repeated for its rows: the scored log-probs,
    entropies and the gradient of a masked loss equal those of whole rows. The rows of two groups
    (prompts of different lengths) are interleaved, as a strided data-parallel shard leaves them, and
    one row scores nothing."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32)
    batch = build_batch(make_groups(tiny_model_path, group_size=3), pad_id=0)
    batch = batch.rows([0, 3, 1, 4, 2, 5])
    batch.loss_mask[3] = 0
    mask = batch.loss_mask
    results = []
    for shared in (False, True):
        model.zero_grad()
        if shared:
            logp, entropy = shared_prompt_logprobs(model, batch.input_ids, batch.attention_mask, batch.loss_mask, 0.7,
                                                   with_entropy=True, entropy_grad=True, chunk_tokens=5)
        else:
            logp, entropy = token_logprobs(model, batch.input_ids, batch.attention_mask, 0.7, with_entropy=True,
                                           entropy_grad=True, chunk_tokens=5)
        assert logp.shape == entropy.shape == batch.input_ids.shape
        ((logp + 0.1 * entropy) * mask).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((logp.detach(), entropy.detach(), grads))
    (full_logp, full_ent, full_grad), (logp, ent, grad) = results
    assert torch.equal(logp * (1 - mask), torch.zeros_like(logp))  # zeros outside the completions
    torch.testing.assert_close(logp * mask, full_logp * mask, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent * mask, full_ent * mask, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, full_grad, rtol=1e-4, atol=1e-5)


def test_lr_schedule_warmup_then_constant():
    f = lr_lambda(total_steps=100, warmup_ratio=0.1, schedule="constant_with_warmup")
    assert f(0) == 0.0 and f(1) == pytest.approx(1 / 10) and f(9) == pytest.approx(9 / 10)  # s/w, as transformers
    assert f(10) == 1.0 and f(99) == 1.0
    c = lr_lambda(total_steps=100, warmup_ratio=0.0, schedule="cosine")
    assert c(0) == 1.0 and c(50) == pytest.approx(0.5) and c(100) == pytest.approx(0.0)


def learner_args(model_path, world_size, zero_stage=0):
    return [
        f"model.student={model_path}", "model.dtype=float32", f"learner.world_size={world_size}",
        "learner.num_cpus=0.5", "learner.num_gpus=0", "learner.micro_batch_size=2",
        f"learner.zero_stage={zero_stage}", "learner.optim.lr=1e-3", "learner.optim.warmup_ratio=0",
        "learner.optim.grad_clip=1.0", "trainer.prompts_per_step=2", "rollout.group_size=4",
        "algo.kl_beta=0.04",
    ]


@pytest.fixture
def one_rank(monkeypatch):
    """The environment of rank 0 of a one-rank world, for a DeepSpeedPolicy in this process."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)).items():
        monkeypatch.setenv(k, v)


def step_metrics(model_path, batch, *overrides):
    from rlkd_ray.controller.pools import LearnerGroup
    from rlkd_ray.learner.policy import DeepSpeedPolicy

    learner = DeepSpeedPolicy(load_config(None, [*learner_args(model_path, 1), *overrides]), model_path)
    return LearnerGroup.reduce_metrics([learner.train_step(batch)])


def test_ratio_is_against_the_learner_not_the_engine(one_rank, tiny_model_path):
    """The engine's log-probs differ from the learner's by 1 nat on every token (more than the clip
    range): the ratio is still exactly 1 (old = the learner's own log-probs, detached, as in the
    paper's code), no token loses its gradient to the clip, and the gap is logged. With algo.tis or
    stale rollouts the engine's log-probs enter as truncated importance weights min(e^1, 2) = 2."""
    groups = make_groups(tiny_model_path)
    for g in groups:
        for s in g.samples:
            s.logprobs = [lp - 1.0 for lp in s.logprobs]
    batch = build_batch(groups, pad_id=0)
    m = step_metrics(tiny_model_path, batch)
    assert m["ratio_mean"] == 1.0 and m["clip_fraction"] == 0.0
    assert m["engine_logprob_diff"] == pytest.approx(1.0, abs=1e-4)
    assert m["engine_logprob_diff_max"] == pytest.approx(1.0, abs=1e-4)
    for option in ("algo.tis=true", "trainer.max_staleness=1"):
        weighted = step_metrics(tiny_model_path, batch, option, "algo.tis_cap=2.0")
        assert weighted["ratio_mean"] == 1.0
        assert weighted["policy_loss"] == pytest.approx(2 * m["policy_loss"], rel=1e-5), option


def one_step(cfg, batch):
    import ray

    from actors.learner import LearnerWorker
    from rlkd_ray.controller.pools import LearnerGroup

    group = LearnerGroup(LearnerWorker, cfg)
    try:
        metrics = group.reduce_metrics(ray.get(group.train_step(batch)))
        weights = ray.get(group.publish_weights()[0])
    finally:
        group.shutdown()
    return metrics, weights


@pytest.mark.slow
def test_two_ranks_equal_one_rank(ray_cluster, tiny_model_path):
    from transformers import AutoModelForCausalLM

    batch = build_batch(make_groups(tiny_model_path), pad_id=0)
    # Adam's first step is lr·g/(|g|+eps): with the default eps (1e-8) float-order noise in gradients near
    # zero moved a few weights by up to 29 % of a step (lr = 1e-3) once the two ranks' prompt passes
    # summed the same gradients in another order (grad norms equal to 1.5e-7). eps = 1e-4 keeps those
    # steps linear in g, and the weights equal to 4e-7.
    eps = "learner.optim.eps=1e-4"
    m1, w1 = one_step(load_config(None, learner_args(tiny_model_path, 1) + [eps]), batch)
    m2, w2 = one_step(load_config(None, learner_args(tiny_model_path, 2) + [eps]), batch)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path).state_dict()
    moved = max((w1[k] - initial[k]).abs().max().item() for k in initial)
    assert moved > 1e-4, "the step did not change the weights"
    for k in w1:  # bound: 0.2 % of one step
        torch.testing.assert_close(w2[k], w1[k], atol=2e-6, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    for k in ("policy_loss", "kl", "clip_fraction", "entropy", "ratio_mean"):
        assert m2[k] == pytest.approx(m1[k], rel=1e-4, abs=1e-6), k
    assert m1["ratio_mean"] == pytest.approx(1.0, abs=1e-4)  # behaviour log-probs came from this model
    assert m1["grad_norm"] > 0 and m1["grad_norm"] == pytest.approx(m2["grad_norm"], rel=1e-4)
    assert m1["tokens"] == m2["tokens"] == batch.num_tokens
