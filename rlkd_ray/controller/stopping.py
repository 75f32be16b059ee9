"""Stopping a run on a signal. SIGINT (Ctrl-C) and SIGTERM (Kubernetes, Slurm, `ray job stop`) ask
for a stop: the driver finishes the step in flight, checkpoints (`trainer.checkpoint_on_stop`) and
shuts its actors down. A second signal stops at once (KeyboardInterrupt; Ray ends the actors).

Python runs a handler only when the main thread is back in the interpreter, and two signals that
arrive before that (the driver waits in Ray for up to 2 s) run it once. So every signal is also
counted through `signal.set_wakeup_fd`, which writes one byte per signal: Ctrl-C pressed twice in
quick succession still stops at once.

    stop = StopRequest()
    with stop_on_signals(stop):
        ...  # the driver checks `stop.reason` once per loop iteration
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Why the run should stop (a signal's name), or None; and the newest checkpoint, which the
    driver keeps up to date so that a stop can name it at once."""

    def __init__(self) -> None:
        self.reason: Optional[str] = None
        self.signum: Optional[int] = None
        self.checkpoint: Optional[str] = None

    def request(self, signum: int) -> None:
        self.reason, self.signum = signal.Signals(signum).name, signum


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """Route SIGINT and SIGTERM to `stop` inside the block (main thread only); the previous handlers
    come back at its end. Install it after `ray.init`, which sets a SIGTERM handler of its own."""

    received, wakeup = os.pipe()  # one byte per signal delivered (set_wakeup_fd)
    os.set_blocking(received, False)
    os.set_blocking(wakeup, False)

    def handler(signum: int, frame) -> None:
        count = sum(b in SIGNALS for b in _read_all(received)) or 1  # this call may stand for several
        at_once = stop.reason is not None or count > 1  # the second signal: stop at once
        stop.request(signum)
        if at_once:
            _restore(previous, previous_fd)
            raise KeyboardInterrupt
        # os.write, not print: a signal handler may interrupt a print of the main thread.
        os.write(2, (f"\nrlkd: {stop.reason}: stopping after the step in flight (last checkpoint: "
                     f"{stop.checkpoint or 'none yet'}); send it again to stop at once\n").encode())

    previous = {s: signal.getsignal(s) for s in SIGNALS}
    previous_fd = signal.set_wakeup_fd(wakeup, warn_on_full_buffer=False)
    for s in SIGNALS:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        _restore(previous, previous_fd)
        os.close(received)
        os.close(wakeup)


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 512)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _restore(previous: dict, previous_fd: int) -> None:
    for s, h in previous.items():
        signal.signal(s, h)
    signal.set_wakeup_fd(previous_fd)
