"""Typed configuration: every default lives here, once.

`conf/*.yaml` override these dataclasses; the command line overrides both with dotted keys
(`trainer.total_steps=20`). An unknown key is an error that names it and the closest valid key.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

# The system prompt the RLKD release trains with (its R1-Distill and zero recipes): reason in <think>,
# answer in <answer>, the final answer boxed. The release's YAML writes `\boxed` in double quotes,
# which YAML reads as a backspace + "oxed"; this is the text it means (docs/recipe.md).
RLKD_SYSTEM_PROMPT = (
    "You are a helpful AI Assistant that provides well-reasoned and detailed responses. You first "
    "think about the reasoning process as an internal monologue and then provide the user with the "
    "answer. Respond in the following format: <think>\n...\n</think>\n<answer>\n...\n</answer>. "
    "A concise and definitive answer should be enclosed in \\boxed{}"
)


@dataclass
class PathsConfig:
    """Where models, datasets and runs live."""

    cache_dir: str = "~/.cache/rlkd"  # models/ and data/ are materialised under it
    run_dir: str = "runs/rlkd"  # metrics, samples, checkpoints of one run


@dataclass
class ModelConfig:
    """The models. Each takes a Hugging Face id, a local folder, or a packaged asset name
    (`SmolLM2-135M-Instruct`, materialised by `rlkd prepare-assets`)."""

    student: str = "Qwen/Qwen2.5-Math-7B"  # the policy trained by RL
    reference: Optional[str] = None  # frozen KL reference; None = the initial student
    gsrm: str = "Qwen/Qwen2.5-7B-Instruct"  # the structure decomposer
    judge: Optional[str] = None  # yes/no step judge; None = the GSRM model (one engine)
    # float32 | bfloat16 | float16, for learner and engines alike. float32 where the behaviour and learner
    # log-probs must agree closely (CPU, tests); bfloat16 on GPUs (the ratio is taken against the learner,
    # so the drift costs no gradient; algo.tis weighs it in; `engine_logprob_diff` logs it).
    dtype: str = "bfloat16"


@dataclass
class EngineConfig:
    """A generation engine: the student's in each rollout worker, the GSRM's and judge's in each reward worker."""

    backend: str = "hf"  # hf (transformers) | vllm
    max_model_len: int = 5120  # prompt + completion tokens
    kv_cache_gib: float = 4.0  # vLLM KV-cache cap (CPU: VLLM_CPU_KVCACHE_SPACE)
    # vLLM on GPU: the share of each GPU's memory an engine with whole GPUs takes; engines sharing a GPU
    # (the pool's num_gpus < 1, or a reward worker's separate judge) take this x their share of it each
    gpu_memory_utilization: float = 0.4
    # vLLM only: GPUs per engine, one placement group of that many GPU bundles on one node
    tensor_parallel_size: int = 1
    enforce_eager: bool = True  # vLLM: no CUDA graphs (faster start, slower decoding)
    cpu_threads: Optional[int] = None  # torch / OMP threads inside the actor; None = num_cpus
    # CPU cores the engine's threads are pinned to ("0", "2-3", "0,2"); every worker of the pool
    # gets the same set. On CPU give the rollout and reward pools different cores (vLLM-CPU
    # otherwise runs every engine on core 0). None = no pinning.
    cpu_cores: Optional[str] = None
    batch_size: int = 16  # sequences per forward for the transformers engine


@dataclass
class PromptExample:
    """A worked example shown to the student before its problem: one user turn, one assistant turn."""

    problem: str = "???"
    solution: str = "???"


@dataclass
class RolloutConfig:
    """The rollout pool: student engines that generate G completions per prompt, with behaviour log-probs."""

    num_workers: int = 1  # rollout workers (engines); `rlkd scale` changes it while a job runs
    num_cpus: float = 1.0  # per worker
    num_gpus: float = 1.0  # per worker, or per tensor-parallel rank
    engine: EngineConfig = field(default_factory=EngineConfig)
    group_size: int = 4  # G completions per prompt
    temperature: float = 0.7  # of the rollouts, and of the learner's log-probs
    top_p: float = 1.0  # < 1 is refused by vLLM (its log-probs would be those after truncation)
    top_k: int = -1  # -1 = off; as top_p
    max_prompt_tokens: int = 1024  # problems with a longer prompt are left out (counted at start)
    max_new_tokens: int = 4096
    stop: List[str] = field(default_factory=list)  # stop strings
    system_prompt: str = RLKD_SYSTEM_PROMPT  # "" = none
    # The student's chat template: None = its tokenizer's own; a Jinja file; or a packaged name
    # (`r1_distill`: the R1-Distill turns with `<think>` left to the model, as the RLKD release trains).
    chat_template: Optional[str] = None
    # Worked examples as earlier chat turns of every student prompt (training, eval); none by default.
    examples: List[PromptExample] = field(default_factory=list)


