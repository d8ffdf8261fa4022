"""Operators: every argument reaches the executor, templating, results and errors.

The argument-passing tests use a spy executor (it records the call instead of
running it) because some arguments (obj_*) are not runnable yet; everything
else runs on a real quelea executor with localdisk storage.
"""

from __future__ import annotations

import datetime
import re
import time

import pytest

from helpers import objects
from quelea_airflow._compat import AirflowException, TaskDeferred
from quelea_airflow.hooks.quelea import QueleaHook
from quelea_airflow.operators.quelea import (
    QueleaCallAsyncOperator,
    QueleaMapOperator,
    QueleaMapReduceOperator,
)


def inc(x):
    return x + 1


def total(results, offset=0):
    return sum(results) + offset


class SpyExecutor:
    """Records the FunctionExecutor call the operator makes (a test double)."""

    def __init__(self, **executor_kwargs):
        self.executor_kwargs = executor_kwargs
        self.calls = []
        self.closed = False

    def _record(self, method, *args, **kwargs):
        self.calls.append((method, args, kwargs))
        return ["future"]

    def call_async(self, *args, **kwargs):
        return self._record("call_async", *args, **kwargs)

    def map(self, *args, **kwargs):
        return self._record("map", *args, **kwargs)

    def map_reduce(self, *args, **kwargs):
        return self._record("map_reduce", *args, **kwargs)

    def wait(self, fs=None, throw_except=True, timeout=None):
        return fs, []

    def get_result(self):
        return "spy-result"

    def close(self):
        self.closed = True


@pytest.fixture
def spy(monkeypatch):
    made = []

    def get_executor(self, config=None, **overrides):
        executor = SpyExecutor(config=config, **overrides)
        made.append(executor)
        return executor

    monkeypatch.setattr(QueleaHook, "get_executor", get_executor)
    return made


def _run(op):
    return op.execute(context={})


def test_call_async_arguments_reach_the_executor(spy):
    op = QueleaCallAsyncOperator(
        task_id="t",
        func=inc,
        data={"x": 1},
        extra_env={"A": "1"},
        runtime_memory=256,
        timeout=12,
        include_modules=["m1"],
        exclude_modules=["m2"],
        max_workers=3,
        deferrable=False,
    )
    assert _run(op) == "spy-result"
    (executor,) = spy
    assert executor.executor_kwargs == {"config": None, "max_workers": 3}
    assert executor.calls == [
        (
            "call_async",
            (inc, {"x": 1}),
            {
                "extra_env": {"A": "1"},
                "runtime_memory": 256,
                "timeout": 12,
                "include_modules": ["m1"],
                "exclude_modules": ["m2"],
            },
        )
    ]
    assert executor.closed


def test_map_arguments_reach_the_executor(spy):
    op = QueleaMapOperator(
        task_id="t",
        map_function=inc,
        map_iterdata=[1, 2],
        chunksize=5,
        extra_args=(7,),
        extra_env={"B": "2"},
        runtime_memory=512,
        obj_chunk_size=1024,
        obj_chunk_number=4,
        obj_newline="\r\n",
        timeout=9,
        include_modules=["a"],
        exclude_modules=["b"],
        deferrable=False,
    )
    _run(op)
    (executor,) = spy
    assert executor.calls == [
        (
            "map",
            (inc, [1, 2]),
            {
                "chunksize": 5,
                "extra_args": (7,),
                "extra_env": {"B": "2"},
                "runtime_memory": 512,
                "obj_chunk_size": 1024,
                "obj_chunk_number": 4,
                "obj_newline": "\r\n",
                "timeout": 9,
                "include_modules": ["a"],
                "exclude_modules": ["b"],
            },
        )
    ]


def test_map_reduce_arguments_reach_the_executor(spy):
    op = QueleaMapReduceOperator(
        task_id="t",
        map_function=inc,
        map_iterdata=[1, 2],
        reduce_function=total,
        chunksize=2,
        extra_args=(1,),
        extra_args_reduce=(10,),
        extra_env={"C": "3"},
        map_runtime_memory=128,
        reduce_runtime_memory=1024,
        timeout=3,
        obj_chunk_size=10,
        obj_chunk_number=2,
        obj_newline="|",
        obj_reduce_by_key=True,
        spawn_reducer=50,
        include_modules=["x"],
        exclude_modules=["y"],
        deferrable=False,
    )
    _run(op)
    (executor,) = spy
    assert executor.calls == [
        (
            "map_reduce",
            (inc, [1, 2], total),
            {
                "chunksize": 2,
                "extra_args": (1,),
                "extra_args_reduce": (10,),
                "extra_env": {"C": "3"},
                "map_runtime_memory": 128,
                "reduce_runtime_memory": 1024,
                "timeout": 3,
                "obj_chunk_size": 10,
                "obj_chunk_number": 2,
                "obj_newline": "|",
                "obj_reduce_by_key": True,
                "spawn_reducer": 50,
                "include_modules": ["x"],
                "exclude_modules": ["y"],
            },
        )
    ]


