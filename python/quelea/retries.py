"""Lithops' ``RetryingFunctionExecutor`` and ``RetryingFuture``
(``lithops/retries.py``, donated by Cubed), on quelea's engine retries.

Lithops resubmits each failed call from ``wait`` as a new one-element map.
Here the engine re-runs it (``map(..., retries=N, retry_user_errors=True)``),
on every backend and whoever waits: the attempt number is in each call's
stats, every attempt has its status in storage, and a future has one
outcome, its last attempt's. The wrappers keep Lithops' surface on top::

    from quelea.retries import RetryingFunctionExecutor

    with RetryingFunctionExecutor(quelea.FunctionExecutor()) as fexec:
        fs = fexec.map(flaky, range(10), retries=2)
        done, pending = fexec.wait(fs, throw_except=False)
        [f.result() for f in fs]   # raises the last attempt's error, if any
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .future import ALL_COMPLETED, ALWAYS, ANY_COMPLETED, ResponseFuture

__all__ = ["RetryingFunctionExecutor", "RetryingFuture"]


class RetryingFuture:
    """A future that runs its call again on failure, up to ``retries`` times.

    ``failure_count`` counts the failed attempts so far (Lithops' meaning: a
    call that succeeded on its third attempt has 2; one that failed all of
    ``retries + 1`` has ``retries + 1``).
    """

    def __init__(
        self,
        response_future: ResponseFuture,
        map_function: Callable[..., Any],
        input: Any,
        retries: int | None = None,
        _executor: Any = None,
        **kwargs: Any,
    ):
        self.response_future = response_future
        self.map_function = map_function
        self.input = input
        self.retries = retries or 0
        self.map_kwargs = kwargs
        self.cancelled = False
        self._executor = _executor
        # Failures of the futures this one replaced by retry().
        self._earlier_failures = 0

    # the engine's attempts of the current response future
    def _engine_attempt(self) -> int:
        return int(self.response_future.stats.get("attempt") or 0)

    @property
    def attempts(self) -> int:
        """How many times the call has run or is running."""
        return self._earlier_failures + self._engine_attempt() + 1

    @property
    def failure_count(self) -> int:
        failed_now = 1 if self.response_future.error else 0
        return self._earlier_failures + self._engine_attempt() + failed_now

    def failed_attempts(self) -> list[dict]:
        """The errors of the current future's earlier attempts, oldest first
        (``reason``, ``error_type``, ``message``, ``traceback``)."""
        f = self.response_future
        return [{k: v for k, v in e.items() if k != "payload"} for e in f._job.failed_attempts(f._index)]

    def _should_retry(self) -> bool:
        return not self.cancelled and self.failure_count <= self.retries

    def retry(self, function_executor: Any = None) -> None:
        """Runs the call again now, as a new one-element map with the same
        input and arguments, and follows that one from now on (with the
        retries this future has left)."""
        executor = function_executor if function_executor is not None else self._executor
        if executor is None:
            raise ValueError("this RetryingFuture has no executor to run the call again on: pass one")
        if isinstance(executor, RetryingFunctionExecutor):
            executor = executor.executor
        failures = self.failure_count
        left = max(self.retries - failures, 0)
        self.response_future = executor.map(
            self.map_function, [self.input], retries=left, retry_user_errors=True, **self.map_kwargs
        )[0]
        self._earlier_failures = failures

    # Lithops' name, which its wait() calls.
    _retry = retry

    def cancel(self) -> None:
        """Gives up on any further retry. The attempt running now is left
        alone and is the call's last."""
        self.cancelled = True
        f = self.response_future
        f._job.stop_retries(f._index)

    @property
    def done(self) -> bool:
        return self.response_future.done

    @property
    def error(self) -> bool:
        return self.response_future.error

    @property
    def success(self) -> bool:
        return self.response_future.success

    @property
    def stats(self) -> dict:
        return self.response_future.stats

    def status(
        self, throw_except: bool = True, internal_storage: Any = None, check_only: bool = False
    ) -> Any:
        """The call's status once its last attempt ended (raises that
        attempt's error with ``throw_except``)."""
        return self.response_future.status(throw_except=throw_except)

    def result(self, throw_except: bool = True, internal_storage: Any = None) -> Any:
        """The call's result, or its last attempt's error raised."""
        return self.response_future.result(throw_except=throw_except)

    def __repr__(self) -> str:
        return f"<RetryingFuture {self.response_future!r} failures={self.failure_count}/{self.retries}>"