@dataclass
class RewardWeights:
    """Total reward = the weighted sum of the components (the paper's 15/10/10/15, plus `reward.custom`)."""

    accuracy: float = 15.0  # the boxed answer equals the gold (math-verify)
    format: float = 10.0  # the whole completion is <think>\n...\n</think>\n<answer>\n...\n</answer>
    tag_count: float = 10.0  # 0.25 per R1 tag found exactly once
    structure: float = 15.0  # the GSRM structure reward; 0 = GRPO with outcome rewards only


@dataclass
class CustomReward:
    """A reward of your own: `fn(sample) -> float` with `sample = {id, problem_id, completion, answer,
    problem, teacher_reasoning}` (`id` is `<group uid>/<index in the group>`). Its module must be importable
    on the reward workers (an installed package, or a file in the job's `--working-dir`); the driver imports
    it before any actor starts. Importing it runs that module's code on the driver and every reward worker:
    an import path is code execution by design, so a config is as trusted as the code it names. A function
    that raises, or returns anything but a finite number, stops the run naming the reward and the sample."""

    name: str = "???"  # its component name in the metrics
    # import path `package.module:function`, called as fn(sample) -> float; the driver and every reward worker
    # import it and so run its code: code execution by design (use only configs you would run code from)
    fn: str = "???"
    weight: float = 1.0


@dataclass
class AutoscaleConfig:
    """The reward pool grows while scored groups wait for a busy worker and shrinks while it has more
    workers than it ever uses (rlkd_ray/controller/autoscale.py); `rlkd scale` still sets the size."""

    max_workers: int = 0  # 0 = off; else the pool stays within [min_workers, max_workers]
    min_workers: int = 1
    grow_after_s: float = 30.0  # groups queued behind busy workers this long -> one worker more
    shrink_after_s: float = 300.0  # fewer calls in flight than workers all this time -> one worker fewer


@dataclass
class RewardConfig:
    """The reward pool: GSRM decomposer and judge engines, the rule rewards and the weighted total."""

    num_workers: int = 1  # reward workers; scales independently of the rollout pool
    autoscale: AutoscaleConfig = field(default_factory=AutoscaleConfig)
    num_cpus: float = 1.0  # per worker
    num_gpus: float = 1.0  # per worker, or per tensor-parallel rank
    weights: RewardWeights = field(default_factory=RewardWeights)
    custom: List[CustomReward] = field(default_factory=list)  # extra reward terms by import path
    normalize_structure: bool = False  # divide the structure reward by the teacher's step count
    # Who decomposes paths and judges steps: generative (the GSRM and judge models on `engine`, the
    # paper's method, for math) | rule (rlkd_ray/gsrm/rule.py + exact_judge.py: the exact stand-in for
    # the generative GSRM and judge in domains whose steps can be checked, the arith domain; no model).
    gsrm_backend: str = "generative"
    domain: str = "math"  # math | code | science | puzzle: the few-shot examples of the decomposition prompt
    # Few-shot turn pairs in the GSRM prompt, at inference and in GSRM training (`rlkd sft`) alike.
    decompose_examples: int = 2
    # The GSRM and judge engine; max_model_len must hold max_prompt_tokens + decompose_prompt_tokens +
    # rollout.max_new_tokens + decompose_max_new_tokens: a full-length path's decomposition (`validate`).
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(max_model_len=17408))
    # GSRM prompt tokens besides the problem and the path: chat template, instruction, few-shots (at most
    # 1,114 with 2 few-shots on SmolLM2's tokenizer; tests/test_recipe.py measures the configured domain).
    decompose_prompt_tokens: int = 1280
    decompose_max_new_tokens: int = 10000  # GSRM output limit, as the RLKD release: a decomposition restates the path
    # A judge verdict needs p(yes) + p(no) >= this at its first token; else it is a non-answer (counted;
    # it closes the meta-reasoning gate like a "no" but halves no step, as in the RLKD release).
    judge_min_prob: float = 0.5

    def runs_gsrm_model(self) -> bool:
        """Whether scoring calls a GSRM and a judge model: the generative backend with a weighted
        structure. Decided here only: the reward workers, preflight and `validate_gsrm_context` ask."""
        return self.gsrm_backend == "generative" and self.weights.structure != 0


