"""`rlkd annotate`: GSRM training targets written by an annotator model from teacher traces.

Each teacher trace (problem + reasoning) of a prepared split goes to the annotator with the GSRM
decomposition prompt of `reward.domain` (`build_decompose_messages`, `annotate.n_examples`
few-shots). The annotator is an OpenAI-compatible chat endpoint (`ChatClient`) or a local engine
(`EngineAnnotator`). Every reply is checked with `parse_structure`: a reply that parses without a
single noted error is stored as a target in canonical form (`format_structure`) in
`annotate.output`; any other reply goes to `<stem>.rejects.jsonl` beside it, with the reason.

Both files are append-only JSON lines, each record flushed and fsynced: a killed run loses at most
the requests in flight, and a rerun skips every id found in either file (delete the rejects file to
retry its ids). A request whose retries run out is written nowhere, so a rerun retries it.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import timezone
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

from rlkd_ray.config import RLKDConfig
from rlkd_ray.gsrm import build_decompose_messages, format_structure, parse_structure

Messages = List[Dict[str, str]]


class AnnotationError(RuntimeError):
    """The annotation run cannot go on, or ended with requests that failed after all retries."""


class RequestRejected(Exception):
    """A request that must not be retried (a 4xx answer, an unusable response body, a too-long prompt)."""


class RetriesExhausted(Exception):
    """A request that kept failing with retryable errors (429, 5xx, timeouts, connection errors)."""


@dataclass
class Reply:
    text: str
    finish_reason: str  # "stop" | "length" | whatever the endpoint reports


@dataclass
class Trace:
    id: str
    problem: str
    reasoning: str


# -- retries -----------------------------------------------------------------------------------
RETRY_STATUS = frozenset({408, 429, 500, 502, 503, 504})


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds from a Retry-After header: a number of seconds or an HTTP date; None if absent or unreadable."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_delay(attempt: int, base_s: float, max_s: float, retry_after: Optional[float], rng: random.Random) -> float:
    """Seconds to wait before retry `attempt` (0 = the first retry): the server's Retry-After when it
    gave one, else exponential backoff base·2^attempt with jitter in its upper half; at most max_s."""
    if retry_after is not None:
        return min(retry_after, max_s)
    ceiling = min(max_s, base_s * 2**attempt)
    return ceiling / 2 + rng.uniform(0.0, ceiling / 2)


# -- annotators ----------------------------------------------------------------------------------
class ChatClient:
    """`POST {base_url}/chat/completions` of an OpenAI-compatible endpoint; safe to share between threads.

    The API key goes into the Authorization header only; no message, log line or record shows it.
    """

    def __init__(self, base_url: str, model: str, api_key: Optional[str], *, temperature: float, max_tokens: int,
                 timeout_s: float, max_retries: int, backoff_s: float, backoff_max_s: float, connections: int,
                 seed: int = 0):
        import httpx

        self.model, self.temperature, self.max_tokens = model, temperature, max_tokens
        self.max_retries, self.backoff_s, self.backoff_max_s = max_retries, backoff_s, backoff_max_s
        self._key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/") + "/", headers=headers, timeout=timeout_s,
                                  limits=httpx.Limits(max_connections=connections))
        self._retryable = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.retries = 0  # retries made so far, all requests together

    def complete(self, messages: Messages) -> Reply:
        """The first choice of the reply; raises RequestRejected or RetriesExhausted."""
        payload = {"model": self.model, "messages": messages, "temperature": self.temperature,
                   "max_tokens": self.max_tokens, "n": 1}
        attempt = 0
        while True:
            retry_after = None
            try:
                response = self._http.post("chat/completions", json=payload)
            except self._retryable as e:
                reason = f"{type(e).__name__}: {e}"
            else:
                if response.status_code == 200:
                    try:
                        return _reply_of(response)
                    except RequestRejected as e:
                        raise RequestRejected(self._redact(str(e))) from None
                if response.status_code not in RETRY_STATUS:
                    raise RequestRejected(f"HTTP {response.status_code}: {self._redact(response.text[:300])}")
                reason = f"HTTP {response.status_code}"
                retry_after = parse_retry_after(response.headers.get("retry-after"))
            if attempt == self.max_retries:
                raise RetriesExhausted(f"{reason} (after {attempt + 1} attempts)")
            with self._lock:
                self.retries += 1
                delay = retry_delay(attempt, self.backoff_s, self.backoff_max_s, retry_after, self._rng)
            time.sleep(delay)
            attempt += 1

    def _redact(self, text: str) -> str:
        """An endpoint's text with the API key cut out (some echo the Authorization header in errors)."""
        return text.replace(self._key, "<api key>") if self._key else text

    def close(self) -> None:
        self._http.close()


def _reply_of(response) -> Reply:
    try:
        choice = response.json()["choices"][0]
        text = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise RequestRejected(f"malformed response body ({type(e).__name__}: {e}): {response.text[:300]}") from None
    if not isinstance(text, str):
        raise RequestRejected(f"response message content is {type(text).__name__}, not a string")
    return Reply(text, str(choice.get("finish_reason") or "stop"))


