"""Helpers of the scheduler tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

DAGS = Path(__file__).parent / "dags"
SERVER_START_S = 60.0
STOP_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(port: int, proc: subprocess.Popen, what: str, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {deadline_s:.0f} s")


def stop(proc: subprocess.Popen, what: str) -> None:
    """SIGTERM to the process group the process leads (started with start_new_session),
    SIGKILL after STOP_S."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        print(f"{what} (pid {proc.pid}) ignored SIGTERM for {STOP_S:.0f} s: SIGKILL", file=sys.stderr)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_S)
    # Its children (the group) get the rest of STOP_S to go.
    deadline = time.monotonic() + STOP_S
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)


def objects(root: str) -> list[str]:
    return [str(p) for p in Path(root).rglob("*") if p.is_file()]
