"""Operators that run Python functions on quelea: one call, a map, a map-reduce."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

from quelea_airflow import _job, _store
from quelea_airflow._compat import (
    AirflowException,
    AirflowTaskTimeout,
    BaseOperator,
    Context,
    conf,
    default_deferrable,
    xcom_serialize,
)
from quelea_airflow.hooks.quelea import DEFAULT_CONN_ID, QueleaHook
from quelea_airflow.links.quelea import QueleaJobLink
from quelea_airflow.triggers.quelea import QueleaJobTrigger

XCOM_JOB_KEY = "quelea_job"


class QueleaJobCancelled(AirflowException):
    """The task was killed and its quelea job cancelled."""


class QueleaJobAbandoned(AirflowException):
    """The process running a detached job is gone: the job can never finish."""


def remote_traceback(exc: BaseException) -> str | None:
    """The remote traceback quelea attached to a re-raised exception, if any."""
    cause = exc.__cause__
    tb = getattr(cause, "tb", None)
    if isinstance(tb, str):
        return tb
    tb = getattr(exc, "traceback", None)  # quelea.exceptions.RemoteError
    return tb if isinstance(tb, str) and tb else None


def xcom_threshold_default() -> int:
    """``[quelea] xcom_threshold_bytes`` (``AIRFLOW__QUELEA__XCOM_THRESHOLD_BYTES``)."""
    return conf.getint("quelea", "xcom_threshold_bytes", fallback=_store.DEFAULT_XCOM_THRESHOLD)


def parse_rendered(value: Any, name: str, *, allow_str: bool = False) -> Any:
    """A templated list/dict argument that Jinja rendered to a string (the DAG has no
    ``render_template_as_native_obj=True``): parsed back when it is a Python or JSON
    literal of a list, tuple or dict, else refused (instead of one call on the string)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text[:1] in ("[", "(", "{"):
        import ast

        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                parsed = None
        if isinstance(parsed, list | tuple | dict):
            return parsed
    if allow_str and "://" in text:  # a storage URL or prefix (object iterdata)
        return value
    raise AirflowException(
        f"{name} is the string {text[:80]!r}{'...' if len(text) > 80 else ''}, not a list: a Jinja "
        f"template renders to a string unless the DAG has render_template_as_native_obj=True. Give an "
        f"upstream task's output (XComArg), a list, or a string holding a Python/JSON list literal"
    )


def min_deferral_s() -> float:
    """``[quelea] min_deferral_s`` (``AIRFLOW__QUELEA__MIN_DEFERRAL_S``, default 10): the
    least time a deferred quelea task stays deferred, so that the scheduler has handled
    the deferring process's exit before the trigger's event (Airflow's race: "finished
    with state success, but the task instance's state attribute is queued")."""
    return conf.getfloat("quelea", "min_deferral_s", fallback=10.0)


def _executor_name(operator: Any) -> str:
    name = getattr(operator, "executor", None) or conf.get("core", "executor", fallback="") or ""
    return name.split(",")[0].strip()


