"""One contract suite for every engine backend (transformers, vLLM), on SmolLM2-135M-Instruct in
float32, checked against a plain teacher-forced transformers forward."""

from __future__ import annotations

import os

import psutil
import pytest
import torch

from rlkd_ray.config import EngineConfig
from rlkd_ray.engines import make_engine
from rlkd_ray.engines.base import Sampling, build_prompt_ids

QUESTIONS = ["What is 2+3?", "Name a color.", "Write a haiku about the sea."]
EOS = 2  # <|im_end|>


def backends():
    params = [pytest.param("hf")]
    try:
        import vllm  # noqa: F401

        params.append(pytest.param("vllm"))
    except ImportError:
        params.append(pytest.param("vllm", marks=pytest.mark.skip(reason="vllm is not installed")))
    return params


@pytest.fixture(scope="module")
def reference(student_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(student_path)


@pytest.fixture(scope="module")
def prompts(reference):
    tok = reference[1]
    return [build_prompt_ids(tok, [{"role": "user", "content": q}], 256) for q in QUESTIONS]


@pytest.fixture(scope="module", params=backends())
def engine(request, student_path):
    children, shm = psutil.Process().children(recursive=True), set(os.listdir("/dev/shm"))
    cfg = EngineConfig(backend=request.param, max_model_len=256, kv_cache_gib=0.25, batch_size=8)
    eng = make_engine(cfg, student_path, "float32", seed=0)
    yield eng
    eng.close()
    left = {p.pid for p in psutil.Process().children(recursive=True)} - {p.pid for p in children}
    assert not left, "the engine left processes behind"  # (others, e.g. a session's Ray, may end meanwhile)
    assert set(os.listdir("/dev/shm")) <= shm, "the engine left shared memory behind"


def reference_logprobs(reference, prompt, completion, temperature):
    """log_softmax(logits / T) of each completion token, teacher-forced (T = 0: plain log_softmax)."""
    model = reference[0]
    ids = torch.tensor([list(prompt) + completion.token_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()
    logp = torch.log_softmax(logits / (temperature or 1.0), dim=-1)
    return logp, logp.gather(-1, torch.tensor(completion.token_ids)[:, None]).squeeze(1)


def fingerprint(out):
    """Token ids and log-probs of the first completion of each prompt."""
    return [(group[0].token_ids, group[0].logprobs) for group in out]


GREEDY = Sampling(n=2, temperature=0.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def greedy(engine, prompts):
    return engine.generate(prompts, GREEDY)


def test_greedy_n_per_prompt_in_order_and_reference_argmax(greedy, reference, prompts):
    assert [len(group) for group in greedy] == [2, 2, 2]
    first = greedy[0][0]
    assert first.text == "2 + 3 = 5"  # same text, so same ids, from every backend
    assert first.token_ids[-1] == EOS and first.finish_reason == "stop"
    assert [c.finish_reason for c in (greedy[1][0], greedy[2][0])] == ["length", "length"]
    for prompt, (c, twin) in zip(prompts, greedy):
        assert (twin.token_ids, twin.logprobs, twin.text) == (c.token_ids, c.logprobs, c.text)
        logp, picked = reference_logprobs(reference, prompt, c, 0.0)  # the argmax path of this prompt
        assert c.token_ids == logp.argmax(-1).tolist()
        assert c.logprobs == pytest.approx(picked.tolist(), abs=1e-3)


def test_sampled_logprobs_equal_reference_at_temperature(engine, reference, prompts):
    sampling = Sampling(n=3, temperature=0.7, max_new_tokens=8, seed=3)
    out = engine.generate(prompts[1:], sampling)
    assert [len(group) for group in out] == [3, 3]
    for prompt, group in zip(prompts[1:], out):
        assert len({tuple(c.token_ids) for c in group}) > 1  # the n samples are not copies
        for c in group:
            assert len(c.token_ids) == len(c.logprobs) > 0
            assert max(c.logprobs) <= 0
            _, picked = reference_logprobs(reference, prompt, c, 0.7)
            assert c.logprobs == pytest.approx(picked.tolist(), abs=1e-3)
    seeded = Sampling(n=2, temperature=0.7, max_new_tokens=4, seed=5)
    first, again = engine.generate(prompts[2:], seeded), engine.generate(prompts[2:], seeded)
    assert [c.token_ids for c in first[0]] == [c.token_ids for c in again[0]]


def test_max_new_tokens_cuts_the_greedy_path(engine, greedy, prompts):
    (short,) = engine.generate(prompts[1:2], Sampling(temperature=0.0, max_new_tokens=4))[0]
    assert short.token_ids == greedy[1][0].token_ids[:4] and short.finish_reason == "length"


def test_stop_string_ends_at_the_token_that_completes_it(engine, greedy, reference, prompts):
    tok = reference[1]
    full = greedy[1][0]
    assert full.text.startswith("The color I'm referring to")
    # " referring" is one token: the stop string "refer" completes inside it
    stop = Sampling(temperature=0.0, max_new_tokens=12, stop=["refer", "zzz"])
    (c,) = engine.generate(prompts[1:2], stop)[0]
    assert c.text == "The color I'm refer" and c.finish_reason == "stop"
    assert c.token_ids == full.token_ids[: len(c.token_ids)]
    assert tok.decode(c.token_ids) == "The color I'm referring"


def test_score_choices_equal_reference(engine, reference, prompts):
    model, tok = reference
    scores = engine.score_choices(prompts, ["yes", "no"])
    yes, no = (tok(w, add_special_tokens=False).input_ids[0] for w in ("yes", "no"))
    for prompt, row in zip(prompts, scores):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([prompt])).logits[0, -1].float(), dim=-1)
        assert row == pytest.approx([logp[yes].item(), logp[no].item()], abs=1e-3)
    with pytest.raises(ValueError, match="distinct"):
        engine.score_choices(prompts, ["yes", "yes, indeed"])


def test_too_long_prompt_is_an_error(engine):
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate([[1] * 250], Sampling(max_new_tokens=16))


def test_weight_update_changes_and_restores_outputs(engine, greedy, reference, prompts):
    before = greedy
    original = {k: v.clone() for k, v in reference[0].state_dict().items()}
    perturbed = dict(original)
    # embed_tokens is tied to lm_head: both the inputs and the logits change
    perturbed["model.embed_tokens.weight"] = original["model.embed_tokens.weight"] * 1.5
    perturbed["lm_head.weight"] = perturbed["model.embed_tokens.weight"]
    engine.load_weights(1, perturbed)
    assert engine.version == 1
    changed = engine.generate(prompts, Sampling(temperature=0.0, max_new_tokens=4))
    assert [g[0].token_ids for g in changed] != [g[0].token_ids[:4] for g in before]

    with pytest.raises(ValueError, match="lm_head"):  # tied weights that disagree
        engine.load_weights(9, {**original, "lm_head.weight": perturbed["lm_head.weight"]})
    partial = {k: v for k, v in original.items() if "layers.0.self_attn.k_proj" not in k}
    with pytest.raises(KeyError, match="k_proj"):
        engine.load_weights(9, partial)
    assert engine.version == 1

    engine.load_weights(2, original)
    assert engine.version == 2
    after = engine.generate(prompts, GREEDY)
    assert fingerprint(after) == fingerprint(before)


def test_cpu_core_specs():
    from rlkd_ray.engines.base import parse_cpu_cores, pin_to_cores

    assert parse_cpu_cores("0") == [0]
    assert parse_cpu_cores("3,0-1") == [0, 1, 3]
    with pytest.raises(ValueError, match="x-2"):
        parse_cpu_cores("x-2")
    with pytest.raises(ValueError, match="this machine has cores"):
        pin_to_cores(str(os.cpu_count()))


def test_pin_to_cores_binds_every_thread():
    """Threads started before and after the binding are bound; the binding is undone at the end."""
    import threading

    from rlkd_ray.engines.base import pin_to_cores

    original = sorted(os.sched_getaffinity(0))
    done = threading.Event()
    before = threading.Thread(target=done.wait)
    before.start()
    try:
        assert pin_to_cores(str(original[-1])) == [original[-1]]
        after = threading.Thread(target=done.wait)
        after.start()
        tids = os.listdir("/proc/self/task")
        assert {c for tid in tids for c in os.sched_getaffinity(int(tid))} == {original[-1]}
    finally:
        done.set()
        pin_to_cores(",".join(map(str, original)))
    assert sorted(os.sched_getaffinity(0)) == original


def test_broadcast_weight_sync_loads_what_was_sent(engine, greedy, reference, prompts):
    """`cluster.weight_sync: broadcast` on gloo: a thread plays learner rank 0 and sends perturbed
    weights, then the original ones, then a stale version, which the engine refuses."""
    import socket
    import threading

    from rlkd_ray.weight_sync.protocol import SyncGroup, WeightSyncError, send

    original = reference[0].state_dict()  # lm_head shares the embedding's storage: it travels once
    perturbed = dict(original)
    perturbed["model.embed_tokens.weight"] = original["model.embed_tokens.weight"] * 1.5
    perturbed["lm_head.weight"] = perturbed["model.embed_tokens.weight"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    errors = []

    def learner_rank0():
        group = SyncGroup("127.0.0.1", port, 0, 2, torch.device("cpu"), timeout_s=120)
        try:
            send(group, 10, perturbed, bucket_bytes=8 << 20)
            send(group, 11, original, bucket_bytes=8 << 20)
            send(group, 5, original, bucket_bytes=8 << 20)
        except WeightSyncError as e:
            errors.append(str(e))
        finally:
            group.close()

    sender = threading.Thread(target=learner_rank0)
    sender.start()
    try:
        assert engine.sync_ranks == 1
        engine.join_weight_sync("127.0.0.1", port, 1, 2, 120)
        assert engine.receive_weights() == 10 and engine.version == 10
        changed = engine.generate(prompts, Sampling(temperature=0.0, max_new_tokens=4))
        assert [g[0].token_ids for g in changed] != [g[0].token_ids[:4] for g in greedy]
        assert engine.receive_weights() == 11
        assert fingerprint(engine.generate(prompts, GREEDY)) == fingerprint(greedy)
        with pytest.raises(WeightSyncError, match="holds version 11; refusing older version 5"):
            engine.receive_weights()
        assert engine.version == 11
    finally:
        sender.join(timeout=120)
        engine.leave_weight_sync()
    assert errors and "refused" in errors[0]


def test_vllm_cpu_seeded_sampling_over_many_prompts(engine, prompts, reference):
    """Seeded sampling of more prompt tokens than one scheduler step holds: vLLM-CPU would prefill a
    request in parts and then fail to rewind its generator ("CPU Generator does not use offset"). The
    engine sends each sample as its own request with the seed vLLM gives it: the same completions as
    one request with n samples."""
    if not getattr(engine, "cpu", False):
        pytest.skip("the vLLM-CPU path")
    from vllm.inputs import TokensPrompt

    tok = reference[1]
    sampling = Sampling(n=2, temperature=1.0, max_new_tokens=4, seed=7)
    one = len(build_prompt_ids(tok, [{"role": "user", "content": "0: " + "count the waves " * 40}], 250))
    long = [build_prompt_ids(tok, [{"role": "user", "content": f"{i}: " + "count the waves " * 40}], 250)
            for i in range(engine.step_tokens // (one * sampling.n) + 2)]
    assert sum(map(len, long)) * sampling.n > engine.step_tokens
    many = engine.generate(long, sampling)
    assert [len(g) for g in many] == [2] * len(long)
    # against one request with n samples per prompt (few prompts: prefilled in one step)
    few = engine.generate(prompts, sampling)
    seeds = [sampling.seed + i * sampling.n for i in range(len(prompts))]
    direct = engine.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
                                 [engine._params(sampling, s) for s in seeds], use_tqdm=False)
    assert [[c.token_ids for c in g] for g in few] == [[list(c.token_ids) for c in out.outputs] for out in direct]