@dataclass
class AlgoConfig:
    """The RL objective: group-relative advantages, clipped ratio, KL to the frozen reference."""

    advantage: str = "grpo"  # grpo | dr_grpo | rloo
    std_eps: float = 1e-4  # grpo: (r - mean) / (std + std_eps)
    clip_eps: float = 0.2  # the ratio is clipped to [1 - clip_eps, 1 + clip_eps]
    kl_beta: float = 0.04  # weight of the KL term; 0 = no reference model
    kl_estimator: str = "k3"  # k1 | k3
    entropy_coef: float = 0.0  # entropy bonus weight
    # Truncated importance sampling against the engine's behaviour log-probs: each token's loss term
    # × min(π_learner / π_engine, tis_cap). Always on with trainer.max_staleness > 0; off, as in the
    # paper's code, the ratio is taken against the learner's own log-probs only (exactly 1).
    tis: bool = False
    tis_cap: float = 2.0  # the truncation C


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = 5e-5
    warmup_ratio: float = 0.1  # linear warm-up over this share of the steps
    schedule: str = "constant_with_warmup"  # constant_with_warmup | cosine
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8  # added to Adam's denominator
    grad_clip: float = 0.2  # gradient norm clip


@dataclass
class LearnerConfig:
    """The learner group: DeepSpeed data-parallel ranks over the student (and a frozen reference).
    trainer.prompts_per_step x rollout.group_size must be a multiple of micro_batch_size x world_size."""

    world_size: int = 1  # one Ray actor per rank
    num_cpus: float = 1.0  # per rank
    num_gpus: float = 1.0  # per rank
    zero_stage: int = 0  # DeepSpeed ZeRO stage, 0-3
    micro_batch_size: int = 4  # sequences per forward/backward
    cpu_threads: Optional[int] = None  # torch / OMP threads of each rank on CPU; None = num_cpus
    # CPU only: bfloat16 autocast of the forward passes (student, reference) over float32 weights
    # (model.dtype float32); for CPUs with bf16 units (AVX-512 BF16 / AMX). None = off.
    autocast: Optional[str] = None
    gradient_checkpointing: bool = False
    # run each distinct prompt of a micro-batch once (a GRPO group's samples share it) and the completions
    # on its keys and values: same log-probs and gradients, less work. The student's pass does so only
    # without gradient_checkpointing (transformers then keeps no key/value cache); the reference's always.
    shared_prompt_pass: bool = True
    # positions per float32 chunk of the log-softmax / entropy over the vocabulary (bounds its memory)
    logprob_chunk_tokens: int = 512
    # the frozen KL reference: replicated (a full copy on every rank) | sharded (ZeRO-3 over the learner
    # ranks) | offload (ZeRO-3, parameters in CPU memory, fetched layer by layer)
    reference_memory: str = "replicated"
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class TrainerConfig:
    """The training loop of the driver: steps, batch, staleness, seeds, checkpoints, in-training eval."""

    total_steps: int = 1000  # optimizer steps
    prompts_per_step: int = 8  # prompt groups per optimizer step
    max_staleness: int = 0  # policy versions rollouts may run ahead of the learner; 0 = strict on-policy
    seed: int = 42  # data order and every sampling seed follow from it
    save_every: int = 50  # checkpoint every this many steps (and at the end)
    keep_checkpoints: Optional[int] = None  # newest checkpoints kept, older ones deleted at each save; None = all
    sample_log_every: int = 10  # write samples to samples.jsonl every this many steps
    num_logged_samples: int = 4  # samples written each time
    resume: bool = False  # continue the run in paths.run_dir from its newest complete checkpoint
    checkpoint_on_stop: bool = True  # on SIGINT/SIGTERM: checkpoint the last finished step before exiting
    eval_every: int = 0  # in-training eval every this many optimizer steps (sampling: eval.*); 0 = off
    eval_benchmarks: List[str] = field(default_factory=lambda: ["math500"])  # held out from training
    eval_limit: Optional[int] = 100  # first problems of each benchmark per in-training eval; None = all
    eval_at_start: bool = False  # also evaluate the initial weights (logged at step 0) when eval_every > 0


@dataclass
class EvalConfig:
    """Sampling and statistics of `rlkd eval` (its flags override these) and of the in-training eval."""

    n: int = 16  # samples per problem
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: Optional[int] = None  # None = rollout.max_new_tokens
    confidence: float = 0.95  # of the bootstrap intervals
    bootstrap_resamples: int = 1000


@dataclass
class ColumnMapping:
    """Which column of the source holds each field of a prepared row."""

    id: Optional[str] = None  # None = the row number
    problem: str = "problem"
    answer: str = "answer"  # the gold answer, bare LaTeX
    teacher_reasoning: Optional[str] = "teacher_reasoning"
    teacher_structure: Optional[str] = None  # a stored GSRM decomposition of the teacher trace, if any


@dataclass
class SourceConfig:
    kind: str = "math"  # math (packaged MATH test minus MATH-500) | file | hub | openr1 | arith (data.arith)
    path: Optional[str] = None  # file path (jsonl/json/parquet) or hub id
    split: str = "train"  # hub split
    columns: ColumnMapping = field(default_factory=ColumnMapping)
    limit: Optional[int] = None  # only the first rows


