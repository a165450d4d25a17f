"""Real servers the tests start in child processes (an S3-compatible store, `vllm serve`, a Ray head): one way to pick
a port, start one, wait until it answers and stop it, whichever test uses it.

A server runs in its own session, so the process group it leads holds every process it starts (an engine core, a
Raylet) and stopping it never touches anything else on the machine. It is stopped by its PID: SIGTERM first, then
SIGKILL to whatever of its group is left after the grace time. A server that exits, or does not answer in time, fails
the test with the end of its log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

LOG_TAIL_LINES = 40


def free_port() -> int:
    """A port nobody listened on a moment ago (the OS picks it; the server binds it right after)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"


@contextlib.contextmanager
def running_server(name: str, command: Sequence[str], *, env: Mapping[str, str], workdir: Path,
                   answers: Callable[[], bool], start_timeout_s: float,
                   stop_timeout_s: float = 30.0) -> Iterator[subprocess.Popen]:
    """`command` running in `workdir` (its output in `workdir/server.log`) once `answers()` says it serves."""
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, env=dict(env), cwd=workdir,
                                   start_new_session=True)
    try:
        _wait_until_serving(name, process, answers, log_path, start_timeout_s)
        yield process
    finally:
        stop(process, stop_timeout_s)


def _wait_until_serving(name: str, process: subprocess.Popen, answers: Callable[[], bool], log_path: Path,
                        timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{name} exited with status {process.returncode} before it answered; the end of its log:\n"
                        f"{log_tail(log_path)}")
        if answers():
            return
        time.sleep(0.2)
    pytest.fail(f"{name} did not answer within {timeout_s:.0f} s; the end of its log:\n{log_tail(log_path)}")


def stop(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM lets the server stop what it started; whatever of its group is left after the grace time is killed."""
    if process.poll() is None:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