def test_every_init_argument_is_passed_on():
    """No executor argument of an operator's signature is forgotten in executor_call()."""
    import inspect

    base = set(inspect.signature(QueleaCallAsyncOperator.__mro__[1].__init__).parameters)
    for cls, required in (
        (QueleaCallAsyncOperator, {"func": inc, "data": 1}),
        (QueleaMapOperator, {"map_function": inc, "map_iterdata": [1]}),
        (QueleaMapReduceOperator, {"map_function": inc, "map_iterdata": [1], "reduce_function": total}),
    ):
        own = set(inspect.signature(cls.__init__).parameters) - base - {"self", "kwargs"}
        args, kwargs = cls(task_id="t", **required).executor_call()
        assert own == set(kwargs) | set(required), cls
        assert list(args) == list(required.values())


def test_data_arguments_are_templated():
    assert set(QueleaMapOperator.template_fields) >= {"map_iterdata", "extra_args", "extra_env"}
    assert set(QueleaMapReduceOperator.template_fields) >= {"map_iterdata", "extra_args_reduce"}
    assert "data" in QueleaCallAsyncOperator.template_fields
    op = QueleaMapOperator(
        task_id="t",
        map_function=inc,
        map_iterdata=["{{ params.a }}", "{{ ds }}"],
        extra_env={"RUN": "{{ params.a }}"},
        quelea_config={"bucket": "{{ params.bucket }}"},
    )
    op.render_template_fields(context={"params": {"a": "A", "bucket": "bkt"}, "ds": "2026-01-01"})
    assert op.map_iterdata == ["A", "2026-01-01"]
    assert op.extra_env == {"RUN": "A"}
    assert op.quelea_config == {"bucket": "bkt"}


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="map_function must be callable"):
        QueleaMapOperator(task_id="t", map_function=3, map_iterdata=[1])
    with pytest.raises(TypeError, match="reduce_function must be callable"):
        QueleaMapReduceOperator(task_id="t", map_function=inc, map_iterdata=[1], reduce_function=None)
    with pytest.raises(TypeError, match="quelea_config must be a dict"):
        QueleaMapOperator(task_id="t", map_function=inc, map_iterdata=[1], quelea_config="x")
    with pytest.raises(ValueError, match="poll_interval"):
        QueleaMapOperator(task_id="t", map_function=inc, map_iterdata=[1], poll_interval=0)
    with pytest.raises(ValueError, match="defer_after must be 0 or more seconds"):
        QueleaMapOperator(task_id="t", map_function=inc, map_iterdata=[1], defer_after=-1)


def test_deferrable_default_comes_from_airflow_config(monkeypatch):
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "True")
    assert QueleaMapOperator(task_id="t", map_function=inc, map_iterdata=[1]).deferrable is True
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "False")
    assert QueleaMapOperator(task_id="t", map_function=inc, map_iterdata=[1]).deferrable is False


# -- real executor ---------------------------------------------------------------------------------


def test_results_shapes(quelea_conn):
    assert _run(QueleaMapOperator(task_id="m", map_function=inc, map_iterdata=[1, 2, 3])) == [2, 3, 4]
    assert _run(QueleaMapOperator(task_id="m1", map_function=inc, map_iterdata=[1])) == [2]
    op = QueleaMapReduceOperator(
        task_id="mr",
        map_function=inc,
        map_iterdata=[1, 2, 3],
        reduce_function=total,
        extra_args_reduce=(100,),
    )
    assert _run(op) == 109
    assert _run(QueleaCallAsyncOperator(task_id="c", func=inc, data=41)) == 42


def test_result_that_cannot_go_to_xcom_names_the_task(quelea_conn):
    op = QueleaCallAsyncOperator(task_id="makes_a_lock", func=_returns_unserializable, data=None)
    with pytest.raises(AirflowException, match="task 'makes_a_lock'.*cannot be stored in XCom"):
        _run(op)
    op = QueleaCallAsyncOperator(
        task_id="no_push", func=_returns_unserializable, data=None, do_xcom_push=False
    )
    assert type(_run(op)).__name__ == "Unserializable"


class Unserializable:
    pass


def _returns_unserializable(_):
    return Unserializable()


def test_a_sync_map_logs_progress_lines(quelea_conn, capfd, caplog):
    op = QueleaMapOperator(
        task_id="progress", map_function=slow_inc, map_iterdata=list(range(4)), poll_interval=0.5
    )
    with caplog.at_level("INFO"):
        assert _run(op) == [1, 2, 3, 4]
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    assert re.search(r"job [0-9a-f]+-\d+: 0/4 \(0 failed\)", text), text[-2000:]
    assert re.search(r"job [0-9a-f]+-\d+: 4/4 \(0 failed\)", text), text[-2000:]