@dataclass
class ArithConfig:
    """The procedural arithmetic domain (`data.train.kind: arith`, eval splits `arith_test`, `arith_hard`;
    rlkd_ray/data/arith.py): integer expressions with + - * /, precedence and parentheses, solved by a
    teacher program whose structure is exact. Every split is deterministic from `seed`."""

    seed: int = 0  # the problems of every split follow from it
    min_ops: int = 2  # operations per problem: min_ops..ops, uniformly (train and arith_test)
    ops: int = 3  # SmolLM2-135M-Instruct greedy, last number right: 1 op ~40 %, 2 ops ~15 %, 3 ops ~3 %; boxed: ~1 %
    digits: int = 1  # literals have 1..digits digits (1..10**digits - 1, no zero)
    paren_depth: int = 1  # at most this many nested parentheses (0 = none)
    train_size: int = 5000  # distinct training problems
    test_size: int = 1000  # arith_test: held-out, the training distribution
    hard_ops: int = 5  # arith_hard: ops+1..hard_ops operations per problem
    hard_size: int = 500  # arith_hard: held-out problems


@dataclass
class DataConfig:
    """The datasets `rlkd prepare-data` builds: rows of (id, problem, answer, teacher_reasoning,
    teacher_structure)."""

    name: str = "math"  # dataset folder under <cache_dir>/data/
    train: SourceConfig = field(default_factory=SourceConfig)  # the training source
    eval: List[str] = field(default_factory=lambda: ["math500", "gsm8k"])  # eval splits prepared beside it
    skip_bad_rows: bool = False  # count and report bad rows instead of failing on the first
    shuffle: bool = True
    arith: ArithConfig = field(default_factory=ArithConfig)  # used by kind arith and the arith_* eval splits
    # Control arm: each training problem's teacher structure is replaced by that of another problem with
    # the same number of steps (rlkd_ray/data/structure_control.py, seeded by trainer.seed).
    shuffle_teacher_structures: bool = False


@dataclass
class LoggingConfig:
    """Metrics sinks beside <run_dir>/metrics.jsonl, which is always written."""

    tensorboard: bool = True  # <run_dir>/tensorboard
    wandb_project: Optional[str] = None  # None = no W&B
    progress: bool = True  # progress bars


@dataclass
class RayConfig:
    """The Ray cluster every command joins or starts."""

    address: Optional[str] = None  # None = $RAY_ADDRESS if set, else a local loopback cluster
    num_cpus: Optional[int] = None  # CPUs of a loopback cluster; None = all


@dataclass
class ClusterConfig:
    """GPU clusters: how new weights reach the rollout engines, and which nodes each pool runs on."""

    # object_store: learner rank 0 puts the gathered state once into the Ray object store, every rollout
    # worker loads it | broadcast: learner rank 0 sends it through one process group with every engine
    # worker (NCCL on GPUs, gloo on CPU), in buckets (rlkd_ray/weight_sync/protocol.py, rlkd_ray/weight_sync/channels.py)
    weight_sync: str = "object_store"
    bucket_mb: int = 512  # broadcast: MiB per broadcast (one flat buffer each)
    sync_timeout_s: int = 600  # broadcast: a rendezvous or a broadcast that takes longer fails
    # The learner's nodes: a custom Ray resource that they offer (`ray start --resources='{"rlkd_learner": 1}'`);
    # every actor or tensor-parallel bundle of that pool asks for a sliver of it. None = any node.
    learner_node: Optional[str] = None
    rollout_node: Optional[str] = None  # the rollout pool's nodes, as learner_node
    reward_node: Optional[str] = None  # the reward pool's nodes, as learner_node


@dataclass
class AnnotateConfig:
    """`rlkd annotate`: GSRM targets written by an annotator model from the teacher traces of the
    prepared dataset `data.name` (prompt: `reward.domain`); accepted and rejected records as JSONL."""

    backend: str = "openai"  # openai (an OpenAI-compatible chat endpoint) | engine (a local model)
    model: str = "gpt-4o"  # endpoint model name; for `engine` a hub id, local folder or packaged asset
    base_url: str = "https://api.openai.com/v1"  # openai: the endpoint
    api_key_env: Optional[str] = "OPENAI_API_KEY"  # environment variable holding the key; None = no key
    split: str = "train"  # of the prepared dataset
    limit: Optional[int] = None  # annotate only the first rows of the split
    output: str = "runs/annotate/annotations.jsonl"  # rejects go beside it, to <stem>.rejects.jsonl
    n_examples: int = 2  # few-shot turn pairs in the annotation prompt
    temperature: float = 0.0
    max_tokens: int = 2048  # a reply cut at this length is rejected
    concurrency: int = 8  # requests in flight (openai) or prompts per generate call (engine)
    timeout_s: float = 120.0  # per request
    max_retries: int = 6  # per request, on 429, 5xx, timeouts and connection errors
    backoff_s: float = 1.0  # first retry delay; doubles per retry, with jitter, up to backoff_max_s
    backoff_max_s: float = 60.0
    engine: EngineConfig = field(default_factory=EngineConfig)  # backend engine: the local model's


