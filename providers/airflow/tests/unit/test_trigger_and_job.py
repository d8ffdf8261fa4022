"""QueleaJobTrigger and the detached job it follows, on real quelea jobs.

Jobs are submitted with ``detach=True`` (``quelea_airflow._job.submit``) and
run in quelea's local host process; the tests find that host and its runner
processes by PID (through /proc: test-only, the provider uses none of it).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

import quelea
from helpers import objects
from quelea_airflow import _job
from quelea_airflow._compat import AIRFLOW_V_3_3_PLUS, TriggerEvent
from quelea_airflow.triggers.quelea import QueleaJobTrigger

E2E_DAGS = Path(__file__).resolve().parents[1] / "e2e" / "dags"
JOB = {
    "kind": "map",
    "handles": ['{"executor_id": "abc123-0", "job_id": "M000", "total_calls": 3}'],
    "executor_id": "abc123-0",
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


def pid_alive(pid: int | None) -> bool:
    """Running and not a zombie (a host that exited stays a zombie of this process)."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_gone(pids: list, limit: float = 30.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not any(pid_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def _children_of(pid: int, at_least: int = 1) -> list[int]:
    """PIDs whose parent is ``pid`` (the host's runners), waiting until there are some."""
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
                if ppid == pid and pid_alive(int(entry)):
                    kids.append(int(entry))
        if len(kids) >= at_least or time.monotonic() > deadline:
            return kids
        time.sleep(0.05)


def _submit(kind, args, config, **kwargs) -> _job.Submitted:
    """Submits and lets the job go on (no check before deferring)."""
    return _job.submit(kind, args, kwargs, config, check_s=0)


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
        "fire_after": None,
    }


def test_trigger_rejects_bad_arguments():
    with pytest.raises(ValueError, match="job must be a quelea job dict"):
        QueleaJobTrigger(job={"kind": "map"})
    with pytest.raises(ValueError, match="poll_interval"):
        QueleaJobTrigger(job=JOB, poll_interval=0)


async def _first_event(trigger, timeout=60):
    return await asyncio.wait_for(trigger.run().__anext__(), timeout)


def test_the_job_dict_holds_no_pid_and_no_secret(quelea_conn):
    submitted = _submit("map", (slow_square, list(range(4))), quelea_conn)
    assert set(submitted.job) == {"kind", "handles", "executor_id"}
    assert all("pid" not in k for h in submitted.job["handles"] for k in json.loads(h))
    assert submitted.host_pid and pid_alive(submitted.host_pid)  # the local host runs it
    _job.Job(submitted.job, quelea_conn).finish()


def test_trigger_success_then_results_and_cleanup(quelea_conn, storage_dir):
    submitted = _submit("map", (slow_square, list(range(40))), quelea_conn)
    job = submitted.job
    event = asyncio.run(_first_event(QueleaJobTrigger(job=job, poll_interval=0.1)))
    assert isinstance(event, TriggerEvent)
    assert event.payload["status"] == "success"
    assert (event.payload["done"], event.payload["total"], event.payload["failed"]) == (40, 40, 0)
    follower = _job.Job(job, quelea_conn)
    assert follower.results(timeout=60) == [x * x for x in range(40)]
    follower.finish()
    assert objects(storage_dir) == []
    # The host ends with its job.
    assert wait_gone([submitted.host_pid])


def test_the_trigger_fires_no_earlier_than_fire_after(quelea_conn):
    """A job done at once still fires only at fire_after (the scheduler's deferral race)."""
    submitted = _submit("map", (slow_square, [1, 2]), quelea_conn)
    assert quelea.get_result(quelea.attach(submitted.job["handles"][0], config=quelea_conn), timeout=60)
    started = time.time()
    trigger = QueleaJobTrigger(job=submitted.job, poll_interval=0.1, fire_after=started + 2.0)
    event = asyncio.run(_first_event(trigger))
    assert event.payload["status"] == "success"
    assert time.time() >= started + 2.0
    _job.Job(submitted.job, quelea_conn).finish()


def test_trigger_logs_progress_lines(quelea_conn, caplog, capfd):
    job = _submit("map", (slow_square, list(range(40))), quelea_conn).job
    with caplog.at_level("INFO"):
        asyncio.run(_first_event(QueleaJobTrigger(job=job, poll_interval=0.1)))
    last = f"job {job['executor_id']}: 40/40 (0 failed)"
    # Airflow 3 logs through structlog (to the stream), 2.11 through logging.
    out, err = capfd.readouterr()
    lines = [line for line in (out + err).splitlines() if last in line]
    records = [r for r in caplog.records if r.getMessage() == last]
    assert lines or records, (out + err)[-2000:]
    assert all("info" in line.lower() for line in lines) and all(r.levelname == "INFO" for r in records)
    _job.Job(job, quelea_conn).finish()


