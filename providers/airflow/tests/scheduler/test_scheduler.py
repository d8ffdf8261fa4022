"""The scheduler DAGs (dags/quelea_sched.py) against a real Airflow.

``test_a_real_scheduler_and_triggerer_run_every_dag`` (Airflow 3.x; scripts/test.sh runs it): one set of
Airflow processes -- api-server, scheduler (LocalExecutor), triggerer, dag-processor --
on 127.0.0.1 and SQLite runs every DAG, triggered at once; each process is stopped by
its PID (its own process group) at the end. ``test_the_scheduler_dags_under_dag_test``
(Airflow 2.11) runs the same DAGs under ``dag.test()``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sched_helpers import DAGS, check_call_output, free_port, objects, stop, wait_tcp

DAG_IDS = [
    "quelea_sched_maps_local",
    "quelea_sched_maps_http",
    "quelea_sched_deferrals",
    "quelea_sched_sensor",
    "quelea_sched_paths",
]
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


@pytest.fixture(scope="session")
def airflow_services(connections, tmp_path_factory):
    """api-server, scheduler, triggerer and dag-processor, started by PID, stopped by PID."""
    logs = tmp_path_factory.mktemp("airflow-logs")
    port = free_port()
    env = {
        **os.environ,
        **connections,
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
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


def test_a_real_scheduler_and_triggerer_run_every_dag(airflow_services, storage_root):
    env, logs, procs = airflow_services["env"], airflow_services["logs"], airflow_services["procs"]
    deadline = time.monotonic() + START_S
    while _parsed(DAG_IDS) != set(DAG_IDS):
        assert time.monotonic() < deadline, f"DAGs not parsed in {START_S:.0f} s: {_parsed(DAG_IDS)}"
        for name, proc in procs.items():
            assert proc.poll() is None, f"airflow {name} exited: see {logs / (name + '.log')}"
        time.sleep(1)
    started = time.monotonic()
    for dag_id in DAG_IDS:
        _trigger(dag_id, env)
    deadline = time.monotonic() + RUN_S
    while True:
        states = {d: _run_states(d) for d in DAG_IDS}
        if all(s and s[0] in ("success", "failed") for s in states.values()):
            break
        assert time.monotonic() < deadline, f"runs not finished in {RUN_S:.0f} s: {states}"
        for name, proc in procs.items():
            assert proc.poll() is None, f"airflow {name} exited: see {logs / (name + '.log')}"
        time.sleep(2)
    elapsed = time.monotonic() - started
    tis = {d: _ti_states(d) for d in DAG_IDS}
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
