"""``quelea.multiprocessing``: the standard library's ``Pool`` on quelea.

For code that starts from ``multiprocessing`` (Lithops has
``lithops.multiprocessing`` for the same users): change the import and the
pool's tasks run as quelea calls, on whatever backend the config names::

    from quelea.multiprocessing import Pool

    with Pool() as pool:
        pool.map(square, range(10))

``Pool`` has the standard library's semantics: ``map`` / ``starmap`` keep
order and raise the first failing task's exception; ``imap`` yields in
order, ``imap_unordered`` as tasks finish; ``apply_async`` / ``map_async``
return results with ``get(timeout)``, ``wait``, ``ready``, ``successful`` and
the ``callback`` / ``error_callback`` run in a thread of the pool;
``close`` + ``join`` wait for every task, ``terminate`` (and leaving the
``with`` block) cancels what is left. Tasks are called exactly as the
standard library calls them: one argument per ``map`` item, ``*args`` per
``starmap`` item, never quelea's reserved parameters (``id``, ``storage``).

Only ``Pool`` is here: processes, queues, pipes and shared state
(``lithops.multiprocessing`` keeps them in Redis) are not.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import TimeoutError, cpu_count
from typing import Any

from .exceptions import WaitTimeoutError
from .executor import FunctionExecutor
from .future import ANY_COMPLETED, ResponseFuture

__all__ = ["Pool", "AsyncResult", "MapResult", "TimeoutError", "cpu_count"]

_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"
_INITIALIZED: set[str] = set()


class _Task:
    """A pool task as the standard library calls it; runs the pool's
    initializer once per runner process first."""

    def __init__(self, func: Callable, star: bool, init: tuple | None):
        from ._serialize import _ship_modules_by_value

        # The task travels inside this wrapper: its module (and the
        # initializer's) goes by value when a worker could not import it.
        for f in (func, init[1] if init else None):
            if f is not None:
                _ship_modules_by_value(f)
        self.func = func
        self.star = star
        self.init = init

    def _setup(self) -> None:
        if self.init is not None and self.init[0] not in _INITIALIZED:
            _INITIALIZED.add(self.init[0])
            self.init[1](*self.init[2])

    def __call__(self, item: Any) -> Any:
        self._setup()
        if self.star:
            return self.func(*item)
        return self.func(item)


class _Apply(_Task):
    def __call__(self, args: tuple, kwds: dict) -> Any:  # type: ignore[override]
        self._setup()
        return self.func(*args, **kwds)


class AsyncResult:
    """The standard library's ``AsyncResult`` over quelea futures."""

    def __init__(self, futures: Any, single: bool, callback: Any, error_callback: Any):
        self._futures = futures
        self._single = single
        self._outcome: tuple[bool, Any] | None = None
        self._lock = threading.Lock()
        if callback is not None or error_callback is not None:
            thread = threading.Thread(
                target=self._notify, args=(callback, error_callback), daemon=True, name="quelea-pool-callback"
            )
            thread.start()

    def _settle(self, timeout: float | None) -> tuple[bool, Any]:
        with self._lock:
            if self._outcome is not None:
                return self._outcome
            from ._wait import get_result

            try:
                if self._single:
                    value = self._futures[0].result(timeout=timeout)
                else:
                    value = get_result(self._futures, timeout=timeout, show_progressbar=False)
            except WaitTimeoutError:
                raise TimeoutError from None
            except Exception as e:  # noqa: BLE001 - the task's failure is the result's
                self._outcome = (False, e)
            else:
                self._outcome = (True, value)
            return self._outcome

    def _notify(self, callback: Any, error_callback: Any) -> None:
        ok, value = self._settle(None)
        if ok and callback is not None:
            callback(value)
        elif not ok and error_callback is not None:
            error_callback(value)

    def ready(self) -> bool:
        return self._outcome is not None or all(_finished(self._futures))

    def successful(self) -> bool:
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._settle(None)[0]

    def wait(self, timeout: float | None = None) -> None:
        try:
            self._settle(timeout)
        except TimeoutError:
            pass

    def get(self, timeout: float | None = None) -> Any:
        ok, value = self._settle(timeout)
        if not ok:
            raise value
        return value


def _jobs_of(entry: Any) -> list:
    """The engine jobs behind a pool submission (without making futures)."""
    if isinstance(entry, ResponseFuture):
        return [entry._job]
    lazy = entry._job_source() if hasattr(entry, "_job_source") else None
    if lazy is not None:
        return [lazy[0]]
    return list({id(f._job): f._job for f in entry}.values())


