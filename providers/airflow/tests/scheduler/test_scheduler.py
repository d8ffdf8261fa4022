"""The scheduler DAGs (dags/quelea_sched.py) against a real Airflow.

``test_a_real_scheduler_and_triggerer_run_every_dag`` (Airflow 3.x; scripts/test.sh runs it): one set of
Airflow processes -- api-server, scheduler (LocalExecutor), triggerer, dag-processor --
on 127.0.0.1 and SQLite runs every DAG, triggered at once; each process is stopped by
its PID (its own process group) at the end. ``test_the_scheduler_dags_under_dag_test``
(Airflow 2.11) runs the same DAGs under ``dag.test()``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sched_helpers import DAGS, check_call_output, free_port, free_port_pair, objects, stop, wait_tcp

BROKERS = Path(__file__).resolve().parents[4] / "scripts" / "brokers.sh"
BROKERS_START_S = 300.0  # an apt-get install of RabbitMQ included
DAG_IDS = [
    "quelea_sched_maps_local",
    "quelea_sched_maps_http",
    "quelea_sched_deferrals",
    "quelea_sched_sensor",
    "quelea_sched_paths",
]
CELERY_DAG = "quelea_sched_celery"
START_S = 180.0  # for the processes to start and the DAGs to be parsed
RUN_S = 900.0  # for every run to finish
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def _run_states(dag_id: str) -> list[str]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        return [str(r.state) for r in session.query(DagRun).filter(DagRun.dag_id == dag_id)]


def _ti_states(dag_id: str) -> dict[str, int]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    counts: dict[str, int] = {}
    with create_session() as session:
        for (state,) in session.query(TaskInstance.state).filter(TaskInstance.dag_id == dag_id):
            counts[str(state)] = counts.get(str(state), 0) + 1
    return counts


def _parsed(dag_ids: list[str]) -> set[str]:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return {d for (d,) in session.query(DagModel.dag_id).filter(DagModel.dag_id.in_(dag_ids))}


def _trigger(dag_id: str, env: dict) -> None:
    """A manual run, from this process (as `airflow dags trigger` does; no CLI start-up)."""
    try:
        from airflow.api.common.trigger_dag import trigger_dag
        from airflow.utils.types import DagRunTriggeredByType
    except ImportError:  # another layout: the CLI
        subprocess.run(
            [AIRFLOW, "dags", "trigger", dag_id], env=env, check=True, capture_output=True, timeout=120
        )
        return
    assert trigger_dag(dag_id, triggered_by=DagRunTriggeredByType.CLI) is not None, dag_id


@contextlib.contextmanager
def airflow(
    connections: dict, logs: Path, executor: str, extra_env: dict | None = None, workers: bool = False
):
    """api-server, scheduler, triggerer and dag-processor (and with ``workers`` an
    ``airflow celery worker``), on 127.0.0.1, each started by PID in a process group of
    its own and stopped by PID."""
    port = free_port()
    env = {
        **os.environ,
        **connections,
        "AIRFLOW__CORE__EXECUTOR": executor,
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__PARALLELISM": "6",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(32),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(logs / "tasks"),
        **(extra_env or {}),
    }
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    # The real scheduler has the deferral race: the default [quelea] min_deferral_s holds.
    env.pop("AIRFLOW__QUELEA__MIN_DEFERRAL_S", None)
    commands = {
        "api-server": ["api-server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        # No log servers: they would listen on every interface, and the task logs are
        # files on this machine anyway.
        "scheduler": ["scheduler", "--skip-serve-logs"],
        "triggerer": ["triggerer", "--skip-serve-logs"],
        "dag-processor": ["dag-processor"],
    }
    if workers:
        commands["celery-worker"] = ["celery", "worker", "--concurrency", "4", "--skip-serve-logs"]
    procs: dict[str, subprocess.Popen] = {}
    try:
        for name, args in commands.items():
            log = open(logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            procs[name] = subprocess.Popen(
                [AIRFLOW, *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        wait_tcp(port, procs["api-server"], f"airflow api-server ({logs / 'api-server.log'})", START_S)
        yield {"env": env, "logs": logs, "procs": procs}
    finally:
        for name, proc in procs.items():
            stop(proc, f"airflow {name}")


def run_dags(services: dict, dag_ids: list[str]) -> tuple[dict, dict, float]:
    """Waits for the DAGs to be parsed, triggers a run of each, and waits for them all to
    end; ``(run states, task instance states, seconds)``."""
    env, logs, procs = services["env"], services["logs"], services["procs"]
    deadline = time.monotonic() + START_S
    while _parsed(dag_ids) != set(dag_ids):
        assert time.monotonic() < deadline, f"DAGs not parsed in {START_S:.0f} s: {_parsed(dag_ids)}"
        for name, proc in procs.items():
            assert proc.poll() is None, f"airflow {name} exited: see {logs / (name + '.log')}"
        time.sleep(1)
    started = time.monotonic()
    for dag_id in dag_ids:
        _trigger(dag_id, env)
    deadline = time.monotonic() + RUN_S
    while True:
        states = {d: _run_states(d) for d in dag_ids}
        if all(s and s[0] in ("success", "failed") for s in states.values()):
            break
        assert time.monotonic() < deadline, f"runs not finished in {RUN_S:.0f} s: {states}"
        for name, proc in procs.items():
            assert proc.poll() is None, f"airflow {name} exited: see {logs / (name + '.log')}"
        time.sleep(2)
    return states, {d: _ti_states(d) for d in dag_ids}, time.monotonic() - started


@pytest.fixture
def airflow_services(connections, tmp_path_factory):
    with airflow(connections, tmp_path_factory.mktemp("airflow-logs"), "LocalExecutor") as services:
        yield services


@pytest.fixture
def rabbitmq(tmp_path_factory):
    """A private RabbitMQ node on 127.0.0.1 (scripts/brokers.sh: installed if missing,
    started and stopped by PID; it starts a NATS server beside it, unused here), on
    ports of its own so that it does not meet the push tests' brokers."""
    run = tmp_path_factory.mktemp("brokers")
    env = {
        **os.environ,
        # RabbitMQ's distribution port is the AMQP port + 20000.
        "QTEST_AMQP_PORT": str(free_port_pair(20000)),
        "QTEST_NATS_PORT": str(free_port()),
        "QTEST_EPMD_PORT": str(free_port()),
    }
    try:
        out = subprocess.run(
            ["bash", str(BROKERS), "start", str(run)],
            env=env,
            capture_output=True,
            text=True,
            timeout=BROKERS_START_S,
        )
        assert out.returncode == 0, f"scripts/brokers.sh start failed:\n{out.stderr[-3000:]}"
        urls = dict(
            line.removeprefix("export ").split("=", 1)
            for line in out.stdout.splitlines()
            if line.startswith("export ")
        )
        yield urls["QTEST_RABBITMQ_URL"]
    finally:
        subprocess.run(["bash", str(BROKERS), "stop", str(run)], env=env, timeout=BROKERS_START_S)