class QueleaBaseOperator(BaseOperator):
    """What the three quelea operators share.

    :param quelea_conn_id: the ``quelea`` connection (default ``quelea_default``).
    :param quelea_config: a quelea config dict merged over the connection's
        (templated; a template must render to a dict or a JSON object).
    :param max_workers: runner processes of the local backend.
    :param deferrable: submit, then wait in the triggerer (default ``[operators]
        default_deferrable``). The job is submitted with ``detach=True``: it
        outlives the task's process (on the local backend it runs in a host
        process of quelea's on the worker). It needs a storage both can reach
        (not ``memory``). Under KubernetesExecutor the local backend is refused
        (the worker pod goes away while the task is deferred): use ``http`` or
        ``aws_lambda``.
    :param defer_after: seconds a deferrable task waits for its job before
        deferring (default 5). A job done by then is read at once, without
        deferring (and without the scheduler's deferral race); 0 defers at once.
    :param poll_interval: seconds between status polls and progress lines.
    :param cancel_on_kill: cancel the job when the task is killed.
    :param result_timeout: seconds to wait for results once the job is finished.
    :param wait_for_completion: ``False``: submit (detached), push the job
        (XCom ``quelea_job``) and finish at once, leaving the job and its
        objects to a downstream ``QueleaJobSensor``.
    :param xcom_threshold: results whose XCom JSON is larger than this many
        bytes stay in quelea storage and XCom gets a reference (resolved by
        downstream quelea operators and ``quelea_airflow.results``); default
        ``[quelea] xcom_threshold_bytes`` (1 MiB); -1: always XCom.
    """

    kind: str = ""
    ui_color = "#c4daff"
    shallow_copy_attrs: Sequence[str] = ("func", "map_function", "reduce_function")
    operator_extra_links = (QueleaJobLink(),)
    template_fields_renderers = {
        "quelea_config": "json",
        "map_iterdata": "py",
        "data": "py",
        "extra_args": "py",
        "extra_args_reduce": "py",
        "extra_env": "json",
    }

    def __init__(
        self,
        *,
        quelea_conn_id: str = DEFAULT_CONN_ID,
        quelea_config: dict | str | None = None,
        max_workers: int | None = None,
        deferrable: bool | None = None,
        poll_interval: float = 2.0,
        cancel_on_kill: bool = True,
        result_timeout: float = 300.0,
        wait_for_completion: bool = True,
        defer_after: float = _job.CHECK_BEFORE_DEFER_S,
        xcom_threshold: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if quelea_config is not None and not isinstance(quelea_config, dict | str):
            raise TypeError(f"quelea_config must be a dict, got {type(quelea_config).__name__}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        self.quelea_conn_id = quelea_conn_id
        self.quelea_config = quelea_config
        if isinstance(quelea_config, str) and "{{" not in quelea_config:
            self._config_overrides()  # not a template: it must be a JSON object now
        self.max_workers = max_workers
        self.deferrable = default_deferrable() if deferrable is None else deferrable
        self.poll_interval = poll_interval
        self.cancel_on_kill = cancel_on_kill
        self.result_timeout = result_timeout
        self.wait_for_completion = wait_for_completion
        if not defer_after >= 0:
            raise ValueError(f"defer_after must be 0 or more seconds, got {defer_after!r}")
        self.defer_after = float(defer_after)
        if xcom_threshold is not None and (not isinstance(xcom_threshold, int) or xcom_threshold < -1):
            raise ValueError(f"xcom_threshold must be -1 or a number of bytes, got {xcom_threshold!r}")
        self.xcom_threshold = xcom_threshold
        self._executor: Any = None
        self._killed = False

    # -- what subclasses give ----------------------------------------------------------------------

    def executor_call(self) -> tuple[tuple, dict]:
        """``(args, kwargs)`` of ``FunctionExecutor.<kind>``."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------

    def _config_overrides(self) -> dict | None:
        """``quelea_config`` as rendered: a dict, or a JSON object in a string."""
        value = self.quelea_config
        if value is None or isinstance(value, dict):
            return value
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError:
                parsed = None
            if isinstance(parsed, dict):
                return parsed
        raise TypeError(
            f"task {self.task_id!r}: quelea_config must be a dict (or a template rendering to a JSON "
            f"object), got the {type(value).__name__} {str(value)[:80]!r}; with Jinja, set "
            f"render_template_as_native_obj=True on the DAG or render JSON"
        )

    @cached_property
    def hook(self) -> QueleaHook:
        return QueleaHook(quelea_conn_id=self.quelea_conn_id, config=self._config_overrides())

    def _executor_kwargs(self) -> dict:
        return {} if self.max_workers is None else {"max_workers": self.max_workers}

    def _resolve(self, value: Any) -> Any:
        """An input that is an upstream quelea operator's result reference, resolved."""
        return _store.resolve(value, self.hook.get_config()) if _store.is_ref(value) else value

    def _iterdata(self, value: Any) -> Any:
        return parse_rendered(self._resolve(value), "map_iterdata", allow_str=True)

    # -- resumable retries ---------------------------------------------------------------------------

    def _retries_left(self, context: Context) -> bool:
        ti = context.get("ti") if hasattr(context, "get") else None
        try_number = getattr(ti, "try_number", None)
        return isinstance(try_number, int) and try_number <= (self.retries or 0)

    def _resumable(self, args: tuple) -> int | None:
        """How many elements a retry can resume over (an element is known by its index:
        a list's element, or the one call of ``call_async``); None when it cannot (the
        elements of objects in storage, a map-reduce reduced by key)."""
        if self.kind == "call_async":
            return 1
        if self.kind == "map_reduce" and getattr(self, "obj_reduce_by_key", False):
            return None
        if self.kind in ("map", "map_reduce") and isinstance(args[1], list | tuple):
            return len(args[1])
        return None

    def _resume_plan(self, context: Context, call: tuple) -> tuple[tuple, dict | None]:
        """``((kind, args, kwargs) to run, plan)``. ``plan``: ``{"total", "previous":
        {index: value} a previous try finished, "missing": [indices to run], "final":
        the task's result when a previous try's job finished whole, else _NOTHING}``;
        None when the task is not resumable. On a retry, ``call`` runs the missing
        elements only; a map-reduce's reducer then gets every element's result, in order
        (only the reduce is left: a ``call_async`` of it)."""
        kind, args, kwargs = call
        total = self._resumable(args) if "ti" in context else None
        if total is None:
            return call, None
        plan: dict = {"total": total, "previous": {}, "missing": list(range(total)), "final": _NOTHING}
        if getattr(context["ti"], "try_number", 1) <= 1:
            return call, plan
        config = self.hook.get_config()
        record = _store.read_resume_record(config, context, total)
        if record is None:
            return call, plan
        if record["job"]:
            plan["final"] = self._harvest(record, config)
            # The job is gone now: what it finished is in the record.
            _store.write_resume(config, context, total, record["results"])
        previous = record["results"]
        plan["previous"] = previous
        plan["missing"] = missing = [i for i in range(total) if i not in previous]
        if plan["final"] is not _NOTHING or not previous:
            return call, plan
        self.log.info(
            "Resuming: a previous try finished %d of %d element(s); running the other %d",
            len(previous),
            total,
            len(missing),
        )
        if self.kind == "map":
            call = (kind, (args[0], [args[1][i] for i in missing], *args[2:]), kwargs)
        elif self.kind == "map_reduce":
            map_function, iterdata, reduce_function = args[:3]
            reducer = _resumed_reducer(reduce_function, previous, missing, total)
            if missing:
                call = (kind, (map_function, [iterdata[i] for i in missing], reducer), kwargs)
            else:
                extra = kwargs.get("extra_args_reduce")
                extra = () if extra is None else extra if isinstance(extra, tuple) else (extra,)
                only_reduce = {
                    "extra_env": kwargs.get("extra_env"),
                    "runtime_memory": kwargs.get("reduce_runtime_memory"),
                    "timeout": kwargs.get("timeout"),
                    "include_modules": kwargs.get("include_modules"),
                    "exclude_modules": kwargs.get("exclude_modules"),
                }
                call = ("call_async", (reducer, ([], *extra)), only_reduce)
        return call, plan

    def _harvest(self, record: dict, config: dict) -> Any:
        """Takes what the previous try's job (``record["job"]``) finished into
        ``record["results"]``, then cancels the rest of it and deletes its objects;
        returns the task's result when that job finished whole and its last part holds
        it (``record["final"]``), else _NOTHING."""
        follower = _job.Job(record["job"], config)
        final = _NOTHING
        taken = 0
        try:
            parts = follower.parts()
            indices = record["indices"]
            for n, f in enumerate(parts[0] if indices else []):
                if n < len(indices) and f.success:
                    record["results"][indices[n]] = f.result(throw_except=False)
                    taken += 1
            if record.get("final") and parts[-1] and all(f.success for f in parts[-1]):
                final = parts[-1][0].result(throw_except=False)
            self.log.info(
                "The previous try's quelea job %s: %d element result(s) taken%s",
                follower.name,
                taken,
                "; it finished: its result is reused" if final is not _NOTHING else "",
            )
        except Exception as e:  # noqa: BLE001 - its elements run again
            self.log.info("The previous try's quelea job %s cannot be read (%s)", follower.name, e)
        follower.finish(self.log)
        return final

    def _merge(self, plan: dict | None, values: Any) -> Any:
        """The task's result from a resumed try's ``values`` and the previous tries'."""
        if not plan or not plan["previous"]:
            return values
        if self.kind == "call_async":
            return plan["previous"][0] if not plan["missing"] else values
        if self.kind == "map_reduce":
            return values  # the reducer had every element's result
        out = dict(plan["previous"])
        out.update(zip(plan["missing"], values, strict=True))
        return [out[i] for i in range(plan["total"])]

    def _element_futures(self, kind: str, futures: Any) -> list | None:
        """The futures of the elements ``plan["missing"]`` among what ``kind`` gave."""
        import quelea

        if kind == "call_async" and self.kind == "map_reduce":
            return None  # only the reduce ran
        if isinstance(futures, quelea.ResponseFuture):
            return [futures]
        if kind == "map_reduce":
            first = next(iter(futures), None)
            return [f for f in futures if first is not None and f.job_key == first.job_key]
        return list(futures)

    def _keep_for_retry(self, context: Context, plan: dict | None, futures: list | None) -> None:
        """A failed try with tries left keeps its finished results for the next try
        (``futures``: the futures of ``plan["missing"]``, in order); the last try deletes
        the record."""
        if not plan:
            return
        config = self.hook.get_config()
        if not self._retries_left(context):
            _store.delete_resume(config, context)
            return
        finished = dict(plan["previous"])
        for n, f in enumerate(futures or []):
            if n < len(plan["missing"]) and f.success:
                finished[plan["missing"][n]] = f.result(throw_except=False)
        _store.write_resume(config, context, plan["total"], finished)
        self.log.info(
            "Kept %d finished result(s) of %d for the next try (it runs only the other %d)",
            len(finished),
            plan["total"],
            plan["total"] - len(finished),
        )

    def _done_before(self, context: Context, plan: dict | None) -> tuple[bool, Any]:
        """``(True, result)`` when previous tries left nothing to run."""
        if not plan:
            return False, None
        if plan["final"] is not _NOTHING:
            result = plan["final"]
        elif plan["previous"] and not plan["missing"] and self.kind != "map_reduce":
            result = self._merge(plan, [])
        else:
            return False, None
        self.log.info("Every element was finished by a previous try: its results are reused")
        _store.delete_resume(self.hook.get_config(), context)
        return True, result

    # -- execute -------------------------------------------------------------------------------------

    def execute(self, context: Context) -> Any:
        args, kwargs = self.executor_call()
        (kind, args, kwargs), plan = self._resume_plan(context, (self.kind, args, kwargs))
        done, result = self._done_before(context, plan)
        if done:
            return self._xcom_value(context, result)
        if self.deferrable or not self.wait_for_completion:
            return self._submit_detached(context, kind, args, kwargs, plan)
        executor = self.hook.get_executor(**self._executor_kwargs())
        self._executor = executor
        futures = None
        try:
            futures = getattr(executor, kind)(*args, **kwargs)
            self._persist_link(context, executor, futures)
            self.log.info(
                "Submitted a quelea %s of %d call(s) as job %s",
                kind,
                _count(futures),
                getattr(executor, "executor_id", "?"),
            )
            self._wait_logging_progress(executor, futures)
            try:
                # With no futures given, get_result gives a list for a map and the
                # value for call_async and map_reduce (the reducer's).
                result = executor.get_result()
            except Exception as e:
                if self._killed or _killed_by_sigterm(e):
                    self._killed = True  # the objects go in `finally`
                    raise QueleaJobCancelled(
                        f"task {self.task_id!r} was killed: quelea job "
                        f"{getattr(executor, 'executor_id', '?')} was cancelled"
                    ) from None
                self._log_remote_error(e)
                if plan:
                    self._keep_for_retry(context, plan, self._element_futures(kind, futures))
                raise
        finally:
            self._executor = None
            if self._killed and futures is not None:
                _settle_cancelled(executor, futures)
            executor.close()
        if plan:
            _store.delete_resume(self.hook.get_config(), context)
            result = self._merge(plan, result)
        return self._xcom_value(context, result)

    def _persist_link(self, context: Context, executor: Any, futures: Any) -> None:
        try:
            one = futures if not isinstance(futures, list) else futures[-1:]
            handle = executor.job_handle(one)
            QueleaJobLink.persist(context, {"handles": [handle]})
        except Exception as e:  # noqa: BLE001 - a link is not worth failing the task
            self.log.debug("no dashboard link: %s", e)

    def _wait_logging_progress(self, executor: Any, futures: Any) -> None:
        """Waits for the job, logging ``job <id>: done/total (N failed)`` every
        ``poll_interval`` seconds when the count moved, and once at the end, and
        what each finished call printed."""
        import quelea
        from quelea.exceptions import WaitTimeoutError

        name = getattr(executor, "executor_id", "?")
        if isinstance(futures, quelea.ResponseFuture):
            fs = [futures]
        elif isinstance(futures, quelea.FuturesList):
            fs = list(futures)
        else:  # not quelea's futures (a test double): nothing to report
            fs = []
        seen = _job.OutputSeen()
        last = None
        while True:
            try:
                executor.wait(futures, throw_except=False, timeout=self.poll_interval)
                finished = True
            except WaitTimeoutError:
                finished = False
            if self._killed:
                return
            if not fs:
                return
            _job.log_outputs(self.log, name, fs, seen)
            p = quelea.progress(fs)
            if finished or (p["done"], p["failed"]) != last:
                self.log.info("job %s: %d/%d (%d failed)", name, p["done"], p["total"], p["failed"])
                last = (p["done"], p["failed"])
            if finished:
                return

    def _check_executor(self, config: dict) -> None:
        """A detached job of the local backend runs on the worker: refused where the
        worker does not outlive the task."""
        backend = config.get("backend") or "local"
        executor = _executor_name(self)
        if backend in ("local", "localhost") and "Kubernetes" in executor:
            raise AirflowException(
                f"task {self.task_id!r}: deferrable=True / wait_for_completion=False with the quelea "
                f"backend `local` runs the job in a process on the worker, and under {executor} the "
                f"worker pod is deleted while the task is deferred, taking the job with it. Use a "
                f"remote backend (`http` with `quelea worker serve` servers, or `aws_lambda`) in the "
                f"connection or quelea_config, or deferrable=False"
            )

    def _submit_detached(
        self, context: Context, kind: str, args: tuple, kwargs: dict, plan: dict | None
    ) -> Any:
        """Submits with ``detach=True``; then returns at once (``wait_for_completion=False``),
        finishes if the job is already done, or defers to ``QueleaJobTrigger``."""
        config = self.hook.get_config()
        self._check_executor(config)
        timeout = self.execution_timeout
        end_time = None
        if timeout:
            seconds = timeout.total_seconds()
            # The trigger times out (cancelling the job, failing with a timeout) a little
            # before Airflow's own deferral timeout would.
            end_time = time.time() + max(seconds - min(30.0, 0.1 * seconds), 0.0)
        submitted = _job.submit(
            kind,
            args,
            kwargs,
            config,
            executor_kwargs=self._executor_kwargs(),
            check_s=self.defer_after if self.wait_for_completion else 0.0,
        )
        job = submitted.job
        keep = plan is not None and (self._retries_left(context) or plan["previous"])
        if keep and self.wait_for_completion:
            # A try that dies while the job runs on leaves it to the next try (see _store).
            only_reduce = kind == "call_async" and self.kind == "map_reduce"
            try:
                _store.write_resume(
                    config,
                    context,
                    plan["total"],
                    plan["previous"],
                    job=job,
                    indices=[] if only_reduce else plan["missing"],
                    final=self.kind == "map_reduce",
                )
            except BaseException:
                _job.Job(job, config).finish(self.log, cancel=True)
                raise
        self.log.info(
            "Submitted a quelea %s of %d element(s) as job %s (detached%s)",
            kind,
            sum(_job.Job(job, config).totals),
            job["executor_id"],
            f"; local host process {submitted.host_pid}" if submitted.host_pid else "",
        )
        ti = context.get("ti") if hasattr(context, "get") else None
        if ti is not None:
            ti.xcom_push(key=XCOM_JOB_KEY, value=job)
        QueleaJobLink.persist(context, job)
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
            return self.execute_complete(context, event={"status": status, "job": job, **progress}, job=job)
        self.log.info("Deferring to QueleaJobTrigger")
        self.defer(
            trigger=QueleaJobTrigger(
                job=job,
                quelea_conn_id=self.quelea_conn_id,
                quelea_config=self._config_overrides(),
                poll_interval=self.poll_interval,
                end_time=end_time,
                cancel_on_kill=self.cancel_on_kill,
                fire_after=time.time() + min_deferral_s(),
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
        plan = self._plan_of_job(context, job, config)
        self.log.info(
            "quelea job %s: %s (%s/%s done, %s failed)",
            job["executor_id"],
            status,
            event.get("done"),
            event.get("total"),
            event.get("failed"),
        )
        cancel = False
        try:
            if status in ("success", "error"):
                follower.log_outputs(self.log)
            if status == "success":
                result = follower.results(timeout=self.result_timeout)
            elif status == "error" and event.get("first_failed"):
                follower.cancel()  # the other calls stop; their objects go below
                try:
                    follower.raise_failed_call(event["first_failed"], timeout=self.result_timeout)
                except Exception as e:
                    self._log_remote_error(e)
                    raise
            elif status == "timeout":
                raise AirflowTaskTimeout(
                    f"task {self.task_id!r}: quelea job {job['executor_id']} did not finish within the "
                    f"task's execution_timeout ({event.get('done')}/{event.get('total')} done); cancelled"
                )
            elif status == "abandoned":
                cancel = True
                raise QueleaJobAbandoned(f"task {self.task_id!r}: {event.get('message')}")
            else:
                raise AirflowException(
                    f"task {self.task_id!r}: quelea job {job['executor_id']} {status}: {event.get('message')}"
                )
        except BaseException:
            self._keep_of_job(context, plan, job, follower)
            raise
        finally:
            follower.finish(self.log, cancel=cancel)
        if plan:
            _store.delete_resume(config, context)
            result = self._merge(plan, result)
        return self._xcom_value(context, result)

    def _plan_of_job(self, context: Context, job: dict, config: dict) -> dict | None:
        """The plan ``execute`` made for ``job``, from the record it wrote when it
        submitted the job (not from the defer kwargs: dag.test() resumes with the event
        only)."""
        total = self._resumable(self.executor_call()[0]) if "ti" in context else None
        if total is None:
            return None
        plan: dict = {"total": total, "previous": {}, "missing": list(range(total)), "final": _NOTHING}
        record = _store.read_resume_record(config, context, total)
        if record and record["job"] and record["job"].get("executor_id") == job.get("executor_id"):
            plan["previous"] = record["results"]
            plan["missing"] = [i for i in range(total) if i not in record["results"]]
        return plan

    def _keep_of_job(self, context: Context, plan: dict | None, job: dict, follower: Any) -> None:
        """``_keep_for_retry`` for a detached job that failed (never raises: the job's
        own error matters more)."""
        if not plan:
            return
        try:
            parts = follower.parts()
            kind = job.get("kind", self.kind)
            futures = None if kind == "call_async" and self.kind == "map_reduce" else parts[0]
            self._keep_for_retry(context, plan, futures)
        except Exception as e:  # noqa: BLE001
            self.log.info("could not read the finished results of quelea job %s: %s", follower.name, e)
            try:
                self._keep_for_retry(context, plan, None)
            except Exception as e2:  # noqa: BLE001
                self.log.warning("could not keep the results for the next try: %s", e2)

    def resume_execution(self, next_method: str, next_kwargs: dict | None, context: Context) -> Any:
        # A deferral that timed out or a trigger that crashed never reaches
        # execute_complete: cancel the job here.
        if next_method == "__fail__" and next_kwargs and isinstance(next_kwargs.get("job"), dict):
            try:
                _job.Job(next_kwargs["job"], self.hook.get_config()).finish(self.log, cancel=True)
            except Exception as e:  # noqa: BLE001
                self.log.warning("could not cancel the quelea job: %s", e)
            # Its resume record names the job just deleted: the next try (if any) runs
            # the elements the record lacks; the last try leaves no record.
            try:
                plan = self._plan_of_job(context, next_kwargs["job"], self.hook.get_config())
                self._keep_for_retry(context, plan, None)
            except Exception as e:  # noqa: BLE001
                self.log.warning("could not update the resume record: %s", e)
        return super().resume_execution(next_method, next_kwargs, context)

    def on_kill(self) -> None:
        # Cancels only: the task's thread (execute) then waits for the calls to stop and
        # deletes the job's objects before it closes the executor.
        self._killed = True
        executor = self._executor
        if executor is not None and self.cancel_on_kill:
            self.log.info("Cancelling the quelea job")
            executor.cancel()

    def _log_remote_error(self, exc: BaseException) -> None:
        tb = remote_traceback(exc)
        if tb:
            self.log.error(
                "A quelea call failed with %s: %s\nRemote traceback:\n%s", type(exc).__name__, exc, tb
            )

    def _xcom_value(self, context: Context, result: Any) -> Any:
        if not self.do_xcom_push:
            return result
        try:
            encoded = json.dumps(xcom_serialize(result))
        except Exception as e:
            raise AirflowException(
                f"task {self.task_id!r}: the quelea result (a {type(result).__name__}) cannot be "
                f"stored in XCom: {e}. Return values Airflow can serialize "
                f"(JSON-like, dataclasses, ...), or set do_xcom_push=False."
            ) from e
        threshold = xcom_threshold_default() if self.xcom_threshold is None else self.xcom_threshold
        size = len(encoded.encode())
        if 0 <= threshold < size and "ti" in context:
            count = len(result) if isinstance(result, list) else None
            ref = _store.put_results(self.hook.get_config(), context, result, count, size)
            self.log.info(
                "The result (%d bytes of XCom JSON) is above the XCom threshold (%d bytes): it stays in "
                "quelea storage at %s; XCom gets a reference (quelea_airflow.results(ref) reads it)",
                size,
                threshold,
                ref[_store.REF_KEY],
            )
            return ref
        return result


# No result (``plan["final"]``): None is a result.
_NOTHING = object()


def _resumed_reducer(reduce_function: Callable, previous: dict, missing: list, total: int) -> Callable:
    """The reducer of a resumed map-reduce: gets the results of the ``missing``
    elements (in order) and calls ``reduce_function`` on every element's result, the
    ``previous`` tries' included, in element order. A closure, so that it travels by
    value (the workers need not have this provider installed)."""
    previous = dict(previous)

    def resumed_reduce(results, *extra):
        merged = dict(previous)
        merged.update(zip(missing, results, strict=True))
        return reduce_function([merged[i] for i in range(total)], *extra)

    resumed_reduce.__name__ = getattr(reduce_function, "__name__", "reduce")
    # quelea ships the module of the function it is given by value when workers cannot
    # import it (a DAG file): the reducer's. (The `<locals>` qualname keeps cloudpickle
    # from pickling this closure by reference.)
    resumed_reduce.__module__ = getattr(reduce_function, "__module__", __name__)
    return resumed_reduce


def _settle_cancelled(executor: Any, futures: Any) -> None:
    """After a kill: lets the cancelled calls stop and write their statuses, then
    deletes the job's objects (deleting first would leave those statuses behind)."""
    from quelea.exceptions import WaitTimeoutError

    try:
        executor.cancel(futures)
        executor.wait(futures, throw_except=False, timeout=_job.STOP_GRACE_S)
    except (WaitTimeoutError, Exception):  # noqa: BLE001 - best effort on the way out
        pass
    time.sleep(_job.CANCEL_SETTLE_S)
    try:
        executor.clean()
    except Exception:  # noqa: BLE001, S110
        pass


def _killed_by_sigterm(exc: BaseException) -> bool:
    """A runner ended by SIGTERM: Airflow killing the task's process group."""
    from quelea.exceptions import WorkerCrashedError

    return isinstance(exc, WorkerCrashedError) and "signal 15" in str(exc)


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
        return (self.func, self._resolve(self.data)), {
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
        return (self.map_function, self._iterdata(self.map_iterdata)), {
            "chunksize": self.chunksize,
            "extra_args": self._resolve(self.extra_args),
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
        return (self.map_function, self._iterdata(self.map_iterdata), self.reduce_function), {
            "chunksize": self.chunksize,
            "extra_args": self._resolve(self.extra_args),
            "extra_args_reduce": self._resolve(self.extra_args_reduce),
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
