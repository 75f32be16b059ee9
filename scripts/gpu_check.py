"""A short check of the GPU paths on one GPU: one PASS or FAIL line per check, with timings.

    python scripts/gpu_check.py [--model-config DIR] [--steps 3] [--cpu-dry-run]

1. the transformers engine on cuda: sampled generation (G per prompt), a greedy completion whose
   behaviour log-probs must equal a full forward pass, and score_choices against the same forward;
2. the DeepSpeed learner (one rank, NCCL, bf16): a few GRPO steps on a batch the engine generated;
3. weights learner -> engine: gather_weights -> load_weights (the object-store path), and the NCCL
   path's pieces: buckets packed and unpacked on CUDA, then a one-rank NCCL `SyncGroup` send, also
   through `DeepSpeedPolicy.broadcast_weights` (two NCCL ranks cannot share one GPU: the receiving end
   is tested on CPU over gloo).

The student is SmolLM2-135M built from its config (no weights file needed) with random weights.
`--cpu-dry-run` runs the same checks on CPU (gloo instead of NCCL) to test this script where no GPU
is. Exit status 1 when any check failed.
"""

from __future__ import annotations

import argparse
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-config", default=str(REPO / ".gpuwheels" / "smollm2-config"),
                        help="folder with SmolLM2-135M's config.json and tokenizer files")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--cpu-dry-run", action="store_true", help="run the checks on CPU (tests this script)")
    args = parser.parse_args()
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
    if torch.distributed.is_initialized():  # the learner's one-rank world
        torch.distributed.destroy_process_group()
    peak = torch.cuda.max_memory_allocated() / 2**30 if DEVICE.type == "cuda" else float("nan")
    print(f"{sum(RESULTS)}/{len(RESULTS)} checks passed in {time.perf_counter() - start:.1f} s; "
          f"peak GPU memory {peak:.2f} GiB")
    return 0 if all(RESULTS) else 1


if __name__ == "__main__":
    sys.exit(main())