def test_a_real_scheduler_and_triggerer_run_every_dag(airflow_services, storage_root):
    states, tis, elapsed = run_dags(airflow_services, DAG_IDS)
    logs = airflow_services["logs"]
    print(f"every run finished in {elapsed:.0f} s: {tis}")
    assert states == {d: ["success"] for d in DAG_IDS}, (states, tis)
    # 50 deferrable tasks, zero failures (no "state attribute is queued" race).
    assert tis["quelea_sched_deferrals"] == {"success": 50}, tis
    assert tis["quelea_sched_maps_local"] == {"success": 5}, tis
    assert tis["quelea_sched_maps_http"] == {"success": 5}, tis
    # Tasks deferred through the triggerer (not only dag.test()'s inline trigger).
    task_logs = "".join(p.read_text(errors="replace") for p in (logs / "tasks").rglob("*") if p.is_file())
    assert task_logs.count("Deferring to QueleaJobTrigger") >= 4 + 25, task_logs.count("Deferring")
    assert "5000/5000 (0 failed)" in task_logs
    assert tis["quelea_sched_paths"] == {"success": 5}, tis
    # What the calls printed: once each, at info level, with the call id, in the sync,
    # deferrable and sensor paths.
    check_call_output(logs / "tasks", "quelea_sched_paths", ["sync", "deferred", "wait"], 3)
    assert objects(storage_root) == []


def test_the_celery_executor_runs_the_three_paths(connections, rabbitmq, tmp_path_factory, storage_root):
    """CeleryExecutor (a RabbitMQ broker, one ``airflow celery worker``): a sync map, a
    deferrable map (its job in a detached host on the worker, followed by the triggerer
    through storage) and a submit-only map with a sensor, results checked in the DAG,
    each call's output in the task logs once at info level."""
    logs = tmp_path_factory.mktemp("airflow-celery-logs")
    extra = {
        # The default vhost as `//` (no `%2f`: `%` is interpolation in Airflow's config).
        "AIRFLOW__CELERY__BROKER_URL": rabbitmq.replace("/%2f", "//"),
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"],
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
    }
    with airflow(connections, logs, "CeleryExecutor", extra, workers=True) as services:
        states, tis, elapsed = run_dags(services, [CELERY_DAG])
    print(f"the CeleryExecutor run finished in {elapsed:.0f} s: {tis}")
    assert states == {CELERY_DAG: ["success"]}, (states, tis)
    assert tis[CELERY_DAG] == {"success": 5}, tis
    task_logs = "".join(p.read_text(errors="replace") for p in (logs / "tasks").rglob("*") if p.is_file())
    assert "Deferring to QueleaJobTrigger" in task_logs
    # Every task ran on the Celery worker, the deferred one twice (before and after it deferred).
    worker_log = (logs / "celery-worker.log").read_text(errors="replace")
    ran = [
        line.split("/task_id=", 1)[1].split("/", 1)[0]
        for line in worker_log.splitlines()
        if "Executing workload in Celery" in line and f"dag_id={CELERY_DAG}/" in line
    ]
    assert sorted(ran) == ["check_paths", "deferred", "deferred", "submit", "sync", "wait"], ran
    check_call_output(logs / "tasks", CELERY_DAG, ["sync", "deferred", "wait"], 3)
    assert objects(storage_root) == []


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_the_scheduler_dags_under_dag_test(connections, dag_id, storage_root):
    try:  # Airflow 3
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 2.11
        from airflow.models.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS), include_examples=False)
    assert not bag.import_errors, bag.import_errors
    run = bag.get_dag(dag_id).test()
    states = {(ti.task_id, ti.map_index): ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert set(states.values()) == {"success"}, states
    assert objects(storage_root) == []
