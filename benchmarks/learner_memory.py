"""Peak memory of one learner micro-batch on CPU: the policy's forward + backward of the GRPO terms
(sampled-token log-probs, entropy, the frozen reference's log-probs), before and after the chunked
log-probs of rlkd_ray/learner/policy.py. Prints a markdown table for docs/memory.md.

    python benchmarks/learner_memory.py [--cache-dir DIR] [--tokens 1024] [--batch 1]

The peak is the highest net allocation the torch profiler sees during the micro-batch (the weights,
allocated before it, are not counted; the gradients, allocated by it, are). Models:
a 2-layer model with SmolLM2's vocabulary (as tests/conftest.py builds it) and SmolLM2-135M-Instruct,
both float32 on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rlkd_ray.algo.losses import entropy_from_logits  # noqa: E402
from rlkd_ray.learner.policy import token_logprobs  # noqa: E402

TEMPERATURE = 0.7


def before(model, ids, mask):
    """The learner's micro-batch as it was: float32 log-softmax over the whole vocabulary, entropy with
    gradients (kept for backward even when its coefficient is 0)."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float() / TEMPERATURE
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return logp, entropy_from_logits(logits)


def after(model, ids, mask, chunk):
    logp, entropy = token_logprobs(model, ids, mask, TEMPERATURE, with_entropy=True, entropy_grad=False,
                                   chunk_tokens=chunk)
    return logp[:, 1:], entropy[:, 1:]


def micro_batch(model, reference, ids, fn):
    mask = torch.ones_like(ids)
    logp, entropy = fn(model, ids, mask)
    with torch.no_grad():
        ref = fn(reference, ids, mask)[0]
    loss = (logp - ref).square().mean() - 0.0 * entropy.mean()  # every term in the graph, as in grpo_loss
    loss.backward()


def peak_bytes(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    path = tempfile.mktemp(suffix=".json")
    prof.export_chrome_trace(path)
    events = sorted((e for e in json.load(open(path))["traceEvents"] if e.get("name") == "[memory]"),
                    key=lambda e: e["ts"])
    os.remove(path)
    # "Total Allocated" carries over what earlier profiled runs allocated and freed outside a profile
    # (the gradients): the level before this run's first event is the baseline
    base = events[0]["args"]["Total Allocated"] - events[0]["args"]["Bytes"]
    return max(e["args"]["Total Allocated"] for e in events) - base


def measure(name: str, model_dir: str, tokens: int, batch: int, chunk: int) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval().requires_grad_(False)
    vocab = model.config.vocab_size
    ids = torch.randint(5, vocab, (batch, tokens), generator=torch.Generator().manual_seed(0))
    params = sum(p.numel() for p in model.parameters()) * 4
    row = {"model": name, "vocab": vocab, "tokens": batch * tokens, "params_bytes": params}
    for label, fn in (("before", before), ("after", lambda m, i, k: after(m, i, k, chunk))):
        micro_batch(model, reference, ids, fn)  # warm-up; gradients now exist
        model.zero_grad(set_to_none=True)
        row[label] = peak_bytes(lambda fn=fn: micro_batch(model, reference, ids, fn))
        model.zero_grad(set_to_none=True)
    # the full-vocabulary logits of this micro-batch, float32: the unit of the formula in docs/memory.md
    row["logits_bytes"] = batch * tokens * vocab * 4
    return row


def tiny_model(student: str, out: Path) -> str:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(student)
    config.update(dict(num_hidden_layers=2, hidden_size=128, intermediate_size=256, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=32))
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    return str(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default="~/.cache/rlkd")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=256, help="learner.logprob_chunk_tokens for the run")
    args = parser.parse_args()
    from rlkd_ray.assets import resolve_model

    torch.set_num_threads(1)
    student = resolve_model("SmolLM2-135M-Instruct", args.cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure("tiny (2 layers)", tiny_model(student, Path(tmp) / "tiny"), args.tokens, args.batch, args.chunk),
                measure("SmolLM2-135M", student, args.tokens, args.batch, args.chunk)]
    mib = 2**20
    print("| model | tokens x vocab | fp32 logits | peak before | peak after | before / logits | after / logits |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['model']} | {r['tokens']} x {r['vocab']} | {r['logits_bytes'] / mib:.0f} MiB | "
              f"{r['before'] / mib:.0f} MiB | {r['after'] / mib:.0f} MiB | {r['before'] / r['logits_bytes']:.2f} | "
              f"{r['after'] / r['logits_bytes']:.2f} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
