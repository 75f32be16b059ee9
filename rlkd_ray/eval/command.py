"""`rlkd eval --model PATH --benchmarks math500,gsm8k[,file.jsonl] --n 16 --temperature 0.6 --top-p 0.95`."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from rlkd_ray.config import RLKDConfig, validate_eval


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="model to evaluate: a folder (e.g. a checkpoint's hf/), hub id or packaged "
                                   "name (default: model.student)")
    p.add_argument("--benchmarks", help="comma-separated: math500, gsm8k, PATH[:layout=aime|gpqa|...] "
                                        "(default: data.eval)")
    p.add_argument("--n", type=int, help="samples per problem (default: eval.n)")
    p.add_argument("--temperature", type=float, help="default: eval.temperature")
    p.add_argument("--top-p", type=float, help="default: eval.top_p")
    p.add_argument("--max-new-tokens", type=int, help="default: eval.max_new_tokens, else rollout.max_new_tokens")
    p.add_argument("--limit", type=int, help="evaluate only the first problems of each benchmark")
    p.add_argument("--output", help="eval folder; an eval with the same settings there resumes, one with other settings "
                                   "keeps it and this eval goes to <output>/version_N (default: <paths.run_dir>/eval)")


def cmd_eval(cfg: RLKDConfig, args: argparse.Namespace) -> None:
    from rlkd_ray.eval.results import RESULTS_JSON, RESULTS_MD, markdown_table
    from rlkd_ray.eval.runner import eval_folder, eval_settings, run_eval
    from rlkd_ray.ray_session import ray_session

    flags = {"n": args.n, "temperature": args.temperature, "top_p": args.top_p, "max_new_tokens": args.max_new_tokens}
    cfg.eval = dataclasses.replace(cfg.eval, **{k: v for k, v in flags.items() if v is not None})
    validate_eval(cfg)
    benchmarks = [b for b in (args.benchmarks or ",".join(cfg.data.eval)).split(",") if b.strip()]
    model = args.model or cfg.model.student
    output = eval_folder(Path(args.output or Path(cfg.paths.run_dir) / "eval"), eval_settings(cfg, model))
    with ray_session(cfg):
        results = run_eval(cfg, model, benchmarks, output, limit=args.limit)
    print(markdown_table(results))
    print(f"results:     {output / RESULTS_JSON}, {output / RESULTS_MD}")
    print(f"completions: {output / 'completions'}/<benchmark>.jsonl")
