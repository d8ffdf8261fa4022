"""Operators that run Python functions on quelea: one call, a map, a map-reduce."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

from quelea_airflow import _job
from quelea_airflow._compat import AirflowException, BaseOperator, Context, default_deferrable, xcom_serialize
from quelea_airflow.hooks.quelea import DEFAULT_CONN_ID, QueleaHook
from quelea_airflow.triggers.quelea import QueleaJobTrigger

XCOM_JOB_KEY = "quelea_job"


def remote_traceback(exc: BaseException) -> str | None:
    """The remote traceback quelea attached to a re-raised exception, if any."""
    cause = exc.__cause__
    tb = getattr(cause, "tb", None)
    if isinstance(tb, str):
        return tb
    tb = getattr(exc, "traceback", None)  # quelea.exceptions.RemoteError
    return tb if isinstance(tb, str) and tb else None


class QueleaBaseOperator(BaseOperator):
    """What the three quelea operators share.

    :param quelea_conn_id: the ``quelea`` connection (default ``quelea_default``).
    :param quelea_config: a quelea config dict merged over the connection's (templated).
    :param max_workers: runner processes of the local backend.
    :param deferrable: submit, then wait in the triggerer (default ``[operators]
        default_deferrable``). The job runs in a detached process that outlives
        the task's process; it needs a storage both can reach (not ``memory``).
    :param poll_interval: seconds between status polls when deferred.
    :param cancel_on_kill: cancel the job when the task is killed.
    :param result_timeout: seconds to wait for results once the job is finished.
    """

    kind: str = ""
    ui_color = "#c4daff"
    shallow_copy_attrs: Sequence[str] = ("func", "map_function", "reduce_function")

    def __init__(
        self,
        *,
        quelea_conn_id: str = DEFAULT_CONN_ID,
        quelea_config: dict | None = None,
        max_workers: int | None = None,
        deferrable: bool | None = None,
        poll_interval: float = 2.0,
        cancel_on_kill: bool = True,
        result_timeout: float = 300.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if quelea_config is not None and not isinstance(quelea_config, dict):
            raise TypeError(f"quelea_config must be a dict, got {type(quelea_config).__name__}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        self.quelea_conn_id = quelea_conn_id
        self.quelea_config = quelea_config
        self.max_workers = max_workers
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        self.poll_interval = poll_interval
        self.cancel_on_kill = cancel_on_kill
        self.result_timeout = result_timeout
        self._executor: Any = None

    # -- what subclasses give ----------------------------------------------------------------------

    def executor_call(self) -> tuple[tuple, dict]:
        """``(args, kwargs)`` of ``FunctionExecutor.<kind>``."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------

    @cached_property
    def hook(self) -> QueleaHook:
        return QueleaHook(quelea_conn_id=self.quelea_conn_id, config=self.quelea_config)

    def _executor_kwargs(self) -> dict:
        return {} if self.max_workers is None else {"max_workers": self.max_workers}

    def execute(self, context: Context) -> Any:
        args, kwargs = self.executor_call()
        if self.deferrable:
            return self._submit_and_defer(context, args, kwargs)
        executor = self.hook.get_executor(**self._executor_kwargs())
        self._executor = executor
        try:
            futures = getattr(executor, self.kind)(*args, **kwargs)
            self.log.info("Submitted a quelea %s of %d call(s)", self.kind, _count(futures))
            try:
                # With no futures given, get_result gives a list for a map and the
                # value for call_async and map_reduce (the reducer's).
                result = executor.get_result()
            except Exception as e:
                self._log_remote_error(e)
                raise
        finally:
            self._executor = None
            executor.close()
        return self._xcom_value(result)

    def _submit_and_defer(self, context: Context, args: tuple, kwargs: dict) -> Any:
        config = self.hook.get_config()
        timeout = self.execution_timeout
        end_time = time.time() + timeout.total_seconds() if timeout else None
        job = _job.submit_detached(
            self.kind, args, kwargs, config, executor_kwargs=self._executor_kwargs(), deadline=end_time
        )
        self.log.info(
            "Submitted a quelea %s as executor %s (detached process %s); deferring",
            self.kind,
            job["executor_id"],
            job["pid"],
        )
        ti = context.get("ti") if hasattr(context, "get") else None
        if ti is not None:
            ti.xcom_push(key=XCOM_JOB_KEY, value=job)
        self.defer(
            trigger=QueleaJobTrigger(
                job=job,
                quelea_conn_id=self.quelea_conn_id,
                quelea_config=self.quelea_config,
                poll_interval=self.poll_interval,
                end_time=end_time,
                cancel_on_kill=self.cancel_on_kill,
            ),
            method_name="execute_complete",
            kwargs={"job": job},
            timeout=timeout,
        )

    def execute_complete(self, context: Context, event: dict | None = None, job: dict | None = None) -> Any:
        """Resumes after the trigger: reads the results (or raises the failure), then cleans up."""
        if not event:
            raise AirflowException(f"task {self.task_id!r} resumed without a trigger event")
        job = event.get("job") or job
        config = self.hook.get_config()
        status = event.get("status")
        self.log.info(
            "quelea job %s: %s (%s/%s calls done, %s failed)",
            job["executor_id"],
            status,
            event.get("done"),
            event.get("total"),
            event.get("failed"),
        )
        try:
            if status == "success":
                result = _job.results(job, config, timeout=self.result_timeout)
            elif status == "error" and event.get("first_failed"):
                if _job.same_host(job):
                    _job.stop_process(job.get("pid"), job.get("pid_start"))
                try:
                    _job.raise_failed_call(job, config, event["first_failed"], timeout=self.result_timeout)
                except Exception as e:
                    self._log_remote_error(e)
                    raise
            else:
                raise AirflowException(
                    f"task {self.task_id!r}: quelea job {job['executor_id']} {status}: {event.get('message')}"
                )
        finally:
            _job.finish(job, config, self.log)
        return self._xcom_value(result)

    def resume_execution(self, next_method: str, next_kwargs: dict | None, context: Context) -> Any:
        # A deferral that timed out or a trigger that crashed never reaches
        # execute_complete: cancel the job here.
        if next_method == "__fail__" and next_kwargs and isinstance(next_kwargs.get("job"), dict):
            try:
                _job.finish(next_kwargs["job"], self.hook.get_config(), self.log)
            except Exception as e:  # noqa: BLE001
                self.log.warning("could not cancel the quelea job: %s", e)
        return super().resume_execution(next_method, next_kwargs, context)

    def on_kill(self) -> None:
        executor = self._executor
        if executor is not None and self.cancel_on_kill:
            self.log.info("Cancelling the quelea job")
            try:
                executor.cancel()
            finally:
                executor.close()

    def _log_remote_error(self, exc: BaseException) -> None:
        tb = remote_traceback(exc)
        if tb:
            self.log.error(
                "A quelea call failed with %s: %s\nRemote traceback:\n%s", type(exc).__name__, exc, tb
            )

    def _xcom_value(self, result: Any) -> Any:
        if self.do_xcom_push:
            try:
                json.dumps(xcom_serialize(result))
            except Exception as e:
                raise AirflowException(
                    f"task {self.task_id!r}: the quelea result (a {type(result).__name__}) cannot be "
                    f"stored in XCom: {e}. Return values Airflow can serialize "
                    f"(JSON-like, dataclasses, ...), or set do_xcom_push=False."
                ) from e
        return result


