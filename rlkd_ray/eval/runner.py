"""`run_eval`: n completions per problem through RolloutWorker actors, each scored, saved as it
arrives (so a stopped eval resumes where it stopped), summarised as pass@k with intervals.

The workers are either created for the eval from a copy of the config whose `model.student` is
the evaluated model, or the rollout pool of a running training (its workers hold the weights to
evaluate). Several problems go into one `generate_with` call, so engines batch across problems.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from ray.exceptions import RayActorError
from tqdm import tqdm

from rlkd_ray.assets import resolve_model
from rlkd_ray.config import PromptExample, RLKDConfig
from rlkd_ray.controller.placement import start_engine_actor
from rlkd_ray.controller.pools import ActorPool
from rlkd_ray.controller.prompt_source import chat_messages, student_tokenizer
from rlkd_ray.engines.base import Completion, PromptTooLong, Sampling, build_prompt_ids
from rlkd_ray.eval.benchmarks import Benchmark, EvalProblem, load_benchmark, parse_benchmark_spec
from rlkd_ray.eval.passk import default_ks
from rlkd_ray.eval.results import COMPLETIONS, RESULTS_JSON, SETTINGS_JSON, read_results, summarise, write_results

Chunk = List[Tuple[EvalProblem, List[int]]]  # problems of one generate call, with their prompt ids


@dataclass(frozen=True)
class EvalSettings:
    """Everything that decides the completions; a resumed eval must match it."""

    model: str
    n: int
    temperature: float
    top_p: float
    top_k: int
    max_new_tokens: int
    max_prompt_tokens: int
    system_prompt: str
    examples: List[List[str]]  # worked examples as [problem, solution] chat turns
    seed: int


class EvalError(RuntimeError):
    """An eval that cannot run as asked; the message says what to change."""


def eval_settings(cfg: RLKDConfig, model: str) -> EvalSettings:
    e, r = cfg.eval, cfg.rollout
    return EvalSettings(model=model, n=e.n, temperature=e.temperature, top_p=e.top_p, top_k=r.top_k,
                        max_new_tokens=e.max_new_tokens or r.max_new_tokens, max_prompt_tokens=r.max_prompt_tokens,
                        system_prompt=r.system_prompt,
                        examples=[[x.problem, x.solution] for x in r.examples], seed=cfg.trainer.seed)


def eval_config(cfg: RLKDConfig, model: str) -> RLKDConfig:
    """A copy of `cfg` whose rollout workers load `model` (a folder, hub id or packaged name)."""
    out = copy.deepcopy(cfg)
    out.model.student = model
    return out


def check_settings(folder: Path, settings: EvalSettings) -> None:
    """Record the settings of a new eval folder; refuse to resume one made with other settings."""
    path = folder / SETTINGS_JSON
    if not path.is_file():
        path.write_text(json.dumps(asdict(settings), indent=1) + "\n")
        return
    saved = json.loads(path.read_text())
    diff = [f"{k}: {saved.get(k)!r} there, {v!r} now" for k, v in asdict(settings).items() if saved.get(k) != v]
    if diff:
        raise EvalError(f"{folder} holds an eval with other settings ({'; '.join(diff)}); "
                        f"choose another --output folder or delete that one")


def eval_folder(base: Path, settings: EvalSettings) -> Path:
    """The folder of `rlkd eval`: `base` when it is new or holds an eval with the same settings (which
    then resumes), else the first `base/version_N` that is (as rlkd_ray/run_dirs.py does for runs)."""
    for n in itertools.count():
        folder = base / f"version_{n}" if n else base
        path = folder / SETTINGS_JSON
        if not path.is_file() or json.loads(path.read_text()) == asdict(settings):
            if folder != base:
                print(f"[eval] {base} holds an eval with other settings; this one writes to {folder}", flush=True)
            return folder


def read_completed(path: Path) -> Dict[str, Dict[str, Any]]:
    """Problem id -> record of a completions file; a last line cut off by a kill is dropped."""
    if not path.is_file():
        return {}
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
        path.write_text(text)
        print(f"[eval] {path}: dropped an incomplete last line", flush=True)
    return {r["id"]: r for r in map(json.loads, text.splitlines()) if r}


def score_problem(bench: Benchmark, problem: EvalProblem, prompt_ids: List[int],
                  completions: Sequence[Completion]) -> Dict[str, Any]:
    scored = []
    for c in completions:
        acc = bench.score(c.text, problem.answer)
        if acc.score is None:
            raise EvalError(f"{bench.name} problem {problem.id}: gold {problem.answer!r} could not be scored ({acc.reason})")
        scored.append({"text": c.text, "tokens": len(c.token_ids), "finish_reason": c.finish_reason,
                       "score": acc.score, "predicted": acc.predicted, "reason": acc.reason})
    return {"id": problem.id, "problem": problem.problem, "gold": problem.answer, "prompt_tokens": len(prompt_ids),
            "n": len(scored), "correct": int(sum(s["score"] for s in scored)), "completions": scored}


def _call_seed(seed: int, benchmark: str, first_id: str) -> int:
    """The sampling seed of one generate call: fixed by (seed, benchmark, its first problem)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{benchmark}:{first_id}".encode()).digest()[:4], "little")


def _generate(pool: ActorPool, chunks: Sequence[Chunk], sampling: Sampling, benchmark: str
              ) -> Iterator[Tuple[Chunk, List[List[Completion]]]]:
    """Each chunk's completions as soon as they are done; two calls in flight per worker, short
    waits (so that Ctrl-C stops a long eval). A worker that dies stops the eval: a training's rollout
    worker cannot be replaced here (the new one would not hold the weights to evaluate)."""
    calls = []
    for chunk in chunks:
        call = copy.copy(sampling)
        call.seed = _call_seed(sampling.seed, benchmark, chunk[0][0].id)
        calls.append(([ids for _, ids in chunk], call))
    try:
        for index, outputs in pool.map_unordered("generate_with", calls, poll_s=1.0):
            yield chunks[index], outputs
    except RayActorError as e:
        raise EvalError(f"an eval worker died ({e}); finished problems are saved: run the same command "
                        f"again to resume") from e


