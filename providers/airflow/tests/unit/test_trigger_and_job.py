"""QueleaJobTrigger and the detached job process, on real quelea jobs."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
import time
import types

import pytest

import quelea
from helpers import objects
from quelea_airflow import _job
from quelea_airflow._compat import AIRFLOW_V_3_3_PLUS, TriggerEvent
from quelea_airflow.triggers.quelea import QueleaJobTrigger

JOB = {
    "kind": "map",
    "handles": ['{"executor_id": "abc123-0", "job_id": "M000", "total_calls": 3}'],
    "executor_id": "abc123-0",
    "pid": 4242,
    "pid_start": "99",
    "host": "h",
    "workdir": "/tmp/quelea-airflow-x",
}


def slow_square(x):
    time.sleep(0.05)
    return x * x


def fails_on_5(x):
    if x == 5:
        raise ZeroDivisionError("five")
    return x


def sleepy(x):
    time.sleep(30)
    return x


def test_serialize_round_trip():
    trigger = QueleaJobTrigger(
        job=JOB, quelea_conn_id="qc", quelea_config={"bucket": "b"}, poll_interval=0.25, end_time=1e10
    )
    classpath, kwargs = trigger.serialize()
    module, name = classpath.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    assert cls is QueleaJobTrigger
    # What the triggerer stores: JSON.
    kwargs = json.loads(json.dumps(kwargs))
    again = cls(**kwargs)
    assert again.serialize() == (classpath, kwargs)
    assert kwargs == {
        "job": JOB,
        "quelea_conn_id": "qc",
        "quelea_config": {"bucket": "b"},
        "poll_interval": 0.25,
        "end_time": 1e10,
        "cancel_on_kill": True,
    }


def test_trigger_rejects_bad_arguments():
    with pytest.raises(ValueError, match="job must be a quelea job dict"):
        QueleaJobTrigger(job={"kind": "map"})
    with pytest.raises(ValueError, match="poll_interval"):
        QueleaJobTrigger(job=JOB, poll_interval=0)


async def _first_event(trigger, timeout=60):
    return await asyncio.wait_for(trigger.run().__anext__(), timeout)


def test_trigger_success_then_results_and_cleanup(quelea_conn, storage_dir):
    job = _job.submit_detached("map", (slow_square, list(range(40))), {}, quelea_conn)
    event = asyncio.run(_first_event(QueleaJobTrigger(job=job, poll_interval=0.1)))
    assert isinstance(event, TriggerEvent)
    assert event.payload["status"] == "success"
    assert (event.payload["done"], event.payload["total"], event.payload["failed"]) == (40, 40, 0)
    assert _job.results(job, quelea_conn) == [x * x for x in range(40)]
    _job.finish(job, quelea_conn)
    assert objects(storage_dir) == []
    assert not os.path.exists(job["workdir"])
    assert not _job.process_alive(job["pid"], job["pid_start"])


def test_trigger_reports_the_first_failed_call(quelea_conn):
    job = _job.submit_detached("map", (fails_on_5, list(range(10))), {}, quelea_conn)
    event = asyncio.run(_first_event(QueleaJobTrigger(job=job, poll_interval=0.1)))
    assert event.payload["status"] == "error"
    assert event.payload["first_failed"] == [0, 5]
    with pytest.raises(ZeroDivisionError, match="five") as e:
        _job.raise_failed_call(job, quelea_conn, event.payload["first_failed"])
    assert "fails_on_5" in str(e.value.__cause__)
    _job.finish(job, quelea_conn)


def test_trigger_notices_the_job_process_dying(quelea_conn):
    job = _job.submit_detached("map", (sleepy, [1, 2]), {}, quelea_conn)
    os.killpg(job["pid"], 9)
    started = time.monotonic()
    event = asyncio.run(_first_event(QueleaJobTrigger(job=job, poll_interval=0.1)))
    assert event.payload["status"] == "error"
    assert (
        f"pid {job['pid']}" in event.payload["message"]
        and "exited before the job finished" in (event.payload["message"])
    )
    assert time.monotonic() - started < 30
    _job.finish(job, quelea_conn)


def test_trigger_times_out_and_cancels(quelea_conn, storage_dir):
    job = _job.submit_detached("map", (sleepy, [1, 2]), {}, quelea_conn)
    trigger = QueleaJobTrigger(job=job, poll_interval=0.1, end_time=time.time() + 1)
    event = asyncio.run(_first_event(trigger))
    assert event.payload["status"] == "timeout"
    assert not _job.process_alive(job["pid"], job["pid_start"])
    assert objects(storage_dir) == []


def test_trigger_on_kill_cancels_the_job(quelea_conn, storage_dir):
    job = _job.submit_detached("map", (sleepy, [1, 2, 3]), {}, quelea_conn)
    runners = _children_of(job["pid"], at_least=2)
    assert len(runners) == 2  # local.workers
    trigger = QueleaJobTrigger(job=job, poll_interval=0.1)

    async def kill_while_polling():
        task = asyncio.create_task(trigger.run().__anext__())
        await asyncio.sleep(0.5)
        assert not task.done()  # still polling
        await trigger.on_kill()
        task.cancel()

    started = time.monotonic()
    asyncio.run(kill_while_polling())
    assert time.monotonic() - started < 15
    assert not _job.process_alive(job["pid"], job["pid_start"])
    time.sleep(0.5)
    assert [p for p in runners if _job.process_alive(p)] == []
    assert objects(storage_dir) == []


def _children_of(pid: int, at_least: int = 1) -> list[int]:
    """PIDs whose parent is ``pid`` (quelea's runners), waiting until there are some."""
    deadline = time.monotonic() + 10
    while True:
        kids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError):
                    continue
                if ppid == pid:
                    kids.append(int(entry))
        if len(kids) >= at_least or time.monotonic() > deadline:
            return kids
        time.sleep(0.05)


