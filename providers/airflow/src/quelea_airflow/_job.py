"""Jobs that outlive the Airflow task that submitted them.

On the local backend, quelea's runners are children of the process that made
the ``FunctionExecutor`` and die with it. A deferrable task's process exits
after deferring, so it submits through a detached process
(``python -m quelea_airflow._detached``, in its own session) that owns the
executor and lives until the job is finished. The job is described by a small
JSON-able dict (:func:`submit_detached` returns it; the trigger carries it):

    {"kind": "map", "handles": [<job handle JSON>, ...], "executor_id": "...",
     "pid": 1234, "pid_start": "<start time of that pid>", "host": "...",
     "workdir": "/tmp/quelea-airflow-..."}

``handles`` has one handle for ``call_async``/``map`` and two (map, reduce) for
``map_reduce``; the last one holds the task's result. No secrets are in it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import cloudpickle

KINDS = ("call_async", "map", "map_reduce")
SUBMIT_DEADLINE_S = 120.0
STOP_GRACE_S = 10.0
# How long a fresh attach may take to show calls that are already finished.
FIRST_LISTING_S = 1.0
# `quelea_core::keys` (docs/architecture.md): every object of an executor's jobs.
JOBS_PREFIX = "quelea/jobs/{executor_id}/"


class DetachedSubmitError(RuntimeError):
    """The detached process could not submit the job; the message says why."""


def _ship_by_value(*funcs: Any) -> dict[str, str]:
    """Functions from DAG files (``unusual_prefix_*`` modules) and other modules
    another interpreter could not import travel by value, as quelea's own payloads
    do. Returns ``{module name: file}`` of those modules, so that the detached
    process can name the file in remote tracebacks."""
    try:
        from quelea._serialize import _ship_modules_by_value
    except ImportError:  # pragma: no cover - older quelea
        return {}
    modules: dict[str, str] = {}
    for func in funcs:
        if func is not None:
            for name, (path, _source) in _ship_modules_by_value(func).items():
                modules[name] = path
    return modules


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (guards against PID reuse); None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int | None, start: str | None = None) -> bool:
    """True when ``pid`` runs (not a zombie) and, if given, started at ``start``."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if fields[0] in ("Z", "X"):
        return False
    return start is None or fields[19] == start


def same_host(job: dict) -> bool:
    return job.get("host") == socket.gethostname()