@dataclass
class SFTWeights:
    """Loss weight of each assistant token of a structured target (task gsrm); prompt tokens get 0."""

    meta: float = 1.0  # content of the [sub-think i] fields: meta-reasoning
    solving: float = 1.0  # content of the [Query i] and [Answer i] fields and the final answer
    format: float = 1.0  # tags, line breaks, the end-of-turn token


@dataclass
class SFTConfig:
    """`rlkd sft` on the learner group: the GSRM from annotations, or the SFT-distillation baseline."""

    task: str = "gsrm"  # gsrm (annotations -> GSRM) | distill (teacher traces -> student, R1 format)
    annotations: Optional[str] = None  # gsrm training data; None = annotate.output
    base_model: Optional[str] = None  # None = model.gsrm (gsrm) or model.student (distill)
    output_dir: str = "runs/sft"  # the fine-tuned model lands in <output_dir>/hf
    max_seq_len: int = 4096  # longer examples are left out and counted
    batch_size: int = 8  # sequences per optimizer step
    epochs: int = 1  # passes over the examples
    total_steps: Optional[int] = None  # None = epochs over the examples
    limit: Optional[int] = None  # use only the first examples
    weights: SFTWeights = field(default_factory=SFTWeights)
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-5, warmup_ratio=0.03, schedule="cosine", grad_clip=1.0))


@dataclass
class RLKDConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


class ConfigError(ValueError):
    """A configuration value or key that cannot be used; the message names it."""


def _valid_keys(node: Any, prefix: str = "") -> List[str]:
    keys = []
    for k, v in node.items() if hasattr(node, "items") else []:
        full = f"{prefix}{k}"
        keys.append(full)
        if OmegaConf.is_dict(v):
            keys.extend(_valid_keys(v, full + "."))
    return keys


def _unknown_key_error(key: str, source: str) -> ConfigError:
    valid = _valid_keys(OmegaConf.structured(RLKDConfig))
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"{source}: unknown config key '{key}'{hint}")


def _merge(base: Any, other: Any, source: str) -> Any:
    try:
        return OmegaConf.merge(base, other)
    except (ConfigKeyError, ConfigAttributeError) as e:
        raise _unknown_key_error(str(e.full_key or e.key), source) from None
    except ValidationError as e:
        raise ConfigError(f"{source}: bad value for '{e.full_key}': {e.msg}") from None


def load_config(path: Optional[str | Path] = None, overrides: Sequence[str] = ()) -> RLKDConfig:
    """Schema defaults <- YAML file (which may name a `defaults_from` parent) <- dotted overrides."""
    cfg = OmegaConf.structured(RLKDConfig)
    if path is not None:
        for p in _yaml_chain(Path(path)):
            cfg = _merge(cfg, _read_yaml(p), str(p))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"command line: override '{item}' is not of the form key=value")
        key = item.split("=", 1)[0].lstrip("+")
        cfg = _merge(cfg, OmegaConf.from_dotlist([item.lstrip("+")]), f"command line '{key}'")
    obj = OmegaConf.to_object(cfg)
    validate(obj)
    return obj


def _read_yaml(path: Path) -> Any:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    node = OmegaConf.load(path)
    if "defaults_from" in node:
        node.pop("defaults_from")
    return node


def _yaml_chain(path: Path) -> List[Path]:
    """A YAML file may start from another (`defaults_from: rlkd.yaml`, relative to itself)."""
    chain = [path]
    seen = {path.resolve()}
    while True:
        node = OmegaConf.load(chain[0]) if chain[0].exists() else {}
        parent = node.get("defaults_from") if node else None
        if not parent:
            return chain
        parent_path = (chain[0].parent / parent).resolve()
        if parent_path in seen:
            raise ConfigError(f"{chain[0]}: defaults_from forms a cycle through {parent_path}")
        seen.add(parent_path)
        chain.insert(0, parent_path)


DTYPES = ("float32", "bfloat16", "float16")  # of `model.dtype`: torch dtype names