def _finished(entry: Any) -> list[bool]:
    return [job.done_count() == job.total for job in _jobs_of(entry)]


MapResult = AsyncResult
ApplyResult = AsyncResult


class Pool:
    """``multiprocessing.Pool`` on a quelea ``FunctionExecutor``.

    ``processes`` is the executor's ``max_workers`` (default: the config's,
    on the local backend the CPU count); ``config`` / ``config_file`` are the
    executor's. ``maxtasksperchild`` and ``context`` are accepted for
    compatibility: quelea's runners are reused and isolated per call.
    """

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable | None = None,
        initargs: Iterable = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        config: dict | None = None,
        config_file: str | None = None,
    ):
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        self._executor = FunctionExecutor(config=config, config_file=config_file, max_workers=processes)
        self._init = None
        if initializer is not None:
            self._init = (os.urandom(8).hex(), initializer, tuple(initargs))
        self._state = _RUN
        self._pending: list[Any] = []  # FuturesLists and futures

    def _check_running(self) -> None:
        if self._state != _RUN:
            raise ValueError("Pool not running")

    def _submit_map(self, func: Callable, iterable: Iterable, chunksize: int | None, star: bool) -> Any:
        self._check_running()
        items = list(iterable)
        if not items:
            return []
        if star:
            items = [(tuple(item),) for item in items]
        elif any(isinstance(item, tuple | dict) for item in items):
            # One argument per item, whatever its type: quelea would spread
            # a tuple or dict item into arguments.
            items = [(item,) for item in items]
        futures = self._executor.map(_Task(func, star, self._init), items, chunksize=chunksize)
        self._pending.append(futures)
        return futures

    def apply_async(
        self,
        func: Callable,
        args: Iterable = (),
        kwds: dict | None = None,
        callback: Callable | None = None,
        error_callback: Callable | None = None,
    ) -> AsyncResult:
        self._check_running()
        future = self._executor.call_async(_Apply(func, False, self._init), (tuple(args), dict(kwds or {})))
        self._pending.append(future)
        return AsyncResult([future], True, callback, error_callback)

    def apply(self, func: Callable, args: Iterable = (), kwds: dict | None = None) -> Any:
        return self.apply_async(func, args, kwds).get()

    def map_async(
        self,
        func: Callable,
        iterable: Iterable,
        chunksize: int | None = None,
        callback: Callable | None = None,
        error_callback: Callable | None = None,
    ) -> AsyncResult:
        return AsyncResult(
            self._submit_map(func, iterable, chunksize, False), False, callback, error_callback
        )

    def map(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        return self.map_async(func, iterable, chunksize).get()

    def starmap_async(
        self,
        func: Callable,
        iterable: Iterable,
        chunksize: int | None = None,
        callback: Callable | None = None,
        error_callback: Callable | None = None,
    ) -> AsyncResult:
        return AsyncResult(self._submit_map(func, iterable, chunksize, True), False, callback, error_callback)

    def starmap(self, func: Callable, iterable: Iterable, chunksize: int | None = None) -> list:
        return self.starmap_async(func, iterable, chunksize).get()

    def imap(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> Iterator:
        futures = self._submit_map(func, iterable, chunksize, False)
        return (f.result() for f in futures)

    def imap_unordered(self, func: Callable, iterable: Iterable, chunksize: int = 1) -> Iterator:
        futures = self._submit_map(func, iterable, chunksize, False)
        return self._as_completed(futures)

    @staticmethod
    def _as_completed(futures: list[ResponseFuture]) -> Iterator:
        from ._wait import wait

        pending = list(futures)
        while pending:
            done, not_done = wait(
                pending, throw_except=False, return_when=ANY_COMPLETED, show_progressbar=False
            )
            for f in done:
                yield f.result()
            pending = list(not_done)

    def close(self) -> None:
        if self._state == _RUN:
            self._state = _CLOSE

    def terminate(self) -> None:
        self._state = _TERMINATE
        for entry in self._pending:
            for job in _jobs_of(entry):
                if job.done_count() < job.total:
                    job.cancel()
        self._executor.close()

    def join(self) -> None:
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        if self._state == _CLOSE:
            from .future import ALL_COMPLETED, engine_wait

            jobs = [job for entry in self._pending for job in _jobs_of(entry)]
            if jobs:
                engine_wait([(job, None) for job in jobs], float(ALL_COMPLETED), None)
            self._executor.close()

    def __enter__(self) -> Pool:
        self._check_running()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.terminate()

    def __repr__(self) -> str:
        return f"<quelea.multiprocessing.Pool state={self._state} executor={self._executor.executor_id}>"