class EngineAnnotator:
    """A local model as annotator: one generate call per batch of prompts."""

    def __init__(self, cfg: RLKDConfig):
        from transformers import AutoTokenizer

        from rlkd_ray.assets import resolve_model
        from rlkd_ray.engines import make_engine

        a = cfg.annotate
        path = resolve_model(a.model, cfg.paths.cache_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.engine = make_engine(a.engine, path, cfg.model.dtype, seed=cfg.trainer.seed)
        self.max_prompt_tokens = a.engine.max_model_len - a.max_tokens
        self.temperature, self.max_tokens = a.temperature, a.max_tokens

    def complete_batch(self, batch: Sequence[Messages]) -> List[Union[Reply, RequestRejected]]:
        from rlkd_ray.engines.base import PromptTooLong, Sampling, build_prompt_ids

        out: List[Union[Reply, RequestRejected]] = []
        prompts, slots = [], []
        for messages in batch:
            try:
                prompts.append(build_prompt_ids(self.tokenizer, messages, self.max_prompt_tokens))
                slots.append(len(out))
                out.append(RequestRejected("not generated"))
            except PromptTooLong as e:
                out.append(RequestRejected(f"prompt too long for annotate.engine.max_model_len: {e}"))
        if prompts:
            sampling = Sampling(n=1, temperature=self.temperature, max_new_tokens=self.max_tokens)
            for slot, completions in zip(slots, self.engine.generate(prompts, sampling)):
                out[slot] = Reply(completions[0].text, completions[0].finish_reason)
        return out

    def close(self) -> None:
        self.engine.close()


# -- the resumable output -------------------------------------------------------------------------
class JsonlLog:
    """Append-only JSON lines: one record per line, flushed and fsynced; `ids()` of those already there."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file = None

    def ids(self) -> Set[str]:
        """Ids of the complete records; a last line cut off by a kill is removed first."""
        if not self.path.exists():
            return set()
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            print(f"[annotate] {self.path}: removing an incomplete last record ({len(data) - keep} bytes)", flush=True)
            with open(self.path, "r+b") as f:
                f.truncate(keep)
            data = data[:keep]
        ids = set()
        for n, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            try:
                ids.add(str(json.loads(line)["id"]))
            except (ValueError, KeyError, TypeError) as e:
                raise AnnotationError(f"{self.path} line {n}: not a record with an 'id' ({e})") from None
        return ids

    def append(self, record: dict) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def rejects_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f"{output.stem}.rejects.jsonl")


# -- checking a reply -----------------------------------------------------------------------------
def check_reply(reply: Reply) -> Tuple[Optional[str], Optional[str]]:
    """(canonical target, None) for a reply that parses without errors, else (None, the reason)."""
    if reply.finish_reason == "length":
        return None, "reply cut at annotate.max_tokens"
    structure = parse_structure(reply.text)
    if structure.errors:
        return None, "; ".join(structure.errors)
    return format_structure(structure), None


# -- the run --------------------------------------------------------------------------------------
@dataclass
class AnnotateSummary:
    traces: int  # rows of the split with a teacher trace (after annotate.limit)
    skipped: int  # already in the output or the rejects file
    accepted: int
    rejected: int
    failed: int  # retries exhausted: written nowhere, a rerun retries them
    retries: int
    seconds: float
    output: str
    rejects: str

    @property
    def records_per_s(self) -> float:
        return (self.accepted + self.rejected) / self.seconds if self.seconds > 0 else 0.0


def load_traces(cfg: RLKDConfig) -> Tuple[List[Trace], int]:
    """(traces of `annotate.split` of the prepared dataset `data.name`, rows without a trace)."""
    from rlkd_ray.data import load_split, prepare_data

    prepare_data(cfg.data, cfg.paths.cache_dir)
    split = load_split(cfg.paths.cache_dir, cfg.data, cfg.annotate.split)
    if cfg.annotate.limit is not None:
        split = split.select(range(min(cfg.annotate.limit, len(split))))
    traces = [Trace(str(r["id"]), r["problem"], r["teacher_reasoning"]) for r in split
              if (r["teacher_reasoning"] or "").strip()]
    if not traces:
        raise AnnotationError(f"split {cfg.annotate.split!r} of data {cfg.data.name!r} has no teacher traces "
                              "to annotate")
    return traces, len(split) - len(traces)


def api_key(env_name: Optional[str]) -> Optional[str]:
    """The API key from the environment variable `annotate.api_key_env` (None: the endpoint needs none)."""
    if env_name is None:
        return None
    key = os.environ.get(env_name)
    if not key:
        raise AnnotationError(f"environment variable {env_name} (annotate.api_key_env) is not set; export the "
                              "API key there, or set annotate.api_key_env=null for an endpoint without one")
    return key


Outcome = Union[Reply, RequestRejected, RetriesExhausted]


def _via_endpoint(cfg: RLKDConfig, todo: List[Trace], prompt) -> Tuple[Iterator[Tuple[Trace, Outcome]], ChatClient]:
    a = cfg.annotate
    client = ChatClient(a.base_url, a.model, api_key(a.api_key_env), temperature=a.temperature,
                        max_tokens=a.max_tokens, timeout_s=a.timeout_s, max_retries=a.max_retries,
                        backoff_s=a.backoff_s, backoff_max_s=a.backoff_max_s, connections=a.concurrency,
                        seed=cfg.trainer.seed)

    def one(trace: Trace) -> Tuple[Trace, Outcome]:
        try:
            return trace, client.complete(prompt(trace))
        except (RequestRejected, RetriesExhausted) as e:
            return trace, e

    def results() -> Iterator[Tuple[Trace, Outcome]]:
        queue = iter(todo)
        with ThreadPoolExecutor(max_workers=a.concurrency, thread_name_prefix="annotate") as pool:
            pending: Set[Future] = set()
            try:
                while True:  # at most 2 x concurrency submitted, so a kill loses little and memory stays flat
                    for trace in queue:
                        pending.add(pool.submit(one, trace))
                        if len(pending) >= 2 * a.concurrency:
                            break
                    if not pending:
                        return
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        yield future.result()
            finally:
                for future in pending:
                    future.cancel()

    return results(), client


def _via_engine(cfg: RLKDConfig, todo: List[Trace], prompt) -> Tuple[Iterator[Tuple[Trace, Outcome]], EngineAnnotator]:
    annotator = EngineAnnotator(cfg)
    size = cfg.annotate.concurrency

    def results() -> Iterator[Tuple[Trace, Outcome]]:
        for start in range(0, len(todo), size):
            chunk = todo[start:start + size]
            yield from zip(chunk, annotator.complete_batch([prompt(t) for t in chunk]))

    return results(), annotator


def annotate(cfg: RLKDConfig) -> AnnotateSummary:
    """Annotate every trace of the split not yet in the output or rejects file; see the module docstring."""
    from tqdm import tqdm

    a, domain = cfg.annotate, cfg.reward.domain
    traces, no_trace = load_traces(cfg)
    accepted_log, rejected_log = JsonlLog(Path(a.output)), JsonlLog(rejects_path(a.output))
    done = accepted_log.ids() | rejected_log.ids()
    todo = [t for t in traces if t.id not in done]
    if no_trace:
        print(f"[annotate] {no_trace} rows have no teacher trace and are left out", flush=True)
    print(f"[annotate] {len(traces)} traces, {len(traces) - len(todo)} already done, {len(todo)} to annotate "
          f"with {a.model} ({a.backend}, domain {domain})", flush=True)

    def prompt(trace: Trace) -> Messages:
        return build_decompose_messages(trace.problem, trace.reasoning, domain, a.n_examples)

    make = _via_endpoint if a.backend == "openai" else _via_engine
    counts = {"accepted": 0, "rejected": 0, "failed": 0}
    failures: List[str] = []
    start = time.perf_counter()
    results, annotator = make(cfg, todo, prompt)
    bar = tqdm(total=len(todo), desc="annotate", unit="rec", dynamic_ncols=True, disable=not cfg.logging.progress)
    try:
        for trace, outcome in results:
            if isinstance(outcome, RetriesExhausted):
                counts["failed"] += 1
                failures.append(f"{trace.id}: {outcome}")
            elif isinstance(outcome, RequestRejected):
                rejected_log.append({"id": trace.id, "reason": str(outcome), "reply": None, "annotator": a.model})
                counts["rejected"] += 1
            else:
                target, reason = check_reply(outcome)
                if target is None:
                    rejected_log.append({"id": trace.id, "reason": reason, "reply": outcome.text, "annotator": a.model})
                    counts["rejected"] += 1
                else:
                    accepted_log.append({"id": trace.id, "problem": trace.problem, "reasoning": trace.reasoning,
                                         "domain": domain, "target": target, "annotator": a.model})
                    counts["accepted"] += 1
            bar.set_postfix(counts | {"retries": getattr(annotator, "retries", 0)}, refresh=False)
            bar.update(1)
    finally:
        bar.close()
        results.close()
        annotator.close()
        accepted_log.close()
        rejected_log.close()
    summary = AnnotateSummary(traces=len(traces), skipped=len(traces) - len(todo),
                              retries=getattr(annotator, "retries", 0), seconds=time.perf_counter() - start,
                              output=str(accepted_log.path), rejects=str(rejected_log.path), **counts)
    if failures:
        shown = "\n  ".join(failures[:5])
        raise AnnotationError(f"{len(failures)} requests failed after annotate.max_retries={a.max_retries} retries "
                              f"(not written; rerun to retry them):\n  {shown}\n{summary_text(summary)}")
    return summary


def summary_text(s: AnnotateSummary) -> str:
    return (f"[annotate] accepted {s.accepted}, rejected {s.rejected}, failed {s.failed}, skipped {s.skipped} of "
            f"{s.traces} traces; {s.retries} retries; {s.records_per_s:.1f} records/s\n"
            f"[annotate] targets: {s.output}\n[annotate] rejects: {s.rejects}")


def cmd_annotate(cfg: RLKDConfig, args) -> None:
    try:
        summary = annotate(cfg)
    except AnnotationError as e:
        print(f"rlkd annotate: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    print(summary_text(summary))