_CHOICES = {
    "model.dtype": DTYPES,
    "rollout.engine.backend": ("hf", "vllm"),
    "reward.engine.backend": ("hf", "vllm"),
    "algo.advantage": ("grpo", "dr_grpo", "rloo"),
    "algo.kl_estimator": ("k1", "k3"),
    "learner.optim.schedule": ("constant_with_warmup", "cosine"),
    "data.train.kind": ("math", "file", "hub", "openr1", "arith"),
    "reward.domain": ("math", "code", "science", "puzzle"),
    "reward.gsrm_backend": ("generative", "rule"),
    "annotate.backend": ("openai", "engine"),
    "annotate.engine.backend": ("hf", "vllm"),
    "sft.task": ("gsrm", "distill"),
    "sft.optim.schedule": ("constant_with_warmup", "cosine"),
    "cluster.weight_sync": ("object_store", "broadcast"),
    "learner.reference_memory": ("replicated", "sharded", "offload"),
}


def validate(cfg: RLKDConfig) -> None:
    """Value checks the type system cannot express; each error names the key."""
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(OmegaConf.structured(cfg), key)
        if value not in choices:
            raise ConfigError(f"'{key}' is {value!r}; choose one of {', '.join(choices)}")
    positive = {
        "rollout.group_size": cfg.rollout.group_size,
        "rollout.num_workers": cfg.rollout.num_workers,
        "reward.num_workers": cfg.reward.num_workers,
        "learner.world_size": cfg.learner.world_size,
        "learner.micro_batch_size": cfg.learner.micro_batch_size,
        "learner.logprob_chunk_tokens": cfg.learner.logprob_chunk_tokens,
        "trainer.prompts_per_step": cfg.trainer.prompts_per_step,
        "rollout.max_new_tokens": cfg.rollout.max_new_tokens,
        "annotate.concurrency": cfg.annotate.concurrency,
        "annotate.max_tokens": cfg.annotate.max_tokens,
        "sft.batch_size": cfg.sft.batch_size,
        "sft.max_seq_len": cfg.sft.max_seq_len,
        "sft.epochs": cfg.sft.epochs,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"'{key}' must be >= 1, got {value}")
    if cfg.algo.tis_cap <= 0:
        raise ConfigError(f"'algo.tis_cap' must be > 0, got {cfg.algo.tis_cap}")
    if cfg.trainer.max_staleness < 0:
        raise ConfigError(f"'trainer.max_staleness' must be >= 0, got {cfg.trainer.max_staleness}")
    validate_eval(cfg)
    validate_arith(cfg)
    if cfg.learner.autocast not in (None, "bfloat16"):
        raise ConfigError(f"'learner.autocast' is {cfg.learner.autocast!r}; choose bfloat16 or null")
    if cfg.learner.autocast and cfg.model.dtype != "float32":
        raise ConfigError(f"'learner.autocast' needs model.dtype float32 (the master weights), got {cfg.model.dtype}")
    if cfg.learner.cpu_threads is not None and cfg.learner.cpu_threads < 1:
        raise ConfigError(f"'learner.cpu_threads' must be >= 1 or null, got {cfg.learner.cpu_threads}")
    if cfg.learner.zero_stage not in (0, 1, 2, 3):
        raise ConfigError(f"'learner.zero_stage' must be 0-3, got {cfg.learner.zero_stage}")
    if cfg.rollout.group_size < 2 and cfg.algo.advantage in ("grpo", "rloo"):
        raise ConfigError("'rollout.group_size' must be >= 2 for group-relative advantages")
    rows = cfg.trainer.prompts_per_step * cfg.rollout.group_size
    per_call = cfg.learner.micro_batch_size * cfg.learner.world_size
    if rows % per_call:
        raise ConfigError(
            f"trainer.prompts_per_step x rollout.group_size = {rows} sequences per step must be a multiple of "
            f"learner.micro_batch_size x learner.world_size = {per_call}")
    if cfg.cluster.bucket_mb < 1 or cfg.cluster.sync_timeout_s < 1:
        raise ConfigError(f"'cluster.bucket_mb' and 'cluster.sync_timeout_s' must be >= 1, "
                          f"got {cfg.cluster.bucket_mb}, {cfg.cluster.sync_timeout_s}")
    if cfg.cluster.weight_sync == "broadcast" and (cfg.learner.num_gpus > 0) != (cfg.rollout.num_gpus > 0):
        raise ConfigError("'cluster.weight_sync' is broadcast, which needs the learner and the rollout workers on "
                          f"the same kind of device (NCCL between GPUs, gloo between CPUs); got learner.num_gpus="
                          f"{cfg.learner.num_gpus}, rollout.num_gpus={cfg.rollout.num_gpus}")
    for pool in ("rollout", "reward"):
        p = getattr(cfg, pool)
        tp = p.engine.tensor_parallel_size
        if tp < 1:
            raise ConfigError(f"'{pool}.engine.tensor_parallel_size' must be >= 1, got {tp}")
        # vLLM's Ray executor asks one whole GPU per worker (VLLM_RAY_PER_WORKER_GPUS=1): bundles of a
        # fraction of a GPU never fit it, and the engine would wait for them forever.
        if tp > 1 and (p.engine.backend != "vllm" or p.num_gpus != 1):
            raise ConfigError(f"'{pool}.engine.tensor_parallel_size' is {tp}, which needs backend vllm and "
                              f"{pool}.num_gpus = 1 (one whole GPU per tensor-parallel rank); got backend "
                              f"{p.engine.backend}, num_gpus {p.num_gpus}")
    validate_gsrm_context(cfg)
    for i, c in enumerate(cfg.reward.custom):
        if ":" not in c.fn:
            raise ConfigError(f"'reward.custom[{i}].fn' must be 'module:function', got {c.fn!r}")
    validate_ranges(cfg)
    validate_model_paths(cfg)
    key_env = cfg.annotate.api_key_env
    if key_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", key_env):
        raise ConfigError("'annotate.api_key_env' must be the name of the environment variable that holds the API "
                          "key (letters, digits, _), never the key itself; its value is not shown here")