def test_trigger_reports_the_first_failed_call(quelea_conn):
    job = _submit("map", (fails_on_5, list(range(10))), quelea_conn).job
    event = asyncio.run(_first_event(QueleaJobTrigger(job=job, poll_interval=0.1)))
    assert event.payload["status"] == "error"
    assert event.payload["first_failed"] == [0, 5]
    follower = _job.Job(job, quelea_conn)
    with pytest.raises(ZeroDivisionError, match="five") as e:
        follower.raise_failed_call(event.payload["first_failed"], timeout=60)
    assert "fails_on_5" in str(e.value.__cause__)
    follower.finish()


def test_a_killed_host_is_reported_abandoned(quelea_conn, storage_dir):
    """The job's host is SIGKILLed: nothing runs its calls any more. Its lease
    (quelea.host_lease) says so, and the trigger fires `abandoned` at its next poll,
    long before end_time; the job's objects are deleted by whoever finishes it."""
    submitted = _submit("map", (sleepy, [1, 2]), quelea_conn)
    handle = submitted.job["handles"][0]
    deadline = time.monotonic() + 30
    while quelea.host_lease(handle, config=quelea_conn) is None:  # the host accepted the job
        assert time.monotonic() < deadline, "no lease"
        time.sleep(0.1)
    os.killpg(submitted.host_pid, 9)
    started = time.monotonic()
    trigger = QueleaJobTrigger(job=submitted.job, poll_interval=0.1, end_time=time.time() + 120)
    event = asyncio.run(_first_event(trigger))
    assert event.payload["status"] == "abandoned", event.payload
    assert f"pid {submitted.host_pid}" in event.payload["message"], event.payload
    assert time.monotonic() - started < 30
    _job.Job(submitted.job, quelea_conn).finish(cancel=True, grace=0.0)
    assert objects(storage_dir) == []


def test_trigger_times_out_and_cancels(quelea_conn, storage_dir):
    submitted = _submit("map", (sleepy, [1, 2]), quelea_conn)
    runners = _children_of(submitted.host_pid, at_least=2)
    trigger = QueleaJobTrigger(job=submitted.job, poll_interval=0.1, end_time=time.time() + 1)
    event = asyncio.run(_first_event(trigger))
    assert event.payload["status"] == "timeout"
    assert wait_gone([submitted.host_pid, *runners]), "the host or a runner outlived the cancel"
    assert objects(storage_dir) == []


def test_trigger_on_kill_cancels_the_job(quelea_conn, storage_dir):
    submitted = _submit("map", (sleepy, [1, 2, 3]), quelea_conn)
    runners = _children_of(submitted.host_pid, at_least=2)
    assert len(runners) == 2  # local.workers
    trigger = QueleaJobTrigger(job=submitted.job, poll_interval=0.1)

    async def kill_while_polling():
        task = asyncio.create_task(trigger.run().__anext__())
        await asyncio.sleep(0.5)
        assert not task.done()  # still polling
        await trigger.on_kill()
        task.cancel()

    started = time.monotonic()
    asyncio.run(kill_while_polling())
    assert time.monotonic() - started < 15
    assert wait_gone([submitted.host_pid, *runners], 10), "the host or a runner outlived on_kill"
    assert objects(storage_dir) == []