def _count(futures: Any) -> int:
    try:
        return len(futures)
    except TypeError:
        return 1


class QueleaCallAsyncOperator(QueleaBaseOperator):
    """Runs ``func(data)`` once on quelea (``FunctionExecutor.call_async``); its result goes to XCom.

    ``data`` is a tuple (positional arguments), a dict (keyword arguments) or a
    single argument; it is templated, so it may be an upstream task's output.
    """

    kind = "call_async"
    template_fields: Sequence[str] = ("data", "extra_env", "quelea_config")

    def __init__(
        self,
        *,
        func: Callable,
        data: Any = None,
        extra_env: dict | None = None,
        runtime_memory: int | None = None,
        timeout: float | None = None,
        include_modules: list | None = None,
        exclude_modules: list | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not callable(func):
            raise TypeError(f"func must be callable, got {type(func).__name__}")
        self.func = func
        self.data = data
        self.extra_env = extra_env
        self.runtime_memory = runtime_memory
        self.timeout = timeout
        self.include_modules = include_modules
        self.exclude_modules = exclude_modules

    def executor_call(self) -> tuple[tuple, dict]:
        return (self.func, self.data), {
            "extra_env": self.extra_env,
            "runtime_memory": self.runtime_memory,
            "timeout": self.timeout,
            "include_modules": self.include_modules,
            "exclude_modules": self.exclude_modules,
        }


class QueleaMapOperator(QueleaBaseOperator):
    """Runs ``map_function`` once per element of ``map_iterdata`` (``FunctionExecutor.map``);
    the list of results goes to XCom. ``map_iterdata`` is templated (an upstream
    task's output works)."""

    kind = "map"
    template_fields: Sequence[str] = ("map_iterdata", "extra_args", "extra_env", "quelea_config")

    def __init__(
        self,
        *,
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
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if not callable(map_function):
            raise TypeError(f"map_function must be callable, got {type(map_function).__name__}")
        self.map_function = map_function
        self.map_iterdata = map_iterdata
        self.chunksize = chunksize
        self.extra_args = extra_args
        self.extra_env = extra_env
        self.runtime_memory = runtime_memory
        self.obj_chunk_size = obj_chunk_size
        self.obj_chunk_number = obj_chunk_number
        self.obj_newline = obj_newline
        self.timeout = timeout
        self.include_modules = include_modules
        self.exclude_modules = exclude_modules

    def executor_call(self) -> tuple[tuple, dict]:
        return (self.map_function, self.map_iterdata), {
            "chunksize": self.chunksize,
            "extra_args": self.extra_args,
            "extra_env": self.extra_env,
            "runtime_memory": self.runtime_memory,
            "obj_chunk_size": self.obj_chunk_size,
            "obj_chunk_number": self.obj_chunk_number,
            "obj_newline": self.obj_newline,
            "timeout": self.timeout,
            "include_modules": self.include_modules,
            "exclude_modules": self.exclude_modules,
        }


class QueleaMapReduceOperator(QueleaBaseOperator):
    """Maps ``map_function`` over ``map_iterdata``, then calls
    ``reduce_function(results, *extra_args_reduce)`` (``FunctionExecutor.map_reduce``);
    the reducer's result goes to XCom."""

    kind = "map_reduce"
    template_fields: Sequence[str] = (
        "map_iterdata",
        "extra_args",
        "extra_args_reduce",
        "extra_env",
        "quelea_config",
    )

    def __init__(
        self,
        *,
        map_function: Callable,
        map_iterdata: Any,
        reduce_function: Callable,
        chunksize: int | None = None,
        extra_args: Any = None,
        extra_args_reduce: Any = None,
        extra_env: dict | None = None,
        map_runtime_memory: int | None = None,
        reduce_runtime_memory: int | None = None,
        timeout: float | None = None,
        obj_chunk_size: int | None = None,
        obj_chunk_number: int | None = None,
        obj_newline: str | None = "\n",
        obj_reduce_by_key: bool = False,
        spawn_reducer: int = 20,
        include_modules: list | None = None,
        exclude_modules: list | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        for name, value in (("map_function", map_function), ("reduce_function", reduce_function)):
            if not callable(value):
                raise TypeError(f"{name} must be callable, got {type(value).__name__}")
        self.map_function = map_function
        self.map_iterdata = map_iterdata
        self.reduce_function = reduce_function
        self.chunksize = chunksize
        self.extra_args = extra_args
        self.extra_args_reduce = extra_args_reduce
        self.extra_env = extra_env
        self.map_runtime_memory = map_runtime_memory
        self.reduce_runtime_memory = reduce_runtime_memory
        self.timeout = timeout
        self.obj_chunk_size = obj_chunk_size
        self.obj_chunk_number = obj_chunk_number
        self.obj_newline = obj_newline
        self.obj_reduce_by_key = obj_reduce_by_key
        self.spawn_reducer = spawn_reducer
        self.include_modules = include_modules
        self.exclude_modules = exclude_modules

    def executor_call(self) -> tuple[tuple, dict]:
        return (self.map_function, self.map_iterdata, self.reduce_function), {
            "chunksize": self.chunksize,
            "extra_args": self.extra_args,
            "extra_args_reduce": self.extra_args_reduce,
            "extra_env": self.extra_env,
            "map_runtime_memory": self.map_runtime_memory,
            "reduce_runtime_memory": self.reduce_runtime_memory,
            "timeout": self.timeout,
            "obj_chunk_size": self.obj_chunk_size,
            "obj_chunk_number": self.obj_chunk_number,
            "obj_newline": self.obj_newline,
            "obj_reduce_by_key": self.obj_reduce_by_key,
            "spawn_reducer": self.spawn_reducer,
            "include_modules": self.include_modules,
            "exclude_modules": self.exclude_modules,
        }