def _check(ok: bool, key: str, value: Any, need: str) -> None:
    if not ok:
        raise ConfigError(f"'{key}' must be {need}, got {value!r}")


def validate_ranges(cfg: RLKDConfig) -> None:
    """Numbers outside the range where they mean anything; each error names the key and the value."""
    t, r, a = cfg.trainer, cfg.rollout, cfg.algo
    for key, value in {"trainer.total_steps": t.total_steps, "trainer.save_every": t.save_every,
                       "trainer.sample_log_every": t.sample_log_every, "rollout.max_prompt_tokens": r.max_prompt_tokens,
                       "reward.decompose_max_new_tokens": cfg.reward.decompose_max_new_tokens}.items():
        _check(value >= 1, key, value, ">= 1")
    for name, optim in (("learner.optim", cfg.learner.optim), ("sft.optim", cfg.sft.optim)):
        _check(math.isfinite(optim.lr) and optim.lr > 0, f"{name}.lr", optim.lr, "a finite number > 0")
        _check(0 <= optim.warmup_ratio <= 1, f"{name}.warmup_ratio", optim.warmup_ratio, "in [0, 1]")
        _check(optim.weight_decay >= 0, f"{name}.weight_decay", optim.weight_decay, ">= 0")
        _check(math.isfinite(optim.eps) and optim.eps > 0, f"{name}.eps", optim.eps, "a finite number > 0")
        _check(optim.grad_clip >= 0, f"{name}.grad_clip", optim.grad_clip, ">= 0 (0: no clipping)")
        _check(len(optim.betas) == 2 and all(0 <= b < 1 for b in optim.betas), f"{name}.betas", optim.betas,
               "two numbers in [0, 1)")
    _check(t.keep_checkpoints is None or t.keep_checkpoints >= 1, "trainer.keep_checkpoints", t.keep_checkpoints,
           ">= 1, or null to keep every checkpoint")
    _check(math.isfinite(r.temperature) and r.temperature >= 0, "rollout.temperature", r.temperature, ">= 0")
    if r.temperature == 0 and r.group_size > 1:
        raise ConfigError(f"'rollout.temperature' is 0 (greedy) with rollout.group_size={r.group_size}: the "
                          "completions of a group would be identical and every advantage 0; use a temperature > 0")
    _check(0 < r.top_p <= 1, "rollout.top_p", r.top_p, "in (0, 1]")
    _check(r.top_k == -1 or r.top_k >= 1, "rollout.top_k", r.top_k, "-1 (off) or >= 1")
    if r.max_prompt_tokens + r.max_new_tokens > r.engine.max_model_len:
        raise ConfigError(f"rollout.max_prompt_tokens + rollout.max_new_tokens = {r.max_prompt_tokens + r.max_new_tokens} "
                          f"is over 'rollout.engine.max_model_len' = {r.engine.max_model_len}")
    _check(a.clip_eps > 0, "algo.clip_eps", a.clip_eps, "> 0")
    _check(a.kl_beta >= 0, "algo.kl_beta", a.kl_beta, ">= 0 (0: no KL term, no reference model)")
    _check(a.std_eps > 0, "algo.std_eps", a.std_eps, "> 0")
    _check(a.entropy_coef >= 0, "algo.entropy_coef", a.entropy_coef, ">= 0")
    weights = {f"reward.weights.{k}": v for k, v in vars(cfg.reward.weights).items()}
    weights |= {f"reward.custom[{i}].weight": c.weight for i, c in enumerate(cfg.reward.custom)}
    for key, value in weights.items():
        _check(math.isfinite(value), key, value, "a finite number")
    _check(0 <= cfg.reward.judge_min_prob <= 1, "reward.judge_min_prob", cfg.reward.judge_min_prob, "in [0, 1]")
    auto = cfg.reward.autoscale
    if auto.max_workers:
        _check(1 <= auto.min_workers <= auto.max_workers, "reward.autoscale.min_workers", auto.min_workers,
               f"in [1, reward.autoscale.max_workers = {auto.max_workers}]")
        for key in ("grow_after_s", "shrink_after_s"):
            _check(getattr(auto, key) > 0, f"reward.autoscale.{key}", getattr(auto, key), "> 0")


