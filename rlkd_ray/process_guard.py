"""Nothing a loopback Ray cluster starts outlives the command that started it, however the command
ends (exit, exception, SIGKILL). Ray ends its GCS and raylet with the driver, but not always the
raylet's agents (DashboardAgent, RuntimeEnvAgent): after a `kill -9` of the driver they stay.

`start_guard()` starts a small guard process, in a session of its own (a Ctrl-C at the terminal does
not reach it). Once a second it records the ids (pid and start time) of every process below the
driver but those it had when the guard started (in a process with children before: only the cluster's).
It holds the read end of a pipe whose only write end the driver holds: when the driver ends, the
guard reads end-of-file and ends every recorded process still alive (SIGTERM, then SIGKILL after
`GRACE_S`). A process is matched by its recorded pid and start time, never by its name.

    python -m rlkd_ray.process_guard DRIVER_PID [PID_TO_LEAVE ...]   (stdin: the pipe)
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from typing import Set, Tuple

RECORD_EVERY_S = 1.0  # how often the guard records the driver's descendants
GRACE_S = 5.0  # between SIGTERM and SIGKILL of what a driver left behind


def start_guard() -> int:
    """Start the guard of this process's descendants; returns the pipe's write end, to keep open for
    as long as the cluster should live (closing it, or this process ending, makes the guard act)."""
    import psutil

    earlier = [str(p.pid) for p in psutil.Process().children(recursive=True)]
    read_end, write_end = os.pipe()  # not inherited by the processes Ray starts (Python fds are not)
    subprocess.Popen([sys.executable, "-m", "rlkd_ray.process_guard", str(os.getpid()), *earlier],
                     stdin=read_end, stdout=subprocess.DEVNULL, start_new_session=True)
    os.close(read_end)
    return write_end


def guard(driver_pid: int, leave: Set[int]) -> None:
    import psutil

    recorded: Set[Tuple[int, float]] = set()  # (pid, start time): a reused pid is another process
    leave = leave | {os.getpid()}
    while True:
        try:
            for p in psutil.Process(driver_pid).children(recursive=True):
                if p.pid not in leave:
                    recorded.add((p.pid, p.create_time()))
        except psutil.Error:  # the driver is gone (or a child went while being read)
            pass
        ready, _, _ = select.select([sys.stdin], [], [], RECORD_EVERY_S)
        if ready and not os.read(sys.stdin.fileno(), 1):
            break
    left = []
    for pid, started in recorded:
        try:
            p = psutil.Process(pid)
            if p.create_time() == started:
                p.terminate()
                left.append(p)
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(left, timeout=GRACE_S)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            continue


if __name__ == "__main__":
    guard(int(sys.argv[1]), {int(pid) for pid in sys.argv[2:]})