def submit_detached(
    kind: str,
    args: tuple,
    kwargs: dict,
    config: dict,
    executor_kwargs: dict | None = None,
    deadline: float | None = None,
    submit_deadline: float = SUBMIT_DEADLINE_S,
) -> dict:
    """Starts ``python -m quelea_airflow._detached``, which creates a
    ``FunctionExecutor(config=config, **executor_kwargs)`` and calls
    ``executor.<kind>(*args, **kwargs)``; returns the job dict once it has
    submitted. The process stays until the job is finished, cancelled
    (SIGTERM), or ``deadline`` (epoch seconds) passes."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if config.get("storage") == "memory":
        raise ValueError(
            "storage `memory` cannot be followed from another process: deferrable quelea operators "
            "need a shared storage (localdisk or s3)"
        )
    config = json.loads(json.dumps(config))
    config.setdefault("execution", {})["data_cleaner"] = False  # the operator reads results, then cleans
    by_value = _ship_by_value(*(a for a in args if callable(a)))
    workdir = tempfile.mkdtemp(prefix="quelea-airflow-")
    spec = {
        "kind": kind,
        "args": args,
        "kwargs": kwargs,
        "config": config,
        "executor_kwargs": executor_kwargs or {},
        "deadline": deadline,
        "by_value_modules": by_value,
    }
    spec_path = os.path.join(workdir, "spec.pkl")
    fd = os.open(spec_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cloudpickle.dumps(spec))
    env = dict(os.environ)
    # The detached process imports what this one can (DAG folder helpers, plugins).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    log_path = os.path.join(workdir, "detached.log")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "quelea_airflow._detached", workdir],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
            cwd=workdir,
        )
    _CHILDREN.append(proc)
    submitted = os.path.join(workdir, "submitted.json")
    failed = os.path.join(workdir, "failed.json")
    limit = time.monotonic() + submit_deadline
    while True:
        if os.path.exists(submitted):
            with open(submitted, encoding="utf-8") as f:
                info = json.load(f)
            break
        if os.path.exists(failed):
            with open(failed, encoding="utf-8") as f:
                err = json.load(f)
            proc.wait(timeout=STOP_GRACE_S)
            _remove(workdir)
            raise DetachedSubmitError(f"{err['error_type']}: {err['message']}\n{err['traceback']}")
        code = proc.poll()
        if code is not None:
            tail = _tail(log_path)
            _remove(workdir)
            raise DetachedSubmitError(
                f"the detached quelea process exited with code {code} before submitting:\n{tail}"
            )
        if time.monotonic() > limit:
            stop_process(proc.pid, process_start_time(proc.pid), grace=STOP_GRACE_S)
            tail = _tail(log_path)
            _remove(workdir)
            raise DetachedSubmitError(
                f"the detached quelea process did not submit within {submit_deadline:.0f} s:\n{tail}"
            )
        time.sleep(0.02)
    return {
        "kind": kind,
        "handles": info["handles"],
        "executor_id": info["executor_id"],
        "pid": proc.pid,
        "pid_start": process_start_time(proc.pid),
        "host": socket.gethostname(),
        "workdir": workdir,
    }


# Popen objects of detached processes, kept so that this process reaps them if
# it lives on (dag.test(), a long-lived worker) instead of leaving zombies.
_CHILDREN: list[subprocess.Popen] = []


def _reap() -> None:
    for proc in list(_CHILDREN):
        if proc.poll() is not None:
            _CHILDREN.remove(proc)


def _remove(workdir: str) -> None:
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)


def _tail(path: str, limit: int = 4000) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()[-limit:]
    except OSError:
        return "(no log)"


def stop_process(pid: int | None, start: str | None, grace: float = STOP_GRACE_S) -> bool:
    """SIGTERM (the detached process cancels its job), then SIGKILL to its session
    after ``grace`` seconds. Returns True when the process was running."""
    _reap()
    if not process_alive(pid, start):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    limit = time.monotonic() + grace
    while time.monotonic() < limit:
        _reap()
        if not process_alive(pid, start):
            return True
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _reap()
    return True


def attach_all(job: dict, config: dict) -> list:
    import quelea

    return [quelea.attach(h, config=config) for h in job["handles"]]


class Watcher:
    """Follows a job's parts through storage. A ``map_reduce``'s reduce part has no
    objects until its map is done, so parts are attached when they appear."""

    def __init__(self, job: dict, config: dict):
        self.job = job
        self.config = config
        self.totals = [json.loads(h)["total_calls"] for h in job["handles"]]
        self.parts: list[Any] = [None] * len(job["handles"])

    def _part(self, i: int) -> Any:
        if self.parts[i] is None:
            import quelea
            from quelea.exceptions import JobHandleError, WaitTimeoutError

            try:
                futures = quelea.attach(self.job["handles"][i], config=self.config)
            except JobHandleError:
                if i == 0:
                    raise  # the first part exists as soon as it is submitted
                return None
            # An attached job's states fill in from storage a moment after attach():
            # wait (briefly) for them so that one-shot checks are not stale.
            try:
                quelea.wait(
                    futures, return_when=quelea.ALL_COMPLETED, timeout=FIRST_LISTING_S, throw_except=False
                )
            except WaitTimeoutError:
                pass
            self.parts[i] = futures
        return self.parts[i]

    def progress(self) -> dict:
        """Counts over every call of every part, and the first failed call."""
        done = failed = 0
        first_failed = None
        for i in range(len(self.totals)):
            futures = self._part(i)
            if futures is None:
                continue
            for index, state in enumerate(futures[0]._job.states()):
                if state in ("success", "error"):
                    done += 1
                if state == "error":
                    failed += 1
                    if first_failed is None:
                        first_failed = [i, index]
        return {"total": sum(self.totals), "done": done, "failed": failed, "first_failed": first_failed}


def progress(job: dict, config: dict) -> dict:
    return Watcher(job, config).progress()


def results(job: dict, config: dict, timeout: float = 60.0) -> Any:
    """The task's result: a list for ``map``, the value for the others."""
    import quelea

    futures = attach_all(job, config)[-1]
    values = quelea.get_result(futures, timeout=timeout)
    return values if job["kind"] == "map" else values[0]


def raise_failed_call(job: dict, config: dict, first_failed: list, timeout: float = 60.0) -> None:
    """Raises the failed call's exception (original type, remote traceback as ``__cause__``)."""
    import quelea

    part, index = first_failed
    futures = attach_all(job, config)[part]
    quelea.get_result([futures[index]], timeout=timeout)
    raise RuntimeError(f"call {index} of job part {part} was reported failed but has no error")


def clean_storage(job: dict, config: dict) -> int:
    """Deletes every object of the job's executor (it ran only this job); returns how many."""
    import quelea

    storage = quelea.Storage(config=config)
    keys = storage.list_keys(storage.bucket, prefix=JOBS_PREFIX.format(executor_id=job["executor_id"]))
    if keys:
        storage.delete_objects(storage.bucket, keys)
    return len(keys)


def remove_workdir(job: dict) -> None:
    import shutil

    workdir = job.get("workdir")
    if workdir and os.path.basename(workdir).startswith("quelea-airflow-") and same_host(job):
        shutil.rmtree(workdir, ignore_errors=True)


def finish(job: dict, config: dict, log: Any = None) -> None:
    """After the results are read (or the job failed): stop the detached process,
    delete the job's objects and the work directory. Never raises."""
    try:
        if same_host(job):
            stop_process(job.get("pid"), job.get("pid_start"))
    except Exception as e:  # noqa: BLE001
        if log:
            log.warning("could not stop the detached quelea process %s: %s", job.get("pid"), e)
    try:
        n = clean_storage(job, config)
        if log:
            log.info("Deleted %d storage object(s) of quelea executor %s", n, job["executor_id"])
    except Exception as e:  # noqa: BLE001
        if log:
            log.warning("could not delete the objects of quelea executor %s: %s", job.get("executor_id"), e)
    remove_workdir(job)