def evaluate_benchmark(pool: ActorPool, bench: Benchmark, tokenizer, cfg: RLKDConfig, settings: EvalSettings,
                       folder: Path) -> Dict[str, Any]:
    """Generate and score the problems not yet in `completions/<name>.jsonl`; summarise all."""
    path = folder / COMPLETIONS / f"{bench.name}.jsonl"
    done = read_completed(path)
    prompt_limit = min(settings.max_prompt_tokens, cfg.rollout.engine.max_model_len - settings.max_new_tokens)
    if prompt_limit < 1:
        raise EvalError(f"max_new_tokens={settings.max_new_tokens} leaves no room for a prompt in "
                        f"rollout.engine.max_model_len={cfg.rollout.engine.max_model_len}")
    examples = [PromptExample(*x) for x in settings.examples]
    todo: Chunk = []
    too_long = 0
    for p in bench.problems:
        if p.id in done:
            continue
        try:
            messages = chat_messages(settings.system_prompt, p.problem, examples)
            todo.append((p, build_prompt_ids(tokenizer, messages, prompt_limit)))
        except PromptTooLong:
            too_long += 1
    per_call = max(1, cfg.rollout.engine.batch_size // settings.n)
    chunks = [todo[i: i + per_call] for i in range(0, len(todo), per_call)]
    sampling = Sampling(n=settings.n, temperature=settings.temperature, top_p=settings.top_p, top_k=settings.top_k,
                        max_new_tokens=settings.max_new_tokens, stop=list(cfg.rollout.stop), seed=settings.seed,
                        logprobs=False)  # eval needs no behaviour log-probs; vLLM then applies top-p / top-k
    records = {p.id: done[p.id] for p in bench.problems if p.id in done}
    bar = tqdm(total=len(records) + len(todo), initial=len(records), desc=f"eval {bench.name}", unit="problem",
               disable=not cfg.logging.progress, dynamic_ncols=True)
    with path.open("a") as f:
        for chunk, outputs in _generate(pool, chunks, sampling, bench.name):
            for (problem, ids), completions in zip(chunk, outputs):
                record = score_problem(bench, problem, ids, completions)
                f.write(json.dumps(record) + "\n")
                records[problem.id] = record
            f.flush()
            bar.update(len(chunk))
            bar.set_postfix({"pass@1": f"{mean(r['correct'] / r['n'] for r in records.values()):.3f}"}, refresh=False)
    bar.close()
    if not records:
        raise EvalError(f"{bench.name}: every prompt is over {prompt_limit} tokens "
                        f"(rollout.max_prompt_tokens, rollout.engine.max_model_len - max_new_tokens)")
    ordered = [records[p.id] for p in bench.problems if p.id in records]
    summary = summarise(ordered, default_ks(settings.n), cfg.eval.confidence, cfg.eval.bootstrap_resamples,
                        settings.seed)
    return {"layout": bench.spec.layout, "source": bench.source, **summary,
            "left_out": {**bench.left_out, "prompt_too_long": too_long}}


def run_eval(cfg: RLKDConfig, model: Union[str, ActorPool], benchmarks: Sequence[str], output_dir: str | Path,
             limit: Optional[int] = None, label: Optional[str] = None) -> Dict[str, Any]:
    """Evaluate `model` on `benchmarks` (names or `PATH[:key=value...]` specs) with `cfg.eval`
    sampling; writes `output_dir`/{settings.json, completions/, results.json, results.md}.

    `model` is a folder / hub id / packaged name (workers are started for it and shut down after),
    or the rollout pool of a running training, whose workers hold the weights to evaluate (the
    tokenizer is then `cfg.model.student`'s). `label` names the model in the results.
    Needs a running Ray cluster."""
    from actors.rollout import RolloutWorker

    base = model if isinstance(model, str) else cfg.model.student
    settings = eval_settings(cfg, label or base)
    folder = Path(output_dir)
    (folder / COMPLETIONS).mkdir(parents=True, exist_ok=True)
    check_settings(folder, settings)
    specs = [parse_benchmark_spec(b) for b in benchmarks]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise EvalError(f"benchmark names repeat ({', '.join(names)}); give files a name=... option")
    loaded = [load_benchmark(s, limit, cfg.data.arith) for s in specs]  # every bad benchmark fails before a worker starts
    tokenizer = student_tokenizer(resolve_model(base, cfg.paths.cache_dir), cfg.rollout.chat_template)
    if isinstance(model, str):
        local = Path(model).expanduser()  # workers may run in another working directory
        ecfg, r = eval_config(cfg, str(local.resolve()) if local.is_dir() else model), cfg.rollout
        pool = ActorPool("eval", lambda i: start_engine_actor(RolloutWorker, r, cfg.cluster.rollout_node, ecfg, i),
                          r.num_workers)
    else:
        pool = model
    try:
        summaries = {b.name: evaluate_benchmark(pool, b, tokenizer, cfg, settings, folder) for b in loaded}
    finally:
        if isinstance(model, str):
            pool.shutdown()
    earlier = read_results(folder)["benchmarks"] if (folder / RESULTS_JSON).is_file() else {}
    results = {"settings": {**asdict(settings), "confidence": cfg.eval.confidence,
                            "bootstrap_resamples": cfg.eval.bootstrap_resamples},
               "benchmarks": {**earlier, **summaries}}
    write_results(folder, results)
    return results
