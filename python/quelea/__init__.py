"""quelea: run ordinary Python functions a thousand at a time.

The Lithops/PyWren API on a Rust engine: change ``import lithops`` to
``import quelea`` and existing code runs::

    import quelea

    def my_map_function(id, x):
        return x + 7

    pw = quelea.FunctionExecutor()
    pw.map(my_map_function, [1, 2, 3, 4])
    pw.get_result()  # [8, 9, 10, 11]
"""

from __future__ import annotations

import importlib

# Not `from typing import TYPE_CHECKING`: typing costs a client's start-up ~3 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from . import exceptions
    from ._engine import __version__
    from ._wait import get_result, wait
    from .executor import FunctionExecutor
    from .future import ALL_COMPLETED, ALWAYS, ANY_COMPLETED, FuturesList, ResponseFuture
    from .retries import RetryingFunctionExecutor, RetryingFuture
    from .storage import CloudObject, Storage

    LocalhostExecutor = FunctionExecutor

# The public names, imported on first use: a runner (`python -m
# quelea.worker`) then loads only what it runs, not the executor and the
# engine, and a client pays only for what it touches.
_LAZY = {
    "exceptions": ("exceptions", None),
    "__version__": ("_engine", "__version__"),
    "FunctionExecutor": ("executor", "FunctionExecutor"),
    "LocalhostExecutor": ("executor", "FunctionExecutor"),
    "ALL_COMPLETED": ("future", "ALL_COMPLETED"),
    "ALWAYS": ("future", "ALWAYS"),
    "ANY_COMPLETED": ("future", "ANY_COMPLETED"),
    "FuturesList": ("future", "FuturesList"),
    "ResponseFuture": ("future", "ResponseFuture"),
    "RetryingFunctionExecutor": ("retries", "RetryingFunctionExecutor"),
    "RetryingFuture": ("retries", "RetryingFuture"),
    "CloudObject": ("storage", "CloudObject"),
    "Storage": ("storage", "Storage"),
    "get_result": ("_wait", "get_result"),
    "wait": ("_wait", "wait"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'quelea' has no attribute {name!r}") from None
    found = importlib.import_module(f".{module}", __name__)
    value = found if attr is None else getattr(found, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def attach(handle: str, config: dict | None = None, config_file: str | None = None) -> FuturesList:
    """Follows a job started elsewhere (``executor.job_handle(futures)``)."""
    import json

    from .executor import config_overrides
    from .future import FuturesList, ResponseFuture, attach_job

    overrides = config_overrides(config)
    job = attach_job(handle, json.dumps(overrides) if overrides else None, config_file)
    return FuturesList([ResponseFuture(job, i, None, job.job_id, handle=handle) for i in range(job.total)])


def _distinct_jobs(fs: Any) -> list:
    from .future import ResponseFuture

    futures = [fs] if isinstance(fs, ResponseFuture) else list(fs)
    jobs: dict[int, Any] = {}
    for f in futures:
        jobs.setdefault(id(f._job), f._job)
    return list(jobs.values())


def cancel(fs: Any) -> None:
    """Cancels the jobs of these futures, wherever they run and whoever
    started them: the job's cancel marker stops its calls on every runtime."""
    for job in _distinct_jobs(fs):
        job.cancel()


def progress(fs: Any) -> dict:
    """``{"total", "done", "failed"}`` over these futures' calls (elements)."""
    total = done = failed = 0
    for job in _distinct_jobs(fs):
        states = job.states()
        total += len(states)
        done += sum(s in ("success", "error") for s in states)
        failed += states.count("error")
    return {"total": total, "done": done, "failed": failed}


def clean_job(handle: str, config: dict | None = None, config_file: str | None = None) -> int:
    """Deletes every storage object of the job behind ``handle`` (a detached
    job's last reader cleans it), and its executor's stored functions once no
    other job of that executor is left; returns how many."""
    import json

    from . import _engine
    from .executor import config_overrides

    overrides = config_overrides(config)
    return _engine.clean_job(handle, json.dumps(overrides) if overrides else None, config_file)


def host_lease(handle: str, config: dict | None = None, config_file: str | None = None) -> dict | None:
    """The heartbeat of the host running the detached local job behind ``handle``:
    ``{"pid", "machine", "ts", "interval_s", "taken", "age_s", "gone"}``, or
    ``None`` when the job has none (a remote backend's job, a finished or
    cleaned one). The submitting client writes the first lease in the host's
    name before it hands the job over (``taken`` false), so a host that dies
    before it took the job is seen gone too.

    The host rewrites it every ``interval_s`` seconds while the job has
    unfinished calls; ``gone`` is true once it has not for several intervals,
    or when the host ran on this machine and its process has exited: the
    job's unfinished calls will then never finish. It is read from the job's
    storage, so it works from any machine that can read that storage."""
    import json

    from . import _engine
    from .executor import config_overrides

    overrides = config_overrides(config)
    text = _engine.host_lease(handle, json.dumps(overrides) if overrides else None, config_file)
    return None if text is None else json.loads(text)


def job_leases(handle: str, config: dict | None = None, config_file: str | None = None) -> list[dict]:
    """Every lease of the job behind ``handle``, as :func:`host_lease` gives
    them: its host's (a detached local job; ``role`` ``"host"``) and one per
    worker server with calls of the job (``http``; ``role`` ``"server"``),
    written when the server accepts the calls and kept while it runs them. A
    lease that is ``gone`` means some of the job's calls will never finish."""
    import json

    from . import _engine
    from .executor import config_overrides

    overrides = config_overrides(config)
    return json.loads(_engine.job_leases(handle, json.dumps(overrides) if overrides else None, config_file))


__all__ = [
    "FunctionExecutor",
    "LocalhostExecutor",
    "ResponseFuture",
    "FuturesList",
    "RetryingFunctionExecutor",
    "RetryingFuture",
    "Storage",
    "CloudObject",
    "wait",
    "get_result",
    "attach",
    "cancel",
    "progress",
    "clean_job",
    "host_lease",
    "job_leases",
    "ALWAYS",
    "ANY_COMPLETED",
    "ALL_COMPLETED",
    "exceptions",
    "__version__",
]
