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

from . import exceptions
from ._engine import __version__
from .executor import FunctionExecutor
from .future import ALL_COMPLETED, ALWAYS, ANY_COMPLETED, FuturesList, ResponseFuture
from .storage import CloudObject, Storage
from .wait import get_result, wait

LocalhostExecutor = FunctionExecutor


def attach(handle: str, config: dict | None = None, config_file: str | None = None) -> FuturesList:
    """Follows a job started elsewhere (``executor.job_handle(futures)``)."""
    import json

    from .executor import config_overrides
    from .future import attach_job

    overrides = config_overrides(config)
    job = attach_job(handle, json.dumps(overrides) if overrides else None, config_file)
    return FuturesList([ResponseFuture(job, i, None, job.job_id, handle=handle) for i in range(job.total)])


__all__ = [
    "FunctionExecutor",
    "LocalhostExecutor",
    "ResponseFuture",
    "FuturesList",
    "Storage",
    "CloudObject",
    "wait",
    "get_result",
    "attach",
    "ALWAYS",
    "ANY_COMPLETED",
    "ALL_COMPLETED",
    "exceptions",
    "__version__",
]
