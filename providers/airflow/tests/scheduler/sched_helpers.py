"""Helpers of the scheduler tests."""

from __future__ import annotations

import json
import os
import random
import re
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


def free_port_pair(offset: int) -> int:
    """A port ``p`` below 65536 - ``offset`` such that ``p`` and ``p + offset`` are both free."""
    for _ in range(200):
        p = random.randrange(10000, 65535 - offset)
        try:
            for q in (p, p + offset):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", q))
        except OSError:
            continue
        return p
    raise RuntimeError(f"no free pair of ports {offset} apart")


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


def task_log_records(tasks_dir: Path, dag_id: str) -> dict[str, list[dict]]:
    """The records of each task's log files (Airflow 3 writes JSON lines), by task id;
    a line that is not JSON is kept as ``{"level": None, "event": line}``."""
    out: dict[str, list[dict]] = {}
    for path in sorted(tasks_dir.rglob("*.log")):
        parts = dict(p.split("=", 1) for p in path.relative_to(tasks_dir).parts[:-1] if "=" in p)
        if parts.get("dag_id") != dag_id:
            continue
        records = out.setdefault(parts["task_id"], [])
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                record = {"level": None, "event": line}
            records.append(record)
    return out


def check_call_output(tasks_dir: Path, dag_id: str, task_ids: list[str], n: int) -> None:
    """Each call of each task printed ``quelea-out <x> on stdout`` and ``quelea-err <x> on
    stderr``: both reach the task log once, in one info record with the call id, and no
    record at another level holds them (the runners' raw output at error level)."""
    logs = task_log_records(tasks_dir, dag_id)
    for task_id in task_ids:
        records = logs.get(task_id)
        assert records, f"no log of {dag_id}.{task_id} under {tasks_dir}: {sorted(logs)}"
        for x in range(n):
            for text in (f"quelea-out {x} on stdout", f"quelea-err {x} on stderr"):
                hits = [r for r in records if text in str(r.get("event"))]
                assert len(hits) == 1, (task_id, text, hits)
                assert hits[0].get("level") == "info", (task_id, hits[0])
                assert re.search(rf"call 0*{x} printed:", str(hits[0]["event"])), (task_id, hits[0])
