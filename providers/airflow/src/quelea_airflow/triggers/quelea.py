"""``QueleaJobTrigger``: waits for a quelea job by polling its status in storage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from quelea_airflow import _job
from quelea_airflow._compat import AIRFLOW_V_3_3_PLUS, BaseTrigger, TriggerEvent
from quelea_airflow.hooks.quelea import DEFAULT_CONN_ID, QueleaHook


class QueleaJobTrigger(BaseTrigger):
    """Fires when a quelea job (see ``quelea_airflow._job``) is finished.

    Only status is polled here (through storage, off the event loop); results
    are read by the resumed task. Events: ``{"status": "success" | "error" |
    "timeout" | "abandoned", "message", "job", "done", "failed", "total",
    "first_failed"}``. A failed call fires ``error`` at once; a job whose host
    process is gone (``quelea.host_lease``) fires ``abandoned``. Progress goes to the triggerer's log
    as ``job <id>: done/total (failed)`` lines.

    :param job: the job dict (``quelea_airflow._job``: handles; JSON, no secrets).
    :param quelea_conn_id: connection giving the storage config (and secrets).
    :param quelea_config: quelea config merged over the connection's.
    :param poll_interval: seconds between polls.
    :param end_time: epoch seconds after which the job is cancelled and ``timeout`` fires.
    :param cancel_on_kill: cancel the job when the task is killed while deferred.
    :param fire_after: epoch seconds before which no event fires (the job is still
        polled): the scheduler may still be handling the exit of the task process
        that deferred, and an event it sees first makes it fail the task ("finished
        with state success, but the task instance's state attribute is queued").
    """

    def __init__(
        self,
        job: dict,
        quelea_conn_id: str = DEFAULT_CONN_ID,
        quelea_config: dict | None = None,
        poll_interval: float = 2.0,
        end_time: float | None = None,
        cancel_on_kill: bool = True,
        fire_after: float | None = None,
    ):
        super().__init__()
        if not isinstance(job, dict) or not job.get("handles"):
            raise ValueError(f"job must be a quelea job dict with `handles`, got {job!r}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
        self.job = job
        self.quelea_conn_id = quelea_conn_id
        self.quelea_config = quelea_config or {}
        self.poll_interval = float(poll_interval)
        self.end_time = end_time
        self.cancel_on_kill = cancel_on_kill
        self.fire_after = fire_after

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job": self.job,
                "quelea_conn_id": self.quelea_conn_id,
                "quelea_config": self.quelea_config,
                "poll_interval": self.poll_interval,
                "end_time": self.end_time,
                "cancel_on_kill": self.cancel_on_kill,
                "fire_after": self.fire_after,
            },
        )

    def _config(self) -> dict:
        return QueleaHook(self.quelea_conn_id, config=self.quelea_config).get_config()

    def _event(self, status: str, message: str, progress: dict | None = None) -> TriggerEvent:
        progress = progress or {}
        return TriggerEvent(
            {
                "status": status,
                "message": message,
                "job": self.job,
                "done": progress.get("done"),
                "failed": progress.get("failed"),
                "total": progress.get("total"),
                "first_failed": progress.get("first_failed"),
            }
        )

    async def _hold(self) -> None:
        """Waits until ``fire_after``."""
        if self.fire_after is not None:
            wait = self.fire_after - time.time()
            if wait > 0:
                await asyncio.sleep(wait)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            config = await asyncio.to_thread(self._config)
            follower = _job.Job(self.job, config)
            last = None
            while True:
                progress = await asyncio.to_thread(follower.progress)
                seen = (progress["done"], progress["failed"])
                if seen != last:
                    self.log.info("%s", _job.progress_line(follower, progress))
                    last = seen
                if progress["failed"]:
                    await self._hold()
                    yield self._event("error", "a call failed", progress)
                    return
                if progress["done"] == progress["total"]:
                    await self._hold()
                    yield self._event("success", "the job finished", progress)
                    return
                if progress["abandoned"]:
                    await self._hold()
                    yield self._event("abandoned", progress["abandoned"], progress)
                    return
                if self.end_time is not None and time.time() >= self.end_time:
                    await asyncio.to_thread(self._cancel)
                    yield self._event(
                        "timeout", "the job did not finish before end_time; cancelled", progress
                    )
                    return
                await asyncio.sleep(self.poll_interval)
        except asyncio.CancelledError:
            if not AIRFLOW_V_3_3_PLUS and self.cancel_on_kill and await self._task_was_killed():
                await asyncio.to_thread(self._cancel)
            raise
        except Exception as e:  # noqa: BLE001 - the task fails with this message
            self.log.exception("quelea job trigger failed")
            yield self._event("error", f"{type(e).__name__}: {e}")

    def _cancel(self) -> None:
        """Cancels the job (its cancel marker stops every call) and deletes its objects."""
        _job.Job(self.job, self._config()).finish(self.log, cancel=True)

    async def on_kill(self) -> None:
        """Airflow 3.3+: the user killed the deferred task (mark failed/success, clear)."""
        if self.cancel_on_kill:
            await asyncio.to_thread(self._cancel)

    async def _task_was_killed(self) -> bool:
        """Before Airflow 3.3 a trigger is also cancelled on triggerer restarts: cancel
        the job only when the task instance is no longer deferred."""
        ti = getattr(self, "task_instance", None)
        if ti is None:
            return False
        try:
            from airflow.models.taskinstance import TaskInstance
            from airflow.utils.session import create_session
            from airflow.utils.state import TaskInstanceState

            def state() -> Any:
                with create_session() as session:
                    return (
                        session.query(TaskInstance.state)
                        .filter_by(
                            dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id, map_index=ti.map_index
                        )
                        .scalar()
                    )

            return await asyncio.to_thread(state) != TaskInstanceState.DEFERRED
        except Exception:  # noqa: BLE001 - unknown: keep the job
            return False
