"""`rlkd annotate` against a real OpenAI-compatible HTTP server on loopback, started by the test:
retries on 429 / 500 / 503 / timeouts, rejects (an unparseable reply, a 400), resume after the
process is killed, and the API key never showing in outputs."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rlkd_ray.config import load_config
from rlkd_ray.data import prepare_data
from rlkd_ray.gsrm import Step, Structure, format_structure
from rlkd_ray.offline.annotate import (
    AnnotationError,
    JsonlLog,
    Reply,
    annotate,
    api_key,
    check_reply,
    parse_retry_after,
    rejects_path,
    retry_delay,
)

KEY = "sk-test-5f3a9c0e-not-a-real-key"
REQUEST_CAP = 200  # the server answers 400 to every request past this many: a retry loop cannot run away
_ID = re.compile(r"Problem (p\d+):")


def expected_structure(pid: str) -> Structure:
    n = int(pid[1:])
    return Structure([Step("Add the two numbers, since the sum is asked.", f"What is {n} + 1?", str(n + 1)),
                      Step("Check the sum by subtracting.", f"Is {n + 1} - 1 = {n}?", "Yes")], str(n + 1))


class ChatServer:
    """`POST /v1/chat/completions`, OpenAI response shape. `script[id]` lists what the first attempts
    of that id get: ("status", code, retry_after) or ("sleep", seconds); later attempts get the
    structured reply, or `malformed[id]` as the message content."""

    def __init__(self, script=None, malformed=None, delay_s=0.0):
        self.script, self.malformed, self.delay_s = script or {}, malformed or {}, delay_s
        self.attempts = Counter()
        self.log = []  # ids in arrival order
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"app": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    app: ChatServer

    def log_message(self, *args):
        pass

    def _send(self, code, body, headers=()):
        data = json.dumps(body).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass

    def do_POST(self):
        app = self.app
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions":
            return self._send(404, {"error": f"no route {self.path}"})
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            return self._send(401, {"error": "bad key"})
        pid = _ID.search(body["messages"][-1]["content"]).group(1)
        with app.lock:
            attempt = app.attempts[pid]
            app.attempts[pid] += 1
            app.log.append(pid)
            over_cap = len(app.log) > REQUEST_CAP
        if over_cap:
            return self._send(400, {"error": "request cap reached"})
        time.sleep(app.delay_s)
        script = app.script.get(pid, [])
        if attempt < len(script):
            action = script[attempt]
            if action[0] == "sleep":
                time.sleep(action[1])
            else:
                headers = [("Retry-After", action[2])] if action[2] is not None else []
                return self._send(action[1], {"error": {"message": f"scripted {action[1]}"}}, headers)
        content = app.malformed.get(pid, format_structure(expected_structure(pid)))
        self._send(200, {"id": "cmpl-1", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": content}}]})


def write_traces(path: Path, n: int) -> list:
    ids = [f"p{i}" for i in range(n)]
    with open(path, "w") as f:
        for pid in ids:
            i = int(pid[1:])
            f.write(json.dumps({"id": pid, "problem": f"Problem {pid}: what is {i} + 1?", "answer": str(i + 1),
                                "teacher_reasoning": f"{i} + 1 = {i + 1}. Check: {i + 1} - 1 = {i}."}) + "\n")
    return ids


def overrides(tmp_path, server, **annotate):
    out = [f"paths.cache_dir={tmp_path / 'cache'}", "data.name=traces", "data.train.kind=file",
           f"data.train.path={tmp_path / 'traces.jsonl'}", "data.train.columns.id=id", "data.eval=[]",
           f"annotate.base_url={server.base_url}", "annotate.model=test-annotator",
           "annotate.api_key_env=RLKD_TEST_ANNOTATOR_KEY", f"annotate.output={tmp_path / 'out' / 'ann.jsonl'}",
           "annotate.backoff_s=0.01", "annotate.backoff_max_s=0.05", "logging.progress=false"]
    return out + [f"annotate.{k}={v}" for k, v in annotate.items()]


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("RLKD_TEST_ANNOTATOR_KEY", KEY)


def test_retries_rejects_and_rerun(tmp_path, key_env, capsys):
    ids = write_traces(tmp_path / "traces.jsonl", 10)
    script = {"p0": [("status", 429, "0")], "p1": [("status", 500, None), ("status", 500, None)],
              "p4": [("status", 400, None)], "p5": [("sleep", 1.5)], "p6": [("status", 503, None)] * 4}
    server = ChatServer(script, malformed={"p2": "Sure! First add the numbers, then check the sum."})
    try:
        cfg = load_config(None, overrides(tmp_path, server, concurrency=4, timeout_s=0.5, max_retries=3))
        prepare_data(cfg.data, cfg.paths.cache_dir)
        with pytest.raises(AnnotationError, match=r"1 requests failed.*\n  p6: HTTP 503 \(after 4 attempts\)"):
            annotate(cfg)
        # 429 once, 500 twice, a timeout once: each retried to success; 503 four times: out of retries.
        assert server.attempts == Counter({"p0": 2, "p1": 3, "p5": 2, "p6": 4, "p2": 1, "p3": 1, "p4": 1,
                                           "p7": 1, "p8": 1, "p9": 1})
        out, rejects = Path(cfg.annotate.output), rejects_path(cfg.annotate.output)
        accepted = {r["id"]: r for r in read_jsonl(out)}
        assert sorted(accepted) == sorted(set(ids) - {"p2", "p4", "p6"})
        r3 = accepted["p3"]
        assert r3["target"] == format_structure(expected_structure("p3"))
        assert r3["problem"] == "Problem p3: what is 3 + 1?" and r3["reasoning"].startswith("3 + 1 = 4.")
        assert (r3["domain"], r3["annotator"]) == ("math", "test-annotator")
        reasons = {r["id"]: r["reason"] for r in read_jsonl(rejects)}
        assert reasons.keys() == {"p2", "p4"}
        assert "no step tags found" in reasons["p2"] and reasons["p4"].startswith("HTTP 400")

        summary = annotate(cfg)  # the rerun asks only for p6, which now succeeds
        assert (summary.traces, summary.skipped, summary.accepted, summary.rejected, summary.failed) == (10, 9, 1, 0, 0)
        assert server.attempts["p6"] == 5 and sum(server.attempts.values()) == 18
        written = [r["id"] for r in read_jsonl(out) + read_jsonl(rejects)]
        assert sorted(written) == sorted(ids)  # every id once
        captured = capsys.readouterr()
        for text in (out.read_text(), rejects.read_text(), captured.out, captured.err):
            assert KEY not in text
    finally:
        server.close()


def test_resume_after_kill(tmp_path, key_env):
    ids = write_traces(tmp_path / "traces.jsonl", 12)
    server = ChatServer(delay_s=0.25)
    try:
        args = overrides(tmp_path, server, concurrency=1)
        cfg = load_config(None, args)
        prepare_data(cfg.data, cfg.paths.cache_dir)
        out = Path(cfg.annotate.output)
        cmd = [sys.executable, "-m", "rlkd_ray.cli", "annotate", *args]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1])
        deadline = time.monotonic() + 120
        while len(read_jsonl(out)) < 3:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no records written within 120 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        first = [r["id"] for r in read_jsonl(out)]
        assert 3 <= len(first) < len(ids)
        asked_before = len(server.log)

        server.delay_s = 0.0
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parents[1], timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"{len(first)} already done" in done.stdout
        final = [r["id"] for r in read_jsonl(out)]
        assert len(final) == len(set(final)) == len(ids) and set(final) == set(ids)
        assert not set(server.log[asked_before:]) & set(first)  # nothing written was asked again
        assert KEY not in done.stdout + done.stderr
    finally:
        server.close()


def test_log_drops_a_cut_last_record_and_names_a_bad_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": "a", "target": "x"}\n{"id": "b", "tar')
    log = JsonlLog(path)
    assert log.ids() == {"a"}
    assert path.read_text() == '{"id": "a", "target": "x"}\n'
    log.append({"id": "c"})
    log.close()
    assert JsonlLog(path).ids() == {"a", "c"}
    path.write_text('{"id": "a"}\nnot json\n')
    with pytest.raises(AnnotationError, match=r"a\.jsonl line 2"):
        JsonlLog(path).ids()


def test_retry_delay_and_retry_after():
    rng = random.Random(0)
    assert retry_delay(0, 1.0, 60.0, retry_after=7.0, rng=rng) == 7.0  # the server's word first
    assert retry_delay(0, 1.0, 60.0, retry_after=300.0, rng=rng) == 60.0  # capped
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (3, 8.0), (10, 60.0)]:  # base·2^attempt, capped at 60
        d = retry_delay(attempt, 1.0, 60.0, retry_after=None, rng=rng)
        assert ceiling / 2 <= d <= ceiling
    assert parse_retry_after("3") == 3.0 and parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


def test_check_reply_and_missing_key(monkeypatch):
    good = format_structure(expected_structure("p1"))
    assert check_reply(Reply(good, "stop")) == (good, None)
    canonical = "[sub-think 1]: a\n[Query 1]: b\n[Answer 1]: c\nSo the final answer is: c"
    assert check_reply(Reply("**[sub-think 1]:** a\n[Query 1]: b\n[Answer 1]: c\nSo the final answer is: c", "stop")) \
        == (canonical, None)
    assert check_reply(Reply(good, "length")) == (None, "reply cut at annotate.max_tokens")
    target, reason = check_reply(Reply("[sub-think 1]: a\n[Answer 1]: c\nSo the final answer is: c", "stop"))
    assert target is None and reason == "step 1: missing [Query 1]"
    monkeypatch.delenv("RLKD_UNSET_KEY_VAR", raising=False)
    with pytest.raises(AnnotationError, match="RLKD_UNSET_KEY_VAR"):
        api_key("RLKD_UNSET_KEY_VAR")
    assert api_key(None) is None


def test_local_engine_annotator(tmp_path, tiny_model_path):
    """The engine backend on a random tiny model: every reply is rejected with its reason, and a
    prompt over the context limit is rejected without generating."""
    write_traces(tmp_path / "traces.jsonl", 3)
    with open(tmp_path / "traces.jsonl", "a") as f:
        f.write(json.dumps({"id": "long", "problem": "Problem p9: long", "answer": "1",
                            "teacher_reasoning": "and then " * 600}) + "\n")
    cfg = load_config(None, [
        f"paths.cache_dir={tmp_path / 'cache'}", "data.name=traces", "data.train.kind=file",
        f"data.train.path={tmp_path / 'traces.jsonl'}", "data.train.columns.id=id", "data.eval=[]",
        "annotate.backend=engine", f"annotate.model={tiny_model_path}", "annotate.max_tokens=8",
        "annotate.n_examples=0", "annotate.concurrency=2", "annotate.engine.max_model_len=1024",
        f"annotate.output={tmp_path / 'ann.jsonl'}", "model.dtype=float32", "logging.progress=false"])
    summary = annotate(cfg)
    assert (summary.accepted, summary.rejected, summary.failed) == (0, 4, 0)
    rejects = {r["id"]: r for r in read_jsonl(rejects_path(cfg.annotate.output))}
    assert rejects["long"]["reason"].startswith("prompt too long") and rejects["long"]["reply"] is None
    for pid in ("p0", "p1", "p2"):
        assert isinstance(rejects[pid]["reply"], str) and rejects[pid]["reason"]
