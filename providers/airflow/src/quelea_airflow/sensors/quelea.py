"""``QueleaJobSensor``: waits for a quelea job started elsewhere."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from quelea_airflow import _job
from quelea_airflow._compat import AirflowException, BaseSensorOperator, Context, default_deferrable
from quelea_airflow.hooks.quelea import DEFAULT_CONN_ID, QueleaHook
from quelea_airflow.triggers.quelea import QueleaJobTrigger


def min_deferral_s() -> float:
    from quelea_airflow.operators.quelea import min_deferral_s as value

    return value()


def job_from(value: Any) -> dict:
    """A job dict from what users have: a job dict (the ``quelea_job`` XCom of an
    operator), one handle (``FunctionExecutor.job_handle``, JSON text or dict),
    or a list of handles (map then reduce)."""
    if isinstance(value, dict) and "handles" in value:
        return value
    handles = value if isinstance(value, list) else [value]
    out = []
    for h in handles:
        if isinstance(h, dict):
            h = json.dumps(h)
        if not isinstance(h, str):
            raise TypeError(f"a quelea job handle must be JSON text or a dict, got {type(h).__name__}")
        try:
            parsed = json.loads(h)
        except json.JSONDecodeError as e:
            raise ValueError(f"a quelea job handle is not valid JSON: {e}") from None
        if not isinstance(parsed, dict) or "executor_id" not in parsed or "job_id" not in parsed:
            raise ValueError(
                "a quelea job handle needs `executor_id` and `job_id` (see FunctionExecutor.job_handle)"
            )
        out.append(h)
    if not out:
        raise ValueError("no quelea job handle given")
    executor_id = json.loads(out[0])["executor_id"]
    return {"kind": "map", "handles": out, "executor_id": executor_id}


class QueleaJobSensor(BaseSensorOperator):
    """Succeeds when every call of a quelea job has succeeded; fails on the first failed call
    with its remote exception, and as soon as the job is abandoned (the process
    running it is gone, ``quelea.host_lease``) instead of poking until its timeout.

    :param job: a job dict, a job handle, or a list of handles (templated).
    :param quelea_conn_id: connection giving the storage the job uses.
    :param quelea_config: quelea config merged over the connection's.
    :param deferrable: wait in the triggerer instead of poking.
    :param clean_when_done: delete the job's objects once it has finished (or
        failed): for the job of a ``wait_for_completion=False`` operator, which
        nobody else reads.
    :param result_timeout: seconds to wait for a failed call's error.
    """

    template_fields: Sequence[str] = ("job", "quelea_config")
    template_fields_renderers = {"job": "json", "quelea_config": "json"}
    ui_color = "#c4daff"

    def __init__(
        self,
        *,
        job: Any,
        quelea_conn_id: str = DEFAULT_CONN_ID,
        quelea_config: dict | None = None,
        deferrable: bool | None = None,
        clean_when_done: bool = False,
        result_timeout: float = 60.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.job = job
        self.clean_when_done = clean_when_done
        self.result_timeout = result_timeout
        self.quelea_conn_id = quelea_conn_id
        self.quelea_config = quelea_config
        self.deferrable = default_deferrable() if deferrable is None else deferrable

    def _hook(self) -> QueleaHook:
        return QueleaHook(self.quelea_conn_id, config=self.quelea_config)

    def poke(self, context: Context) -> bool:
        job = job_from(self.job)
        follower = _job.Job(job, self._hook().get_config())
        progress = follower.progress()
        self.log.info("%s", _job.progress_line(follower, progress))
        if progress["failed"]:
            follower.log_outputs(self.log)
            try:
                follower.raise_failed_call(progress["first_failed"], timeout=self.result_timeout)
            except Exception as e:
                _log_remote_error(self.log, e)
                if self.clean_when_done:
                    follower.finish(self.log, cancel=True)
                raise
        if progress["done"] == progress["total"]:
            follower.log_outputs(self.log)
            if self.clean_when_done:
                follower.finish(self.log)
            return True
        if progress["abandoned"]:
            if self.clean_when_done:
                # The live part of the job (other worker servers) stops first.
                follower.finish(self.log, cancel=True)
            raise AirflowException(f"task {self.task_id!r}: {progress['abandoned']}")
        return False

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        job = job_from(self.job)
        if self.poke(context):
            return None
        self.defer(
            trigger=QueleaJobTrigger(
                job=job,
                quelea_conn_id=self.quelea_conn_id,
                quelea_config=self.quelea_config,
                poll_interval=self.poke_interval,
                end_time=time.time() + self.timeout if self.timeout else None,
                cancel_on_kill=False,  # the job is not this task's
                fire_after=time.time() + min_deferral_s(),
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Context, event: dict | None = None) -> None:
        if not event:
            raise AirflowException(f"task {self.task_id!r} resumed without a trigger event")
        follower = _job.Job(job_from(self.job), self._hook().get_config())
        cancel = event["status"] != "success"
        try:
            if event["status"] in ("success", "error"):
                follower.log_outputs(self.log)
            if event["status"] == "success":
                return None
            if event["status"] == "error" and event.get("first_failed"):
                try:
                    follower.raise_failed_call(event["first_failed"], timeout=self.result_timeout)
                except Exception as e:
                    _log_remote_error(self.log, e)
                    raise
            raise AirflowException(
                f"task {self.task_id!r}: quelea job {event['status']}: {event.get('message')}"
            )
        finally:
            if self.clean_when_done:
                follower.finish(self.log, cancel=cancel)


def _log_remote_error(log: Any, exc: BaseException) -> None:
    from quelea_airflow.operators.quelea import remote_traceback

    tb = remote_traceback(exc)
    if tb:
        log.error("A quelea call failed with %s: %s\nRemote traceback:\n%s", type(exc).__name__, exc, tb)
