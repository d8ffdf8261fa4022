"""End to end under ``dag.test()``: call output and progress in the task log, result
references above the XCom threshold, resumable retries, abandoned jobs, the extra link."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from e2e_helpers import xcom_value


def _states(dag_run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def _objects(root: str) -> list[str]:
    return [str(p) for p in Path(root).rglob("*") if p.is_file()]


def _log(capfd, caplog) -> str:
    out, err = capfd.readouterr()
    return out + err + caplog.text


@pytest.mark.parametrize("dag_id", ["quelea_e2e_prints_sync", "quelea_e2e_prints_deferrable"])
def test_call_output_and_progress_reach_the_task_log(
    dagbag, dag_id, capfd, caplog, storage_root, monkeypatch
):
    monkeypatch.setenv("QUELEA_DASHBOARD_URL", "http://127.0.0.1:8265/")
    caplog.set_level("INFO")
    run = dagbag.get_dag(dag_id).test()
    assert _states(run) == {"chatty": "success"}
    assert xcom_value(run, "chatty") == [1, 2, 3, 4, 5]
    text = _log(capfd, caplog)
    for x in range(5):
        assert re.search(
            rf"job [0-9a-f]+-\d+(-\w+)? call {x:05d} printed:\n(.*\n)?hello from element {x}", text
        ), text[-3000:]
    assert re.search(r"job [0-9a-f]+-\d+: 5/5 \(0 failed\)", text), text[-3000:]
    # The extra link's page: the dashboard's /job/<executor>-<job>.
    page = xcom_value(run, "chatty", key="quelea_dashboard_url")
    assert re.fullmatch(r"http://127\.0\.0\.1:8265/job/[0-9a-f]+-\d+-\w+", page), page
    assert _objects(storage_root) == []


@pytest.mark.parametrize("dag_id", ["quelea_e2e_big_results", "quelea_e2e_big_results_deferrable"])
def test_big_results_stay_in_storage_and_xcom_gets_a_reference(dagbag, dag_id, storage_root):
    run = dagbag.get_dag(dag_id).test()
    assert _states(run) == {"big": "success", "lengths": "success", "check": "success"}, _states(run)
    ref = xcom_value(run, "big")
    # The XCom row holds the reference only (the results are ~10 MB).
    assert set(ref) == {"quelea_results", "bucket", "count", "bytes"}, ref
    assert len(json.dumps(ref)) < 1024
    assert ref["count"] == 10_000 and ref["bytes"] > 10_000 * 1024
    assert xcom_value(run, "lengths") == [1024] * 10_000
    assert xcom_value(run, "check") == 10_000
    # check deleted the stored results; every job was cleaned.
    assert _objects(storage_root) == []


@pytest.mark.parametrize("dag_id", ["quelea_e2e_retry_sync", "quelea_e2e_retry_deferrable"])
def test_a_retry_runs_only_the_failed_element(dagbag, dag_id, storage_root):
    counts = Path(os.environ.get("AIRFLOW_PROVIDER_TEST_STORAGE", "/tmp/quelea-airflow-storage") + "-counts")
    run = dagbag.get_dag(dag_id).test()
    assert _states(run) == {"flaky": "success"}, _states(run)
    assert xcom_value(run, "flaky") == [x * 10 for x in range(8)]
    calls: dict[int, int] = {}
    for p in (counts / dag_id).iterdir():
        if p.name != "failed-once":
            x = int(p.name.split("-")[0])
            calls[x] = calls.get(x, 0) + 1
    # The first try ran all 8 (5 failed); the retry ran element 5 only.
    assert calls == {x: 2 if x == 5 else 1 for x in range(8)}, calls
    assert _objects(storage_root) == []


def _counts(dag_id: str) -> dict[str, int]:
    """How many times each element (and `reduce`) of the DAG's counted functions ran."""
    counts = Path(os.environ.get("AIRFLOW_PROVIDER_TEST_STORAGE", "/tmp/quelea-airflow-storage") + "-counts")
    calls: dict[str, int] = {}
    for p in (counts / dag_id).iterdir():
        if p.name != "failed-once":
            x = p.name.split("-")[0]
            calls[x] = calls.get(x, 0) + 1
    return calls


