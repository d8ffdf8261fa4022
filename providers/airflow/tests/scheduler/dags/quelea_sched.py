"""DAGs run by a real scheduler + triggerer (tests/scheduler) and, on Airflow 2.11, by
``dag.test()``: 5,000-element maps (sync and deferrable, with and without chunksize) on
the local and http backends, 50 deferrable tasks, a sensor after a submit-only map, and
the three paths (sync, deferrable, sensor) with calls that print."""

from __future__ import annotations

from datetime import datetime

try:  # Airflow 3
    from airflow.sdk import DAG, XComArg, task
except ImportError:  # Airflow 2.11
    from airflow import DAG
    from airflow.decorators import task
    from airflow.models.xcom_arg import XComArg

from quelea_airflow.operators.quelea import QueleaMapOperator
from quelea_airflow.sensors.quelea import QueleaJobSensor

BIG = 5000
START = datetime(2026, 1, 1)
DEFERRALS = 50


def slow_double(x):
    import time

    time.sleep(0.002)
    return 2 * x


def nap(seconds):
    import time

    time.sleep(seconds)
    return seconds


def maps(dag_id: str, conn_id: str) -> DAG:
    """Four 5,000-element maps (sync/deferrable x automatic batches/chunksize=10), checked."""
    with DAG(dag_id, schedule=None, start_date=START, catchup=False, max_active_tasks=2) as dag:
        outputs = {}
        for mode in ("sync", "deferrable"):
            for batching, chunksize in (("auto", None), ("chunked", 10)):
                op = QueleaMapOperator(
                    task_id=f"{mode}_{batching}",
                    map_function=slow_double,
                    map_iterdata=list(range(BIG)),
                    chunksize=chunksize,
                    quelea_conn_id=conn_id,
                    deferrable=mode == "deferrable",
                    defer_after=1.0,
                    poll_interval=1.0,
                )
                outputs[op.task_id] = op.output

        @task
        def check(sync_auto, sync_chunked, deferrable_auto, deferrable_chunked):
            results = {
                "sync_auto": sync_auto,
                "sync_chunked": sync_chunked,
                "deferrable_auto": deferrable_auto,
                "deferrable_chunked": deferrable_chunked,
            }
            for task_id, values in results.items():
                assert values == [2 * x for x in range(BIG)], (task_id, values[:5])
            return sorted(results)

        check(**outputs)
    return dag


def deferrals(dag_id: str) -> DAG:
    """50 deferrable tasks: half finish before deferring (defer_after), half defer and
    fire soon after, the timing that raced the scheduler."""
    with DAG(dag_id, schedule=None, start_date=START, catchup=False, max_active_tasks=8) as dag:
        QueleaMapOperator.partial(
            task_id="defer",
            map_function=nap,
            deferrable=True,
            defer_after=1.0,
            poll_interval=0.5,
            quelea_config={"local": {"workers": 1}},
        ).expand(map_iterdata=[[0.0] if i % 2 else [2.0] for i in range(DEFERRALS)])
    return dag


def sensor(dag_id: str) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        submit = QueleaMapOperator(
            task_id="submit",
            map_function=slow_double,
            map_iterdata=list(range(BIG)),
            chunksize=10,
            wait_for_completion=False,
        )
        submit >> QueleaJobSensor(
            task_id="wait",
            job=XComArg(submit, key="quelea_job"),
            deferrable=True,
            clean_when_done=True,
            poke_interval=1,
            timeout=300,
        )
    return dag


OUTPUT_N = 3


def say(x):
    import sys

    print(f"quelea-out {x} on stdout")
    print(f"quelea-err {x} on stderr", file=sys.stderr)
    return x + 100


def paths(dag_id: str) -> DAG:
    """A sync map, a deferrable map and a submit-only map with a sensor, whose calls
    print (each call's output must reach the task log once, at info level, with its
    call id), results checked. Run by the LocalExecutor and the CeleryExecutor runs."""
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        common = {"map_function": say, "map_iterdata": list(range(OUTPUT_N)), "chunksize": 1}
        sync = QueleaMapOperator(task_id="sync", deferrable=False, poll_interval=1.0, **common)
        deferred = QueleaMapOperator(
            task_id="deferred", deferrable=True, defer_after=0.0, poll_interval=1.0, **common
        )
        submit = QueleaMapOperator(task_id="submit", wait_for_completion=False, **common)
        wait = QueleaJobSensor(
            task_id="wait",
            job=XComArg(submit, key="quelea_job"),
            deferrable=False,
            clean_when_done=True,
            poke_interval=1,
            timeout=300,
        )
        submit >> wait

        @task
        def check_paths(sync_values, deferred_values):
            expected = [x + 100 for x in range(OUTPUT_N)]
            assert sync_values == expected, sync_values
            assert deferred_values == expected, deferred_values
            return "ok"

        check_paths(sync.output, deferred.output)
    return dag


sched_maps_local = maps("quelea_sched_maps_local", "quelea_default")
sched_maps_http = maps("quelea_sched_maps_http", "quelea_http")
sched_deferrals = deferrals("quelea_sched_deferrals")
sched_sensor = sensor("quelea_sched_sensor")
sched_paths = paths("quelea_sched_paths")
sched_celery = paths("quelea_sched_celery")