def test_job_outlives_the_submitting_process(quelea_conn, tmp_path, storage_dir):
    """The task process that submits (and defers) exits; the job carries on."""
    script = tmp_path / "submit_and_exit.py"
    script.write_text(
        "import json, sys, time\n"
        "from quelea_airflow import _job\n"
        "def work(x):\n"
        "    time.sleep(0.3)\n"
        "    return x + 1000\n"
        f"s = _job.submit('map', (work, list(range(8))), {{}}, {quelea_conn!r}, check_s=0)\n"
        "print(json.dumps({'job': s.job, 'host': s.host_pid}))\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    job = printed["job"]
    # The submitter is gone, the job's host is not.
    assert pid_alive(printed["host"])
    futures = quelea.attach(job["handles"][0], config=quelea_conn)
    assert quelea.get_result(futures, timeout=60) == [x + 1000 for x in range(8)]
    _job.Job(job, quelea_conn).finish()
    assert objects(storage_dir) == []


def test_submit_errors_are_reported(quelea_conn, storage_dir):
    with pytest.raises(ValueError, match="map_iterdata is empty"):
        _job.submit("map", (slow_square, []), {}, quelea_conn)
    with pytest.raises(ValueError, match="kind must be one of"):
        _job.submit("scan", (slow_square, [1]), {}, quelea_conn)
    assert objects(storage_dir) == []


def test_a_job_done_within_the_check_is_reported_finished(quelea_conn):
    submitted = _job.submit("map", (abs, [-1, -2]), {}, quelea_conn, check_s=30)
    assert submitted.finished
    follower = _job.Job(submitted.job, quelea_conn)
    assert follower.progress()["done"] == 2
    assert follower.results(timeout=10) == [1, 2]
    follower.finish()


def test_map_reduce_job_has_two_parts(quelea_conn, storage_dir):
    job = _submit("map_reduce", (slow_square, list(range(10)), sum), quelea_conn).job
    assert len(job["handles"]) == 2
    event = asyncio.run(_first_event(QueleaJobTrigger(job=job, poll_interval=0.1)))
    assert event.payload["status"] == "success" and event.payload["total"] == 11
    follower = _job.Job(job, quelea_conn)
    assert follower.results(timeout=60) == sum(x * x for x in range(10))
    follower.finish()
    assert objects(storage_dir) == []


def test_a_detached_map_reduce_reduces_after_its_submitter_is_gone(quelea_conn, tmp_path):
    """The reduce of a detached map_reduce runs in quelea's host, not in the
    (long gone) process that submitted it."""
    script = tmp_path / "submit_map_reduce.py"
    script.write_text(
        "import json, time\n"
        "from quelea_airflow import _job\n"
        "def work(x):\n"
        "    time.sleep(0.05)\n"
        "    return x * 3\n"
        f"s = _job.submit('map_reduce', (work, list(range(20)), sum), {{}}, {quelea_conn!r}, check_s=0)\n"
        "print(json.dumps(s.job))\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    follower = _job.Job(job, quelea_conn)
    assert follower.results(timeout=60) == sum(x * 3 for x in range(20))
    follower.finish()


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
    in the metadata DB with ``state`` (a run of e2e/dags/quelea_trigger_cancel.py under
    dag.test(), its task then set to ``state``), or absent (a cleared run) when ``state``
    is None."""
    key = types.SimpleNamespace(
        dag_id="quelea_trigger_cancel", task_id="wait", run_id=f"r{time.time_ns()}", map_index=-1
    )
    if state is None:
        return key
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    try:  # Airflow 3
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 2.11
        from airflow.models.dagbag import DagBag

    bag = DagBag(dag_folder=str(E2E_DAGS / "quelea_trigger_cancel.py"))
    assert not bag.import_errors, bag.import_errors
    run = bag.get_dag(key.dag_id).test()
    key.run_id = run.run_id
    with create_session() as session:
        ti = (
            session.query(TaskInstance)
            .filter_by(dag_id=key.dag_id, task_id=key.task_id, run_id=key.run_id, map_index=-1)
            .one()
        )
        ti.state = state
    return key


def test_a_triggerer_restart_keeps_the_job(quelea_conn):
    """A trigger is cancelled when the triggerer restarts (or hands it to another one),
    while its task instance is still ``deferred`` in the DB: the job must go on, on
    every version (before 3.3 the trigger sees the task is still deferred; from 3.3 a
    cancellation never cancels the job: ``on_kill`` is the kill)."""
    submitted = _submit("map", (sleepy, [1, 2]), quelea_conn)
    trigger = QueleaJobTrigger(job=submitted.job, poll_interval=0.1)
    trigger.task_instance = _task_instance_in_db("deferred")
    _cancel_while_polling(trigger)
    assert pid_alive(submitted.host_pid)
    assert _job.Job(submitted.job, quelea_conn).progress()["failed"] == 0  # not cancelled
    _job.Job(submitted.job, quelea_conn).finish()


def test_cancelling_the_trigger_of_a_killed_task(quelea_conn, storage_dir):
    """The task instance is gone from ``deferred`` (cleared, marked failed) and the triggerer
    cancels the trigger: before 3.3 that is the only sign of a kill, so the job is cancelled;
    from 3.3 on the kill comes through ``on_kill`` and a cancellation leaves the job alone."""
    submitted = _submit("map", (sleepy, [1, 2]), quelea_conn)
    trigger = QueleaJobTrigger(job=submitted.job, poll_interval=0.1)
    trigger.task_instance = _task_instance_in_db(None)  # the task was cleared
    _cancel_while_polling(trigger)
    if AIRFLOW_V_3_3_PLUS:
        # A cancellation is a triggerer restart or a redistribution: on_kill is the kill.
        assert pid_alive(submitted.host_pid)
        _job.Job(submitted.job, quelea_conn).finish()
    else:
        assert wait_gone([submitted.host_pid])
    assert objects(storage_dir) == []


def test_a_failed_deferral_leaves_no_resume_record_on_the_last_try(quelea_conn, storage_dir):
    """Airflow fails a deferral itself (``__fail__``: its timeout, a crashed trigger):
    the job is cancelled and deleted, and so is the resume record that named it (the
    last try: nothing to resume)."""
    from quelea_airflow import _store
    from quelea_airflow.operators.quelea import QueleaMapOperator

    op = QueleaMapOperator(task_id="t", map_function=sleepy, map_iterdata=[1, 2], retries=0)
    ti = types.SimpleNamespace(dag_id="d", run_id="r", task_id="t", map_index=-1, try_number=1)
    context = {"ti": ti}
    submitted = _submit("map", (sleepy, [1, 2]), quelea_conn)
    _store.write_resume(quelea_conn, context, 2, {}, job=submitted.job, indices=[0, 1])
    assert _store.read_resume_record(quelea_conn, context, 2)["job"] == submitted.job
    with pytest.raises(Exception, match="(?i)defer|timeout|trigger"):
        op.resume_execution("__fail__", {"job": submitted.job, "error": "Trigger timeout"}, context)
    assert _store.read_resume_record(quelea_conn, context, 2) is None
    assert wait_gone([submitted.host_pid])
    assert objects(storage_dir) == []
