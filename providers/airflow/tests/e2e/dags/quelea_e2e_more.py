"""DAGs of the end-to-end tests of logs, big results, resumable retries and abandoned jobs."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

try:  # Airflow 3
    from airflow.sdk import DAG, XComArg, task
except ImportError:  # Airflow 2.11
    from airflow import DAG
    from airflow.decorators import task
    from airflow.models.xcom_arg import XComArg

from quelea_airflow._compat import AirflowException
from quelea_airflow.operators.quelea import (
    QueleaCallAsyncOperator,
    QueleaMapOperator,
    QueleaMapReduceOperator,
)
from quelea_airflow.sensors.quelea import QueleaJobSensor

# Where the flaky map counts its calls (beside the test's storage).
COUNTS = os.environ.get("AIRFLOW_PROVIDER_TEST_STORAGE", "/tmp/quelea-airflow-storage") + "-counts"
START = datetime(2026, 1, 1)


def chatty(x):
    print(f"hello from element {x}")
    return x + 1


def kilobyte(x):
    return f"{x:08d}" + "x" * 1016


def length(s):
    return len(s)


def flaky(x, counts):
    """Counts each call in `counts`; element 5 fails on its first call only."""
    import os
    import uuid

    os.makedirs(counts, exist_ok=True)
    with open(os.path.join(counts, f"{x}-{uuid.uuid4().hex}"), "w"):
        pass
    marker = os.path.join(counts, "failed-once")
    if x == 5 and not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("element 5 fails on its first try")
    return x * 10


def counted_sum(results, counts):
    """A reducer that counts its calls in `counts`."""
    import os
    import uuid

    os.makedirs(counts, exist_ok=True)
    open(os.path.join(counts, f"reduce-{uuid.uuid4().hex}"), "w").close()
    return sum(results)


def counted_triple(x, counts):
    import os
    import uuid

    os.makedirs(counts, exist_ok=True)
    open(os.path.join(counts, f"{x}-{uuid.uuid4().hex}"), "w").close()
    return 3 * x


class LosesItsFirstResume(QueleaCallAsyncOperator):
    """Its first try dies as it resumes from the trigger, before it reads the job (as a
    try whose worker was lost while the task was deferred does): the job, finished, is
    left in storage for the next try. (The failure is injected; the rest is the real
    operator.)"""

    def execute_complete(self, context, event=None, job=None):
        if context["ti"].try_number == 1:
            raise AirflowException("the first try is lost as it resumes (injected)")
        return super().execute_complete(context, event=event, job=job)


def sleepy(x):
    import time

    time.sleep(120)
    return x


def unlucky(x):
    if x == 3:
        raise ValueError(f"unlucky number {x} seen by the sensor")
    return x


def prints(dag_id: str, deferrable: bool) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        QueleaMapOperator(
            task_id="chatty",
            map_function=chatty,
            map_iterdata=list(range(5)),
            deferrable=deferrable,
            defer_after=0,
            poll_interval=0.5,
        )
    return dag


def big_results(dag_id: str, deferrable: bool) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        big = QueleaMapOperator(
            task_id="big",
            map_function=kilobyte,
            map_iterdata=list(range(10_000)),
            deferrable=deferrable,
            poll_interval=0.5,
        )
        lengths = QueleaMapOperator(
            task_id="lengths", map_function=length, map_iterdata=big.output, poll_interval=0.5
        )

        @task
        def check(ref, lengths):
            import quelea_airflow

            values = quelea_airflow.results(ref)
            assert len(values) == 10_000 and values[7] == kilobyte(7), len(values)
            assert lengths == [1024] * 10_000, lengths[:3]
            assert quelea_airflow.clean_results(ref)
            return len(values)

        check(big.output, lengths.output)
    return dag


def retried(dag_id: str, deferrable: bool) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        QueleaMapOperator(
            task_id="flaky",
            map_function=flaky,
            map_iterdata=[(x, f"{COUNTS}/{dag_id}") for x in range(8)],
            deferrable=deferrable,
            defer_after=0,
            poll_interval=0.5,
            retries=1,
            retry_delay=timedelta(seconds=0),
        )
    return dag


def retried_map_reduce(dag_id: str, deferrable: bool) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        QueleaMapReduceOperator(
            task_id="flaky",
            map_function=flaky,
            map_iterdata=[(x, f"{COUNTS}/{dag_id}") for x in range(8)],
            reduce_function=counted_sum,
            extra_args_reduce=(f"{COUNTS}/{dag_id}",),
            deferrable=deferrable,
            defer_after=0,
            poll_interval=0.5,
            retries=1,
            retry_delay=timedelta(seconds=0),
        )
    return dag


def resumed_call(dag_id: str) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        LosesItsFirstResume(
            task_id="call",
            func=counted_triple,
            data=(7, f"{COUNTS}/{dag_id}"),
            deferrable=True,
            defer_after=0,
            poll_interval=0.5,
            retries=1,
            retry_delay=timedelta(seconds=0),
        )
    return dag


def _wait_running(handle: str, config: dict, deadline: float) -> None:
    """Until calls of the job are seen running (their statuses are in storage; the others
    wait for a free runner and write nothing before these end)."""
    import time

    import quelea

    futures = quelea.attach(handle, config=config)
    while not any(f.running for f in futures):
        assert time.monotonic() < deadline, "the calls did not start"
        time.sleep(0.1)


def abandoned(dag_id: str, deferrable_sensor: bool) -> DAG:
    """A submit-only job whose host process is killed: the sensor sees it abandoned."""
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        submit = QueleaMapOperator(
            task_id="submit", map_function=sleepy, map_iterdata=list(range(4)), wait_for_completion=False
        )

        @task
        def kill_host(job):
            import os
            import signal
            import time

            import quelea
            from quelea_airflow.hooks.quelea import QueleaHook

            config = QueleaHook().get_config()
            deadline = time.monotonic() + 30
            # The host rewrites the lease once it has taken the job, and its first calls
            # are running (their statuses written: no write is cut short by the kill).
            while not (lease := quelea.host_lease(job["handles"][0], config=config))["taken"]:
                assert time.monotonic() < deadline, "the host did not take the job"
                time.sleep(0.1)
            assert not lease["gone"], lease
            _wait_running(job["handles"][0], config, deadline)
            os.kill(lease["pid"], signal.SIGKILL)
            return lease["pid"]

        killed = kill_host(XComArg(submit, key="quelea_job"))
        (
            submit
            >> killed
            >> QueleaJobSensor(
                task_id="wait",
                job=XComArg(submit, key="quelea_job"),
                deferrable=deferrable_sensor,
                clean_when_done=True,
                poke_interval=2,
                timeout=100,
            )
        )
    return dag


def abandoned_early(dag_id: str, deferrable_sensor: bool) -> DAG:
    """A submit-only job whose host dies before it takes the job (the test makes every
    detached-job host kill itself at start-up): the sensor sees it abandoned."""
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        submit = QueleaMapOperator(
            task_id="submit", map_function=sleepy, map_iterdata=list(range(4)), wait_for_completion=False
        )
        submit >> QueleaJobSensor(
            task_id="wait",
            job=XComArg(submit, key="quelea_job"),
            deferrable=deferrable_sensor,
            clean_when_done=True,
            poke_interval=2,
            timeout=100,
        )
    return dag


def http_abandoned(dag_id: str) -> DAG:
    """A submit-only http job on two worker servers, one of which is killed (the test's
    own, by PID): the sensor sees the job abandoned, from the dead server's lease."""
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        submit = QueleaMapOperator(
            task_id="submit",
            map_function=sleepy,
            map_iterdata=list(range(4)),
            chunksize=1,
            quelea_conn_id="quelea_http_e2e",
            wait_for_completion=False,
        )

        @task
        def kill_a_server(job):
            import os
            import signal
            import time

            import quelea
            from quelea_airflow.hooks.quelea import QueleaHook

            config = QueleaHook("quelea_http_e2e").get_config()
            _wait_running(job["handles"][0], config, time.monotonic() + 30)
            mine = {int(p) for p in os.environ["AIRFLOW_PROVIDER_TEST_SERVER_PIDS"].split(",")}
            # Each server wrote its lease before it answered that it took its calls.
            pids = sorted(lease["pid"] for lease in quelea.job_leases(job["handles"][0], config=config))
            assert set(pids) == mine, (pids, mine)
            os.killpg(pids[0], signal.SIGKILL)
            return pids[0]

        killed = kill_a_server(XComArg(submit, key="quelea_job"))
        (
            submit
            >> killed
            >> QueleaJobSensor(
                task_id="wait",
                job=XComArg(submit, key="quelea_job"),
                quelea_conn_id="quelea_http_e2e",
                clean_when_done=True,
                poke_interval=2,
                timeout=100,
            )
        )
    return dag


