"""The signal handlers of `rlkd train` and the process guard of a loopback cluster, in isolation
(tests/test_lifecycle.py sends real signals to a real `rlkd train`)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from rlkd_ray.controller.stopping import StopRequest, stop_on_signals

REPO = Path(__file__).resolve().parent.parent


def test_first_signal_asks_second_stops_at_once_then_handlers_come_back(capfd):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    stop = StopRequest()
    stop.checkpoint = "runs/x/checkpoints/step_000002"
    with pytest.raises(KeyboardInterrupt):
        with stop_on_signals(stop):
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.reason == "SIGTERM" and stop.signum == signal.SIGTERM
            assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) != before
            os.kill(os.getpid(), signal.SIGINT)
            pytest.fail("the second signal did not stop at once")
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    err = capfd.readouterr().err
    assert "SIGTERM: stopping after the step in flight (last checkpoint: runs/x/checkpoints/step_000002)" in err


def test_two_signals_before_the_handler_runs_still_stop_at_once():
    """Python runs the handler once for two signals that arrive while the main thread is in C code
    (the driver waiting in Ray); the wakeup fd counts both. (The 50 ms between the two lets the kernel
    deliver the first before the second is sent: two signals pending at once are one signal, whatever
    the program does. If a handler runs between them, the second stops at once the usual way.)"""
    stop = StopRequest()
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    t0 = time.perf_counter()
    hashlib.pbkdf2_hmac("sha256", b"k", b"salt", 20_000)
    two_seconds = int(20_000 * 2 / (time.perf_counter() - t0))  # iterations of one C call of about 2 s
    with pytest.raises(KeyboardInterrupt):
        with stop_on_signals(stop):
            pid = os.getpid()
            sender = subprocess.Popen(["sh", "-c", f"sleep 0.2; kill -INT {pid}; sleep 0.05; kill -INT {pid}"])
            deadline = time.time() + 30
            while sender.poll() is None and time.time() < deadline:
                hashlib.pbkdf2_hmac("sha256", b"k", b"salt", two_seconds)  # no handler runs until it returns
            pytest.fail("the two signals did not stop at once")
    assert stop.reason == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is before  # restored


GUARDED = """
import os, subprocess, sys, time
from rlkd_ray.process_guard import start_guard
before = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
time.sleep(0.2)
start_guard()
after = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print(before.pid, after.pid, flush=True)
time.sleep(60)
"""


def test_guard_ends_what_a_killed_process_started_after_it():
    """A child in a session of its own outlives a SIGKILLed parent, as Ray's agents do; the guard
    ends it. A child started before the guard is not the guard's."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    parent = subprocess.Popen([sys.executable, "-c", GUARDED], stdout=subprocess.PIPE, text=True, env=env)
    before, after = map(int, parent.stdout.readline().split())
    time.sleep(2)  # the guard records once a second
    parent.kill()
    parent.wait()
    try:
        deadline = time.time() + 20
        while psutil.pid_exists(after) and time.time() < deadline:
            time.sleep(0.2)
        assert not psutil.pid_exists(after) or psutil.Process(after).status() == psutil.STATUS_ZOMBIE
        assert psutil.pid_exists(before)
    finally:
        for pid in (before, after):
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)