# Model fields that are written as a filesystem path (not a hub id `org/name` or a packaged name).
_PATH_PREFIXES = ("/", "./", "../", "~")


def validate_model_paths(cfg: RLKDConfig) -> None:
    """A model given as a path must be a Hugging Face model folder; a run checkpoint is named as such."""
    for role in ("student", "reference", "gsrm", "judge"):
        value = getattr(cfg.model, role)
        if not value or not value.startswith(_PATH_PREFIXES):
            continue
        folder = Path(value).expanduser()
        if not folder.exists():
            raise ConfigError(f"'model.{role}' is {value!r}, which does not exist")
        if not folder.is_dir():
            raise ConfigError(f"'model.{role}' is {value!r}, which is a file; give the model's folder")
        if (folder / "config.json").is_file():
            continue
        if (folder / "hf" / "config.json").is_file():
            raise ConfigError(f"'model.{role}' is {value!r}, a training checkpoint; its model is in {folder / 'hf'}")
        raise ConfigError(f"'model.{role}' is {value!r}, which is not a Hugging Face model folder (no config.json)")


def validate_arith(cfg: RLKDConfig) -> None:
    """The knobs of the arithmetic domain; each error names the key."""
    a = cfg.data.arith
    if not 1 <= a.min_ops <= a.ops < a.hard_ops:
        raise ConfigError(f"need 1 <= data.arith.min_ops <= data.arith.ops < data.arith.hard_ops; "
                          f"got {a.min_ops}, {a.ops}, {a.hard_ops}")
    if a.digits < 1 or a.paren_depth < 0:
        raise ConfigError(f"need data.arith.digits >= 1 and data.arith.paren_depth >= 0; got {a.digits}, {a.paren_depth}")
    for key in ("train_size", "test_size", "hard_size"):
        if getattr(a, key) < 1:
            raise ConfigError(f"'data.arith.{key}' must be >= 1, got {getattr(a, key)}")


def validate_gsrm_context(cfg: RLKDConfig) -> None:
    """With a structure reward, the GSRM context must hold the decomposition of a full-length path:
    a longer prompt gets structure reward 0, a hidden length penalty."""
    r = cfg.reward
    if not r.runs_gsrm_model():  # no GSRM model decomposes anything
        return
    overhead = cfg.rollout.max_prompt_tokens + r.decompose_prompt_tokens  # the problem + the rest of the prompt
    need = cfg.rollout.max_new_tokens + overhead + r.decompose_max_new_tokens
    if need > r.engine.max_model_len:
        raise ConfigError(
            f"'reward.engine.max_model_len' is {r.engine.max_model_len}, too small to decompose a full-length path: "
            f"rollout.max_new_tokens {cfg.rollout.max_new_tokens} + prompt overhead {overhead} (the problem, up to "
            f"rollout.max_prompt_tokens {cfg.rollout.max_prompt_tokens}, + reward.decompose_prompt_tokens "
            f"{r.decompose_prompt_tokens}) + reward.decompose_max_new_tokens {r.decompose_max_new_tokens} = {need}")


def validate_eval(cfg: RLKDConfig) -> None:
    """Eval sampling and the in-training eval schedule; each error names the key."""
    e = cfg.eval
    if e.n < 1 or e.bootstrap_resamples < 1:
        raise ConfigError(f"'eval.n' and 'eval.bootstrap_resamples' must be >= 1, got {e.n}, {e.bootstrap_resamples}")
    if e.temperature < 0 or not 0 < e.top_p <= 1 or not 0 < e.confidence < 1:
        raise ConfigError(f"need eval.temperature >= 0, 0 < eval.top_p <= 1, 0 < eval.confidence < 1; "
                          f"got {e.temperature}, {e.top_p}, {e.confidence}")
    if e.max_new_tokens is not None and e.max_new_tokens < 1:
        raise ConfigError(f"'eval.max_new_tokens' must be >= 1 or null, got {e.max_new_tokens}")
    t = cfg.trainer
    if t.eval_every < 0 or (t.eval_limit is not None and t.eval_limit < 1):
        raise ConfigError(f"'trainer.eval_every' must be >= 0 and 'trainer.eval_limit' >= 1 or null; "
                          f"got {t.eval_every}, {t.eval_limit}")
    if t.eval_every and not t.eval_benchmarks:
        raise ConfigError("'trainer.eval_every' is set but 'trainer.eval_benchmarks' is empty")


def to_yaml(cfg: RLKDConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))
