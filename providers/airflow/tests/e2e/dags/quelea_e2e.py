"""DAGs of the end-to-end tests (loaded by Airflow under its mangled module name)."""

from __future__ import annotations

from datetime import datetime

try:  # Airflow 3
    from airflow.sdk import DAG, task
except ImportError:  # Airflow 2.11
    from airflow import DAG
    from airflow.decorators import task

from quelea_airflow.operators.quelea import (
    QueleaCallAsyncOperator,
    QueleaMapOperator,
    QueleaMapReduceOperator,
)
from quelea_airflow.sensors.quelea import QueleaJobSensor

try:  # Airflow 3
    from airflow.sdk import XComArg
except ImportError:  # Airflow 2.11
    from airflow.models.xcom_arg import XComArg

N = 200


def square(x):
    # Defined in the DAG file: it reaches quelea's runners by value.
    return x * x


def add_all(results):
    return sum(results)


def hypot2(a, b):
    return a * a + b * b


def unlucky(x):
    if x == 13:
        raise ValueError(f"unlucky number {x}")
    return x


BIG = 5000


def slow_double(x):
    # About 7 s for 5,000 elements on 2 workers: the task defers (defer_after=1).
    import time

    time.sleep(0.003)
    return 2 * x


def big(dag_id: str) -> DAG:
    """Deferrable maps of 5,000 elements through the trigger: the automatic batch size
    (a local map of 512+ elements is batched) and chunksize=10."""
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        for task_id, chunksize in (("big_auto", None), ("big_chunked", 10)):
            QueleaMapOperator(
                task_id=task_id,
                map_function=slow_double,
                map_iterdata=list(range(BIG)),
                chunksize=chunksize,
                deferrable=True,
                defer_after=1.0,
                poll_interval=0.5,
            )
    return dag


def submit_only(dag_id: str, deferrable_sensor: bool) -> DAG:
    """An operator that only submits, and a sensor downstream that follows the job
    from the operator's `quelea_job` XCom and cleans it."""
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        submit = QueleaMapOperator(
            task_id="submit",
            map_function=slow_double,
            map_iterdata=list(range(600)),
            wait_for_completion=False,
        )
        submit >> QueleaJobSensor(
            task_id="wait",
            job=XComArg(submit, key="quelea_job"),
            deferrable=deferrable_sensor,
            clean_when_done=True,
            poke_interval=0.5,
            timeout=300,
        )
    return dag


def pipeline(dag_id: str, deferrable: bool) -> DAG:
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:

        @task
        def numbers():
            return list(range(N))

        nums = numbers()
        squares = QueleaMapOperator(
            task_id="squares",
            map_function=square,
            map_iterdata=nums,
            deferrable=deferrable,
            poll_interval=0.5,
        )
        total = QueleaMapReduceOperator(
            task_id="total",
            map_function=square,
            map_iterdata=nums,
            reduce_function=add_all,
            deferrable=deferrable,
            poll_interval=0.5,
        )
        one = QueleaCallAsyncOperator(
            task_id="one", func=hypot2, data=(3, 4), deferrable=deferrable, poll_interval=0.5
        )

        @task
        def check(squares, total, one):
            assert squares == [x * x for x in range(N)], squares[:10]
            assert total == sum(x * x for x in range(N)), total
            assert one == 25, one
            return {"squares": len(squares), "total": total, "one": one}

        check(squares.output, total.output, one.output)
    return dag


def failing(dag_id: str, deferrable: bool) -> DAG:
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
        QueleaMapOperator(
            task_id="fails",
            map_function=unlucky,
            map_iterdata=list(range(50)),
            deferrable=deferrable,
            poll_interval=0.5,
        )
    return dag


def decorated(dag_id: str, deferrable: bool) -> DAG:
    """``@task.quelea_map``: the decorated function is the map function, the call's argument
    the iterdata."""
    with DAG(dag_id, schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:

        @task
        def numbers():
            return list(range(N))

        @task.quelea_map(deferrable=deferrable, poll_interval=0.5)
        def cube(x):
            return x**3

        @task.quelea_map(map_iterdata=[{"a": 3, "b": 4}, {"a": 5, "b": 12}], deferrable=deferrable)
        def hypot2_of(a, b):
            return a * a + b * b

        @task
        def check(cubes, small_cubes, hyps):
            assert cubes == [x**3 for x in range(N)], cubes[:10]
            assert small_cubes == [8, 27], small_cubes
            assert hyps == [25, 169], hyps
            return len(cubes)

        # The same decorated function used twice gets a second task id (cube__1).
        check(cube(numbers()), cube([2, 3]), hypot2_of())
    return dag


e2e_sync = pipeline("quelea_e2e_sync", deferrable=False)
e2e_deferrable = pipeline("quelea_e2e_deferrable", deferrable=True)
e2e_fail_sync = failing("quelea_e2e_fail_sync", deferrable=False)
e2e_fail_deferrable = failing("quelea_e2e_fail_deferrable", deferrable=True)
e2e_decorator_sync = decorated("quelea_e2e_decorator_sync", deferrable=False)
e2e_decorator_deferrable = decorated("quelea_e2e_decorator_deferrable", deferrable=True)
e2e_big_deferrable = big("quelea_e2e_big_deferrable")
e2e_submit_only = submit_only("quelea_e2e_submit_only", deferrable_sensor=False)
e2e_submit_only_deferrable = submit_only("quelea_e2e_submit_only_deferrable", deferrable_sensor=True)
