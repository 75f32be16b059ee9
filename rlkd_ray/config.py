"""Typed configuration: every default lives here, once.

`conf/*.yaml` override these dataclasses; the command line overrides both with dotted keys
(`trainer.total_steps=20`). An unknown key is an error that names it and the closest valid key.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Sequence

from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

# The system prompt of the paper's recipe (Open-R1 style): reason in <think>, answer in <answer>.
R1_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think>\nreasoning "
    "process here\n</think>\n<answer>\nanswer here\n</answer>. Put the final answer within "
    "\\boxed{}."
)


@dataclass
class PathsConfig:
    cache_dir: str = "~/.cache/rlkd"  # models/ and data/ are materialised under it
    run_dir: str = "runs/rlkd"  # metrics, samples, checkpoints of one run


@dataclass
class ModelConfig:
    # Each field takes a Hugging Face id, a local folder, or a packaged asset name
    # (`SmolLM2-135M-Instruct`, materialised by `rlkd prepare-assets`).
    student: str = "Qwen/Qwen2.5-Math-7B"
    reference: Optional[str] = None  # frozen KL reference; None = the initial student
    gsrm: str = "Qwen/Qwen2.5-7B-Instruct"  # the structure decomposer
    judge: Optional[str] = None  # yes/no step judge; None = the GSRM model (one engine)
    dtype: str = "bfloat16"  # float32 | bfloat16 | float16, for learner and engines


@dataclass
class EngineConfig:
    backend: str = "hf"  # hf (transformers) | vllm
    max_model_len: int = 5120
    kv_cache_gib: float = 4.0  # vLLM KV-cache cap (CPU: VLLM_CPU_KVCACHE_SPACE)
    gpu_memory_utilization: float = 0.4
    tensor_parallel_size: int = 1
    enforce_eager: bool = True
    cpu_threads: Optional[int] = None  # torch / OMP threads inside the actor; None = num_cpus
    # CPU cores the engine's threads are pinned to ("0", "2-3", "0,2"); every worker of the pool
    # gets the same set. On CPU give the rollout and reward pools different cores (vLLM-CPU
    # otherwise runs every engine on core 0). None = no pinning.
    cpu_cores: Optional[str] = None
    batch_size: int = 16  # sequences per forward for the transformers engine


@dataclass
class RolloutConfig:
    num_workers: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 1.0
    engine: EngineConfig = field(default_factory=EngineConfig)
    group_size: int = 4  # G completions per prompt
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = -1
    max_prompt_tokens: int = 1024
    max_new_tokens: int = 4096
    stop: List[str] = field(default_factory=list)
    system_prompt: str = R1_SYSTEM_PROMPT


@dataclass
class RewardWeights:
    accuracy: float = 15.0
    format: float = 10.0
    tag_count: float = 10.0
    structure: float = 15.0


@dataclass
class CustomReward:
    name: str = "???"
    fn: str = "???"  # import path `package.module:function`, called as fn(sample) -> float
    weight: float = 1.0


@dataclass
class RewardConfig:
    num_workers: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 1.0
    weights: RewardWeights = field(default_factory=RewardWeights)
    custom: List[CustomReward] = field(default_factory=list)
    normalize_structure: bool = False  # divide the structure reward by the teacher's step count
    domain: str = "math"  # few-shot examples of the decomposition prompt
    # Few-shot turn pairs in the GSRM prompt, at inference and in GSRM training (`rlkd sft`) alike.
    decompose_examples: int = 2
    engine: EngineConfig = field(default_factory=EngineConfig)
    decompose_max_new_tokens: int = 1024
    # A judge verdict needs p(yes) + p(no) >= this at its first token; else it is a non-answer.
    judge_min_prob: float = 0.5


@dataclass
class AlgoConfig:
    advantage: str = "grpo"  # grpo | dr_grpo | rloo
    std_eps: float = 1e-4
    clip_eps: float = 0.2
    kl_beta: float = 0.04
    kl_estimator: str = "k3"  # k1 | k3
    entropy_coef: float = 0.0


@dataclass
class OptimConfig:
    lr: float = 5e-5
    warmup_ratio: float = 0.1
    schedule: str = "constant_with_warmup"  # constant_with_warmup | cosine
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 0.2


@dataclass
class LearnerConfig:
    world_size: int = 1  # one Ray actor per rank
    num_cpus: float = 1.0
    num_gpus: float = 1.0
    zero_stage: int = 0
    micro_batch_size: int = 4  # sequences per forward/backward
    gradient_checkpointing: bool = False
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class TrainerConfig:
    total_steps: int = 1000
    prompts_per_step: int = 8
    max_staleness: int = 0  # 0 = strict on-policy
    seed: int = 42
    save_every: int = 50
    sample_log_every: int = 10
    num_logged_samples: int = 4
    resume: bool = False  # continue the run in paths.run_dir from its newest complete checkpoint
    checkpoint_on_stop: bool = True  # on SIGINT/SIGTERM: checkpoint the last finished step before exiting
    eval_every: int = 0  # in-training eval every this many optimizer steps (sampling: eval.*); 0 = off
    eval_benchmarks: List[str] = field(default_factory=lambda: ["math500"])  # held out from training
    eval_limit: Optional[int] = 100  # first problems of each benchmark per in-training eval; None = all


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
    id: Optional[str] = None  # None = the row number
    problem: str = "problem"
    answer: str = "answer"
    teacher_reasoning: Optional[str] = "teacher_reasoning"
    teacher_structure: Optional[str] = None


@dataclass
class SourceConfig:
    kind: str = "math"  # math (packaged MATH test minus MATH-500) | file | hub | openr1
    path: Optional[str] = None  # file path (jsonl/json/parquet) or hub id
    split: str = "train"
    columns: ColumnMapping = field(default_factory=ColumnMapping)
    limit: Optional[int] = None


@dataclass
class DataConfig:
    name: str = "math"  # dataset folder under <cache_dir>/data/
    train: SourceConfig = field(default_factory=SourceConfig)
    eval: List[str] = field(default_factory=lambda: ["math500", "gsm8k"])
    skip_bad_rows: bool = False
    shuffle: bool = True


@dataclass
class LoggingConfig:
    tensorboard: bool = True
    wandb_project: Optional[str] = None
    progress: bool = True


@dataclass
class RayConfig:
    address: Optional[str] = None  # None = $RAY_ADDRESS if set, else a local loopback cluster
    num_cpus: Optional[int] = None


@dataclass
class ClusterConfig:
    """GPU clusters: how new weights reach the rollout engines, and which nodes each pool runs on."""

    # object_store: learner rank 0 puts the gathered state once into the Ray object store, every rollout
    # worker loads it | broadcast: learner rank 0 sends it through one process group with every engine
    # worker (NCCL on GPUs, gloo on CPU), in buckets (rlkd_ray/weight_sync/protocol.py, rlkd_ray/weight_sync/channels.py)
    weight_sync: str = "object_store"
    bucket_mb: int = 512  # broadcast: bytes per broadcast (one flat buffer each)
    sync_timeout_s: int = 600  # broadcast: a rendezvous or a broadcast that takes longer fails
    # A custom Ray resource that the nodes of one pool offer (`ray start --resources='{"rlkd_reward": 1}'`);
    # every actor or tensor-parallel bundle of that pool asks for a sliver of it. None = any node.
    learner_node: Optional[str] = None
    rollout_node: Optional[str] = None
    reward_node: Optional[str] = None


@dataclass
class AnnotateConfig:
    """`rlkd annotate`: GSRM targets written by an annotator model from the teacher traces of the
    prepared dataset `data.name` (prompt: `reward.domain`); accepted and rejected records as JSONL."""

    backend: str = "openai"  # openai (an OpenAI-compatible chat endpoint) | engine (a local model)
    model: str = "gpt-4o"  # endpoint model name; for `engine` a hub id, local folder or packaged asset
    base_url: str = "https://api.openai.com/v1"
    api_key_env: Optional[str] = "OPENAI_API_KEY"  # environment variable holding the key; None = no key
    split: str = "train"
    limit: Optional[int] = None  # annotate only the first rows of the split
    output: str = "runs/annotate/annotations.jsonl"  # rejects go beside it, to <stem>.rejects.jsonl
    n_examples: int = 2  # few-shot turn pairs in the annotation prompt
    temperature: float = 0.0
    max_tokens: int = 2048
    concurrency: int = 8  # requests in flight (openai) or prompts per generate call (engine)
    timeout_s: float = 120.0
    max_retries: int = 6  # per request, on 429, 5xx, timeouts and connection errors
    backoff_s: float = 1.0  # first retry delay; doubles per retry, with jitter, up to backoff_max_s
    backoff_max_s: float = 60.0
    engine: EngineConfig = field(default_factory=EngineConfig)


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
    epochs: int = 1
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


_CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "rollout.engine.backend": ("hf", "vllm"),
    "reward.engine.backend": ("hf", "vllm"),
    "algo.advantage": ("grpo", "dr_grpo", "rloo"),
    "algo.kl_estimator": ("k1", "k3"),
    "learner.optim.schedule": ("constant_with_warmup", "cosine"),
    "data.train.kind": ("math", "file", "hub", "openr1"),
    "reward.domain": ("math", "code", "science", "puzzle"),
    "annotate.backend": ("openai", "engine"),
    "annotate.engine.backend": ("hf", "vllm"),
    "sft.task": ("gsrm", "distill"),
    "sft.optim.schedule": ("constant_with_warmup", "cosine"),
    "cluster.weight_sync": ("object_store", "broadcast"),
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
    if cfg.trainer.max_staleness < 0:
        raise ConfigError(f"'trainer.max_staleness' must be >= 0, got {cfg.trainer.max_staleness}")
    validate_eval(cfg)
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
        if tp > 1 and (p.engine.backend != "vllm" or not 0 < p.num_gpus <= 1):
            raise ConfigError(f"'{pool}.engine.tensor_parallel_size' is {tp}, which needs backend vllm and "
                              f"0 < {pool}.num_gpus <= 1 (GPUs per rank); got backend {p.engine.backend}, "
                              f"num_gpus {p.num_gpus}")
    for i, c in enumerate(cfg.reward.custom):
        if ":" not in c.fn:
            raise ConfigError(f"'reward.custom[{i}].fn' must be 'module:function', got {c.fn!r}")


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