def test_remote_error_keeps_its_type_and_is_logged(quelea_conn, capfd, caplog):
    op = QueleaMapOperator(task_id="boom", map_function=_fails_on_3, map_iterdata=[1, 2, 3, 4])
    with pytest.raises(KeyError) as e:
        _run(op)
    assert "missing-3" in str(e.value)
    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    assert "Remote traceback" in logged and 'raise KeyError("missing-3")' in logged


def _fails_on_3(x):
    if x == 3:
        raise KeyError("missing-3")
    return x


def slow_inc(x):
    time.sleep(3)  # outlasts the check before deferring
    return x + 1


def test_execution_timeout_bounds_the_deferral(quelea_conn, monkeypatch):
    op = QueleaMapOperator(
        task_id="d",
        map_function=slow_inc,
        map_iterdata=[1],
        deferrable=True,
        defer_after=0.5,
        execution_timeout=datetime.timedelta(seconds=30),
    )
    with pytest.raises(TaskDeferred) as e:
        _run(op)
    assert e.value.timeout == datetime.timedelta(seconds=30)
    trigger = e.value.trigger
    assert trigger.end_time is not None and trigger.cancel_on_kill
    job = e.value.kwargs["job"]
    assert op.execute_complete({}, event={"status": "success", "job": job}) == [2]


def test_a_job_done_before_deferring_is_read_without_deferring(quelea_conn, storage_dir):
    """Issue 13's scheduler race: a job that is done at once never defers."""
    op = QueleaMapOperator(task_id="quick", map_function=inc, map_iterdata=[1, 2, 3], deferrable=True)
    assert _run(op) == [2, 3, 4]  # no TaskDeferred
    assert objects(storage_dir) == []
    failing = QueleaMapOperator(
        task_id="quick_fail", map_function=_fails_on_3, map_iterdata=[3], deferrable=True
    )
    with pytest.raises(KeyError, match="missing-3"):
        _run(failing)
    assert objects(storage_dir) == []


def _host_pid(text: str) -> int:
    found = re.findall(r"local host process (\d+)", text)
    assert found, text[-2000:]
    return int(found[-1])


def test_a_deferred_task_killed_mid_run_leaves_no_runner(quelea_conn, storage_dir, capfd, caplog):
    """Deferred, then killed while the trigger polls: the host and every runner are
    gone (by PID) and no object is left."""
    import asyncio

    from test_trigger_and_job import _children_of, wait_gone

    op = QueleaMapOperator(
        task_id="killed",
        map_function=_sleeps,
        map_iterdata=list(range(6)),
        deferrable=True,
        poll_interval=0.1,
        defer_after=0.5,
    )
    with caplog.at_level("INFO"), pytest.raises(TaskDeferred) as e:
        _run(op)
    out, err = capfd.readouterr()
    host = _host_pid(out + err + caplog.text)
    runners = _children_of(host, at_least=2)
    assert len(runners) == 2
    trigger = e.value.trigger

    async def kill_while_polling():
        task = asyncio.create_task(trigger.run().__anext__())
        await asyncio.sleep(0.5)
        assert not task.done()
        await trigger.on_kill()
        task.cancel()

    asyncio.run(kill_while_polling())
    assert wait_gone([host, *runners], 10), f"host {host} or runners {runners} still running"
    assert objects(storage_dir) == []


def _sleeps(x):
    time.sleep(60)
    return x


def test_submit_only_leaves_the_job_to_a_sensor(quelea_conn, storage_dir):
    """wait_for_completion=False: the task pushes the job and returns; a sensor
    follows it and, with clean_when_done, deletes its objects."""
    from quelea_airflow.sensors.quelea import QueleaJobSensor

    pushed = {}

    class TaskInstance:  # the one method of Airflow's task instance the operator uses
        def xcom_push(self, key, value):
            pushed[key] = value

    op = QueleaMapOperator(task_id="submit", map_function=inc, map_iterdata=[1, 2], wait_for_completion=False)
    assert op.execute(context={"ti": TaskInstance()}) is None
    job = pushed["quelea_job"]
    sensor = QueleaJobSensor(task_id="s", job=job, deferrable=False, clean_when_done=True)
    deadline = time.monotonic() + 60
    while not sensor.poke({}):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert objects(storage_dir) == []


def test_memory_storage_cannot_defer(monkeypatch):
    from helpers import set_conn

    set_conn(monkeypatch, "quelea_default", conn_type="quelea", extra={"storage": "memory"})
    op = QueleaMapOperator(task_id="d", map_function=inc, map_iterdata=[1], deferrable=True)
    with pytest.raises(ValueError, match="storage `memory` cannot be followed from another process"):
        _run(op)
