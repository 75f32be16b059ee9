"""Engine benchmark: generation tokens/s of vLLM vs transformers on the same prompts and sampling,
and the time of a full weight sync vs a plain memory copy (clone) of the same state dict: an
in-process load (`load_weights`, what each object-store load ends in) and a broadcast over gloo
(`cluster.weight_sync: broadcast` on CPU; a thread plays learner rank 0).

    python benchmarks/engines.py --prompts 8 --n 4 --max-new-tokens 64 --threads 2  # defaults: 4, 4, 32, 1
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402

from rlkd_ray.assets import resolve_model
from rlkd_ray.config import EngineConfig
from rlkd_ray.engines import make_engine
from rlkd_ray.engines.base import Sampling, build_prompt_ids
from rlkd_ray.weight_sync.protocol import SyncGroup, send

QUESTIONS = [
    "What is 17 times 23?",
    "Solve for x: 3x + 7 = 22.",
    "How many positive divisors does 36 have?",
    "What is the sum of the interior angles of a hexagon?",
    "Simplify (x^2 - 9) / (x - 3).",
    "A train travels 120 km in 1.5 hours. What is its average speed?",
    "What is the remainder when 2^10 is divided by 7?",
    "Find the area of a circle with radius 4.",
]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct", help="asset name, folder or hub id")
    p.add_argument("--cache-dir", default="~/.cache/rlkd")
    p.add_argument("--backends", default="hf,vllm", help="comma-separated, timed in this order")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--prompts", type=int, default=4, help="number of prompts (cycled from a fixed list)")
    p.add_argument("--n", type=int, default=4, help="completions per prompt")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward (hf)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--kv-cache-gib", type=float, default=1.0)
    p.add_argument("--syncs", type=int, default=3, help="timed syncs and clones; the median is shown")
    _report.add_output_args(p)
    return p.parse_args()


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def broadcast_seconds(engine, state, repeats: int, bucket_bytes: int = 512 << 20) -> float:
    """Median wall time of one broadcast sync of `state` into `engine`, as its receiver sees it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    def learner_rank0():
        group = SyncGroup("127.0.0.1", port, 0, 2, torch.device("cpu"), timeout_s=600)
        try:
            for i in range(repeats):
                send(group, engine.version + 1 + i, state, bucket_bytes)
        finally:
            group.close()

    sender = threading.Thread(target=learner_rank0)
    sender.start()
    engine.join_weight_sync("127.0.0.1", port, 1, 2, 600)
    try:
        seconds = median_seconds(engine.receive_weights, repeats)
    finally:
        sender.join()
        engine.leave_weight_sync()
    return seconds


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    path = resolve_model(args.model, os.path.expanduser(args.cache_dir))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    prompts = [build_prompt_ids(tokenizer, [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}], 512)
               for i in range(args.prompts)]
    sampling = Sampling(n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=0)
    state = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).state_dict()
    unique = {t.data_ptr(): t for t in state.values()}.values()  # a tied lm_head counts once
    state_mb = sum(t.numel() * t.element_size() for t in unique) / 2**20
    clone_s = median_seconds(lambda: {k: v.clone() for k, v in state.items()}, args.syncs)
    target = {k: v.clone() for k, v in state.items()}  # a copy into memory already touched: no page faults
    copy_s = median_seconds(lambda: [target[k].copy_(v) for k, v in state.items()], args.syncs)

    print(f"model {path} ({args.dtype}, {state_mb:.0f} MiB), {args.prompts} prompts x n={args.n}, "
          f"max_new_tokens={args.max_new_tokens}, T={args.temperature}, {args.threads} threads")
    results = {}
    for backend in args.backends.split(","):
        cfg = EngineConfig(backend=backend, max_model_len=512 + args.max_new_tokens,
                           kv_cache_gib=args.kv_cache_gib, cpu_threads=args.threads,
                           batch_size=args.batch_size)
        start = time.perf_counter()
        engine = make_engine(cfg, path, args.dtype)
        startup = time.perf_counter() - start
        try:
            engine.generate(prompts[:1], Sampling(max_new_tokens=4))  # warm-up
            start = time.perf_counter()
            out = engine.generate(prompts, sampling)
            gen_s = time.perf_counter() - start
            tokens = sum(len(c.token_ids) for group in out for c in group)
            sync_s = median_seconds(lambda engine=engine: engine.load_weights(1, state), args.syncs)
            broadcast_s = broadcast_seconds(engine, state, args.syncs)
        finally:
            engine.close()
        results[backend] = dict(startup=startup, tokens=tokens, gen_s=gen_s, tok_s=tokens / gen_s, sync=sync_s,
                                broadcast=broadcast_s)
        print(f"{backend:>5}: start {startup:6.1f} s | {tokens:5d} tokens in {gen_s:6.1f} s = "
              f"{tokens / gen_s:7.1f} tok/s | weight sync {sync_s:5.2f} s = {sync_s / clone_s:4.1f}x clone | "
              f"broadcast (gloo) sync {broadcast_s:5.2f} s = {broadcast_s / clone_s:4.1f}x clone")
    print(f"state dict ({state_mb:.0f} MiB): clone {clone_s:.2f} s, copy_ into existing tensors {copy_s:.2f} s")
    base = results.get("hf")
    rows = [(b, r["startup"], r["tokens"], r["gen_s"], r["tok_s"],
             None if base is None else f"{r['tok_s'] / base['tok_s']:.2f}x", r["sync"], r["sync"] / clone_s,
             r["broadcast"], r["broadcast"] / clone_s) for b, r in results.items()]
    body = (f"Model {Path(path).name} ({args.dtype}, {state_mb:.0f} MiB), {args.prompts} prompts x n={args.n}, "
            f"up to {args.max_new_tokens} new tokens at T={args.temperature}, {args.threads} thread(s); weight "
            f"syncs: median of {args.syncs}. A clone of the state takes {clone_s:.3g} s, `copy_` into existing "
            f"tensors {copy_s:.3g} s.\n\n"
            + _report.table(["engine", "start s", "tokens", "generate s", "tokens/s", "tokens/s vs hf",
                             "load_weights s", "x clone", "broadcast (gloo) s", "x clone"], rows))
    _report.publish(args, "engines", "Generation and weight sync per engine", body)


if __name__ == "__main__":
    main()