class RetryingFunctionExecutor:
    """A ``FunctionExecutor`` whose maps retry failed calls (user exceptions
    included), ``retries`` times each (default: the config's retries)."""

    def __init__(self, executor: Any):
        self.executor = executor
        self.config = executor.config

    def __enter__(self) -> RetryingFunctionExecutor:
        self.executor.__enter__()
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self.executor.__exit__(exc_type, exc_value, traceback)

    def _retries_to_use(self, retries: int | None) -> int:
        if retries is not None:
            return retries
        config = self.config or {}
        lithops = config.get("lithops")
        if isinstance(lithops, dict) and lithops.get("retries") is not None:
            return int(lithops["retries"])
        return int((config.get("execution") or {}).get("retries") or 0)

    def map(
        self,
        map_function: Callable,
        map_iterdata: Any,
        chunksize: int | None = None,
        extra_args: Any = None,
        extra_env: dict | None = None,
        runtime_memory: int | None = None,
        obj_chunk_size: int | None = None,
        obj_chunk_number: int | None = None,
        obj_newline: str | None = "\n",
        timeout: float | None = None,
        include_modules: list | None = None,
        exclude_modules: list | None = None,
        retries: int | None = None,
    ) -> list[RetryingFuture]:
        """Like ``FunctionExecutor.map``; each call runs up to ``retries``
        more times when it fails (raises, crashes, times out, runs out of
        memory or is lost). Returns one ``RetryingFuture`` per call."""
        retries = self._retries_to_use(retries)
        map_kwargs = dict(
            chunksize=chunksize,
            extra_args=extra_args,
            extra_env=extra_env,
            runtime_memory=runtime_memory,
            obj_chunk_size=obj_chunk_size,
            obj_chunk_number=obj_chunk_number,
            obj_newline=obj_newline,
            timeout=timeout,
            include_modules=include_modules,
            exclude_modules=exclude_modules,
        )
        futures = self.executor.map(
            map_function, map_iterdata, retries=retries, retry_user_errors=True, **map_kwargs
        )
        inputs = list(map_iterdata) if not isinstance(map_iterdata, (str, bytes, dict)) else [map_iterdata]
        if len(inputs) != len(futures):
            # One call per chunk of data (obj maps): no element per call.
            inputs = [None] * len(futures)
        return [
            RetryingFuture(
                f, map_function=map_function, input=i, retries=retries, _executor=self, **map_kwargs
            )
            for i, f in zip(inputs, futures, strict=True)
        ]

    def wait(
        self,
        fs: list[RetryingFuture],
        throw_except: bool = True,
        return_when: Any = ALL_COMPLETED,
        download_results: bool = False,
        timeout: float | None = None,
        threadpool_size: int = 64,
        wait_dur_sec: float | None = None,
        show_progressbar: bool = True,
    ) -> tuple[list[RetryingFuture], list[RetryingFuture]]:
        """Waits until ``return_when`` holds over the calls' final outcomes
        (a failed attempt that runs again is not one); ``(done, pending)``.
        With ``throw_except``, a call that failed its last attempt raises."""
        fs = list(fs)
        if return_when not in (ALWAYS, ANY_COMPLETED, ALL_COMPLETED):
            return_when = ALL_COMPLETED
        by_future = {id(f.response_future): f for f in fs}
        done, pending = self.executor.wait(
            [f.response_future for f in fs],
            throw_except=throw_except,
            return_when=return_when,
            download_results=download_results,
            timeout=timeout,
            threadpool_size=threadpool_size,
            wait_dur_sec=wait_dur_sec,
            show_progressbar=show_progressbar,
        )
        return [by_future[id(f)] for f in done], [by_future[id(f)] for f in pending]

    def clean(
        self,
        fs: Any = None,
        cs: Any = None,
        clean_cloudobjects: bool = True,
        clean_fn: bool = False,
        force: bool = False,
    ) -> Any:
        if fs is not None:
            fs = [f.response_future if isinstance(f, RetryingFuture) else f for f in fs]
        return self.executor.clean(fs, cs, clean_cloudobjects, clean_fn, force)
