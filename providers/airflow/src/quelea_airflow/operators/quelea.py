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
        default_deferrable``). The job is submitted with ``detach=True``: it
        outlives the task's process (on the local backend it runs in a host
        process of quelea's on the worker). It needs a storage both can reach
        (not ``memory``).
    :param defer_after: seconds a deferrable task waits for its job before
        deferring (default 5). A job done by then is read at once, without
        deferring (and without the scheduler's deferral race); 0 defers at once.
    :param poll_interval: seconds between status polls when deferred.
    :param cancel_on_kill: cancel the job when the task is killed.
    :param result_timeout: seconds to wait for results once the job is finished.
    :param wait_for_completion: ``False``: submit (detached), push the job
        (XCom ``quelea_job``) and finish at once, leaving the job and its
        objects to a downstream ``QueleaJobSensor``.
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
        wait_for_completion: bool = True,
        defer_after: float = _job.CHECK_BEFORE_DEFER_S,
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
        self.wait_for_completion = wait_for_completion
        if not defer_after >= 0:
            raise ValueError(f"defer_after must be 0 or more seconds, got {defer_after!r}")
        self.defer_after = float(defer_after)
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
        if self.deferrable or not self.wait_for_completion:
            return self._submit_detached(context, args, kwargs)
        executor = self.hook.get_executor(**self._executor_kwargs())
        self._executor = executor
        try:
            futures = getattr(executor, self.kind)(*args, **kwargs)
            self.log.info("Submitted a quelea %s of %d call(s)", self.kind, _count(futures))
            self._wait_logging_progress(executor, futures)
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

    def _wait_logging_progress(self, executor: Any, futures: Any) -> None:
        """Waits for the job, logging ``job <id>: done/total (N failed)`` every
        ``poll_interval`` seconds when the count moved, and once at the end."""
        import quelea
        from quelea.exceptions import WaitTimeoutError

        name = getattr(executor, "executor_id", "?")
        last = None
        while True:
            try:
                executor.wait(futures, throw_except=False, timeout=self.poll_interval)
                finished = True
            except WaitTimeoutError:
                finished = False
            if isinstance(futures, quelea.FuturesList | quelea.ResponseFuture):
                p = quelea.progress(futures)
                if finished or (p["done"], p["failed"]) != last:
                    self.log.info("job %s: %d/%d (%d failed)", name, p["done"], p["total"], p["failed"])
                    last = (p["done"], p["failed"])
            if finished:
                return

    def _submit_detached(self, context: Context, args: tuple, kwargs: dict) -> Any:
        """Submits with ``detach=True``; then returns at once (``wait_for_completion=False``),
        finishes if the job is already done, or defers to ``QueleaJobTrigger``."""
        config = self.hook.get_config()
        timeout = self.execution_timeout
        end_time = time.time() + timeout.total_seconds() if timeout else None
        submitted = _job.submit(
            self.kind,
            args,
            kwargs,
            config,
            executor_kwargs=self._executor_kwargs(),
            check_s=self.defer_after if self.wait_for_completion else 0.0,
        )
        job = submitted.job
        self.log.info(
            "Submitted a quelea %s of %d element(s) as job %s (detached%s)",
            self.kind,
            sum(_job.Job(job, config).totals),
            job["executor_id"],
            f"; local host process {submitted.host_pid}" if submitted.host_pid else "",
        )
        ti = context.get("ti") if hasattr(context, "get") else None
        if ti is not None:
            ti.xcom_push(key=XCOM_JOB_KEY, value=job)
        if not self.wait_for_completion:
            self.log.info(
                "wait_for_completion=False: the job goes on without this task; a QueleaJobSensor "
                "(job=XComArg(task, key=%r)) can follow it and clean it",
                XCOM_JOB_KEY,
            )
            return None
        if submitted.finished:
            # Done before deferring: read it now (no deferral, no scheduler race).
            progress = _job.Job(job, config).progress()
            status = "error" if progress["failed"] else "success"
            self.log.info("quelea job %s finished before deferring", job["executor_id"])
            return self.execute_complete(context, event={"status": status, "job": job, **progress})
        self.log.info("Deferring to QueleaJobTrigger")
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
        follower = _job.Job(job, config)
        status = event.get("status")
        self.log.info(
            "quelea job %s: %s (%s/%s done, %s failed)",
            job["executor_id"],
            status,
            event.get("done"),
            event.get("total"),
            event.get("failed"),
        )
        try:
            if status == "success":
                result = follower.results(timeout=self.result_timeout)
            elif status == "error" and event.get("first_failed"):
                follower.cancel()  # the other calls stop; their objects go below
                try:
                    follower.raise_failed_call(event["first_failed"], timeout=self.result_timeout)
                except Exception as e:
                    self._log_remote_error(e)
                    raise
            else:
                raise AirflowException(
                    f"task {self.task_id!r}: quelea job {job['executor_id']} {status}: {event.get('message')}"
                )
        finally:
            follower.finish(self.log)
        return self._xcom_value(result)

    def resume_execution(self, next_method: str, next_kwargs: dict | None, context: Context) -> Any:
        # A deferral that timed out or a trigger that crashed never reaches
        # execute_complete: cancel the job here.
        if next_method == "__fail__" and next_kwargs and isinstance(next_kwargs.get("job"), dict):
            try:
                _job.Job(next_kwargs["job"], self.hook.get_config()).finish(self.log, cancel=True)
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