def sensor_fails(dag_id: str) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START, catchup=False) as dag:
        submit = QueleaMapOperator(
            task_id="submit", map_function=unlucky, map_iterdata=list(range(8)), wait_for_completion=False
        )
        submit >> QueleaJobSensor(
            task_id="wait",
            job=XComArg(submit, key="quelea_job"),
            clean_when_done=True,
            poke_interval=0.5,
            timeout=100,
        )
    return dag


e2e_prints_sync = prints("quelea_e2e_prints_sync", deferrable=False)
e2e_prints_deferrable = prints("quelea_e2e_prints_deferrable", deferrable=True)
e2e_big_results = big_results("quelea_e2e_big_results", deferrable=False)
e2e_big_results_deferrable = big_results("quelea_e2e_big_results_deferrable", deferrable=True)
e2e_retry_sync = retried("quelea_e2e_retry_sync", deferrable=False)
e2e_retry_deferrable = retried("quelea_e2e_retry_deferrable", deferrable=True)
e2e_retry_map_reduce_sync = retried_map_reduce("quelea_e2e_retry_map_reduce_sync", deferrable=False)
e2e_retry_map_reduce_deferrable = retried_map_reduce(
    "quelea_e2e_retry_map_reduce_deferrable", deferrable=True
)
e2e_resumed_call = resumed_call("quelea_e2e_resumed_call")
e2e_abandoned = abandoned("quelea_e2e_abandoned", deferrable_sensor=False)
e2e_abandoned_deferrable = abandoned("quelea_e2e_abandoned_deferrable", deferrable_sensor=True)
e2e_abandoned_early = abandoned_early("quelea_e2e_abandoned_early", deferrable_sensor=False)
e2e_abandoned_early_deferrable = abandoned_early(
    "quelea_e2e_abandoned_early_deferrable", deferrable_sensor=True
)
e2e_http_abandoned = http_abandoned("quelea_e2e_http_abandoned")
e2e_sensor_fails = sensor_fails("quelea_e2e_sensor_fails")