@pytest.mark.parametrize(
    "dag_id", ["quelea_e2e_retry_map_reduce_sync", "quelea_e2e_retry_map_reduce_deferrable"]
)
def test_a_map_reduce_retry_runs_only_the_failed_element_then_the_reduce(dagbag, dag_id, storage_root):
    run = dagbag.get_dag(dag_id).test()
    assert _states(run) == {"flaky": "success"}, _states(run)
    assert xcom_value(run, "flaky") == sum(x * 10 for x in range(8))
    # The first try ran all 8 map elements (5 failed: no reduce); the retry ran element 5
    # only, then the reduce once, over all 8 results.
    assert _counts(dag_id) == {**{str(x): 2 if x == 5 else 1 for x in range(8)}, "reduce": 1}
    assert _objects(storage_root) == []


def test_a_retry_reuses_the_finished_call_of_a_lost_try(dagbag, storage_root):
    """The first try's call finished while the task was deferred, and the try was lost
    as it resumed: the retry takes the result from that try's job, without running the
    call again."""
    dag_id = "quelea_e2e_resumed_call"
    run = dagbag.get_dag(dag_id).test()
    assert _states(run) == {"call": "success"}, _states(run)
    assert xcom_value(run, "call") == 21
    assert _counts(dag_id) == {"7": 1}
    assert _objects(storage_root) == []


@pytest.mark.parametrize("dag_id", ["quelea_e2e_abandoned", "quelea_e2e_abandoned_deferrable"])
def test_the_sensor_sees_an_abandoned_job(dagbag, dag_id, capfd, caplog, storage_root):
    started = time.monotonic()
    run = dagbag.get_dag(dag_id).test()
    elapsed = time.monotonic() - started
    assert _states(run) == {"submit": "success", "kill_host": "success", "wait": "failed"}, _states(run)
    text = _log(capfd, caplog)
    assert "is abandoned: the process running it" in text, text[-3000:]
    # Detected from the stale lease / dead pid, long before the sensor's timeout (100 s)
    # or the calls' 120 s sleeps.
    assert elapsed < 60, elapsed
    assert _objects(storage_root) == []


# Imported by every Python process started with its directory on PYTHONPATH: a
# detached-job host (QUELEA_RUNNER=host) kills itself at start-up, before it has read
# its input -- a host killed before it took the job.
HOST_DIES_AT_START = """
import os, signal
if os.environ.get("QUELEA_RUNNER") == "host":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("dag_id", ["quelea_e2e_abandoned_early", "quelea_e2e_abandoned_early_deferrable"])
def test_the_sensor_sees_a_job_whose_host_died_before_taking_it(
    dagbag, dag_id, capfd, caplog, storage_root, tmp_path, monkeypatch
):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HOST_DIES_AT_START)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    caplog.set_level("INFO")
    started = time.monotonic()
    run = dagbag.get_dag(dag_id).test()
    elapsed = time.monotonic() - started
    assert _states(run) == {"submit": "success", "wait": "failed"}, _states(run)
    text = _log(capfd, caplog)
    assert "is abandoned: the process running it" in text, text[-3000:]
    assert "it died before it took the job" in text, text[-3000:]
    # Not polled 0/4 until the sensor's timeout (100 s): caught at the first pokes.
    assert re.search(r"job [0-9a-f]+-\d+: 0/4 \(0 failed\)", text), text[-3000:]
    assert elapsed < 60, elapsed
    assert _objects(storage_root) == []


def test_the_sensor_sees_an_http_job_abandoned_by_a_dead_worker_server(
    dagbag, http_connection, capfd, caplog, storage_root
):
    """The http job's calls were all handed to two worker servers at submit; one is
    killed: its lease goes stale (here: its pid is dead), the sensor fails at its next
    poke naming it, cancels the rest (the live server stops its calls) and cleans."""
    caplog.set_level("INFO")
    started = time.monotonic()
    run = dagbag.get_dag("quelea_e2e_http_abandoned").test()
    elapsed = time.monotonic() - started
    assert _states(run) == {"submit": "success", "kill_a_server": "success", "wait": "failed"}, _states(run)
    killed = xcom_value(run, "kill_a_server")
    assert http_connection[0].pid == killed or http_connection[1].pid == killed
    text = _log(capfd, caplog)
    assert f"the worker server running some of its calls (pid {killed} on" in text, text[-3000:]
    # Long before the sensor's timeout (100 s) or the calls' 120 s sleeps.
    assert elapsed < 60, elapsed
    assert _objects(storage_root) == []


def test_a_failed_call_seen_by_the_sensor_shows_the_remote_traceback(dagbag, capfd, caplog, storage_root):
    run = dagbag.get_dag("quelea_e2e_sensor_fails").test()
    assert _states(run) == {"submit": "success", "wait": "failed"}, _states(run)
    text = _log(capfd, caplog)
    assert "Remote traceback" in text and "unlucky number 3 seen by the sensor" in text, text[-3000:]
    assert _objects(storage_root) == []