def test_job_outlives_the_submitting_process(quelea_conn, tmp_path, storage_dir):
    """The task process that submits (and defers) exits; the job carries on."""
    script = tmp_path / "submit_and_exit.py"
    script.write_text(
        "import json, sys, time\n"
        "from quelea_airflow import _job\n"
        "def work(x):\n"
        "    time.sleep(0.3)\n"
        "    return x + 1000\n"
        f"job = _job.submit_detached('map', (work, list(range(8))), {{}}, {quelea_conn!r})\n"
        "print(json.dumps(job))\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    # The submitter is gone, the job's process is not.
    assert _job.process_alive(job["pid"], job["pid_start"])
    futures = quelea.attach(job["handles"][0], config=quelea_conn)
    assert quelea.get_result(futures, timeout=60) == [x + 1000 for x in range(8)]
    _job.finish(job, quelea_conn)
    assert objects(storage_dir) == []


def test_submit_errors_are_reported(quelea_conn):
    with pytest.raises(_job.DetachedSubmitError, match="map_iterdata is empty"):
        _job.submit_detached("map", (slow_square, []), {}, quelea_conn)
    with pytest.raises(ValueError, match="kind must be one of"):
        _job.submit_detached("scan", (slow_square, [1]), {}, quelea_conn)


def test_map_reduce_job_has_two_parts(quelea_conn):
    job = _job.submit_detached("map_reduce", (slow_square, list(range(10)), sum), {}, quelea_conn)
    assert len(job["handles"]) == 2
    event = asyncio.run(_first_event(QueleaJobTrigger(job=job, poll_interval=0.1)))
    assert event.payload["status"] == "success" and event.payload["total"] == 11
    assert _job.results(job, quelea_conn) == sum(x * x for x in range(10))
    _job.finish(job, quelea_conn)


def _cancel_while_polling(trigger: QueleaJobTrigger) -> None:
    """What the triggerer does to a trigger it drops: cancel the task running ``run()``."""

    async def go():
        task = asyncio.create_task(trigger.run().__anext__())
        await asyncio.sleep(0.5)
        assert not task.done()  # still polling
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())


def _task_instance_in_db(state: str | None) -> types.SimpleNamespace:
    """The key of a task instance as the triggerer gives it (``trigger.task_instance``);
    in the metadata DB with ``state``, or absent (a cleared run) when ``state`` is None."""
    key = types.SimpleNamespace(
        dag_id="quelea_trigger_cancel", task_id="wait", run_id=f"r{time.time_ns()}", map_index=-1
    )
    if state is None:
        return key
    import pendulum
    from airflow.models.dag import DAG
    from airflow.operators.empty import EmptyOperator
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunType

    dag = DAG(key.dag_id, schedule=None, start_date=pendulum.datetime(2026, 1, 1))
    EmptyOperator(task_id=key.task_id, dag=dag)
    now = pendulum.now("UTC")
    with create_session() as session:
        run = dag.create_dagrun(
            run_id=key.run_id,
            run_type=DagRunType.MANUAL,
            state=DagRunState.RUNNING,
            execution_date=now,
            data_interval=(now, now),
            session=session,
        )
        run.get_task_instance(key.task_id, session=session).state = state
    return key


@pytest.mark.skipif(
    AIRFLOW_V_3_3_PLUS, reason="before 3.3 only: 3.3+ never cancels a job on a trigger cancellation"
)
def test_before_3_3_a_triggerer_restart_keeps_the_job(quelea_conn):
    """Before 3.3 the triggerer cancels a trigger both when its task is killed and when the
    triggerer restarts. After a restart the task instance is still ``deferred`` (another
    triggerer picks the trigger up), so the job must go on."""
    job = _job.submit_detached("map", (sleepy, [1, 2]), {}, quelea_conn)
    trigger = QueleaJobTrigger(job=job, poll_interval=0.1)
    trigger.task_instance = _task_instance_in_db("deferred")
    _cancel_while_polling(trigger)
    assert _job.process_alive(job["pid"], job["pid_start"])
    _job.finish(job, quelea_conn)


def test_cancelling_the_trigger_of_a_killed_task(quelea_conn, storage_dir):
    """The task instance is gone from ``deferred`` (cleared, marked failed) and the triggerer
    cancels the trigger: before 3.3 that is the only sign of a kill, so the job is cancelled;
    from 3.3 on the kill comes through ``on_kill`` and a cancellation leaves the job alone."""
    job = _job.submit_detached("map", (sleepy, [1, 2]), {}, quelea_conn)
    trigger = QueleaJobTrigger(job=job, poll_interval=0.1)
    trigger.task_instance = _task_instance_in_db(None)  # the task was cleared
    _cancel_while_polling(trigger)
    if AIRFLOW_V_3_3_PLUS:
        # A cancellation is a triggerer restart or a redistribution: on_kill is the kill.
        assert _job.process_alive(job["pid"], job["pid_start"])
        _job.finish(job, quelea_conn)
    else:
        assert not _job.process_alive(job["pid"], job["pid_start"])
    assert objects(storage_dir) == []
