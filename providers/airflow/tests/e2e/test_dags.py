"""End to end: real DAGs under ``dag.test()`` in Airflow (3.3 or 2.11) with a SQLite metadata DB."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from e2e_helpers import xcom_value

N = 200


def _xcom(dag_run, task_id: str):
    return xcom_value(dag_run, task_id)


def _states(dag_run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in dag_run.get_task_instances()}


def _objects(root: str) -> list[str]:
    return [str(p) for p in Path(root).rglob("*") if p.is_file()]


@pytest.mark.parametrize("dag_id", ["quelea_e2e_sync", "quelea_e2e_deferrable"])
def test_pipeline(dagbag, dag_id, storage_root):
    dag = dagbag.get_dag(dag_id)
    # Airflow imports DAG files under a mangled name; the map function lives there.
    assert dag.get_task("squares").map_function.__module__.startswith("unusual_prefix_")
    started = time.monotonic()
    run = dag.test()
    elapsed = time.monotonic() - started
    assert _states(run) == {t: "success" for t in ("numbers", "squares", "total", "one", "check")}, _states(
        run
    )
    assert run.state == "success"
    assert _xcom(run, "squares") == [x * x for x in range(N)]
    assert _xcom(run, "total") == sum(x * x for x in range(N))
    assert _xcom(run, "one") == 25
    assert _xcom(run, "check") == {"squares": N, "total": sum(x * x for x in range(N)), "one": 25}
    assert elapsed < 120
    # Every job's objects were deleted after its results were read.
    assert _objects(storage_root) == []


@pytest.mark.parametrize("dag_id", ["quelea_e2e_fail_sync", "quelea_e2e_fail_deferrable"])
def test_failing_map_fails_the_task_with_the_remote_traceback(dagbag, dag_id, capfd, caplog, storage_root):
    dag = dagbag.get_dag(dag_id)
    run = dag.test()
    assert run.state == "failed"
    assert _states(run) == {"fails": "failed"}
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    assert "ValueError" in text and "unlucky number 13" in text, text[-3000:]
    assert "Remote traceback" in text, text[-3000:]
    # The remote traceback names the DAG file and the line that raised.
    dag_file = os.path.join(os.path.dirname(__file__), "dags", "quelea_e2e.py")
    assert dag_file in text, text[-3000:]
    assert 'raise ValueError(f"unlucky number {x}")' in text
    if dag_id.endswith("deferrable"):
        assert _objects(storage_root) == []


@pytest.mark.parametrize("dag_id", ["quelea_e2e_decorator_sync", "quelea_e2e_decorator_deferrable"])
def test_task_quelea_map_decorator(dagbag, dag_id, storage_root):
    dag = dagbag.get_dag(dag_id)
    cube = dag.get_task("cube")
    assert type(cube).__name__ == "QueleaMapDecoratedOperator"
    assert cube.map_function.__name__ == "cube"
    assert cube.deferrable is dag_id.endswith("deferrable")
    assert {t.task_id for t in dag.tasks} == {"numbers", "cube", "cube__1", "hypot2_of", "check"}
    # The XComArg argument made numbers an upstream of cube.
    assert cube.upstream_task_ids == {"numbers"}
    run = dag.test()
    assert _states(run) == {t: "success" for t in ("numbers", "cube", "cube__1", "hypot2_of", "check")}, (
        _states(run)
    )
    assert _xcom(run, "cube") == [x**3 for x in range(N)]
    assert _xcom(run, "cube__1") == [8, 27]
    assert _xcom(run, "hypot2_of") == [25, 169]
    assert _xcom(run, "check") == N
    assert _objects(storage_root) == []


def test_deferrable_maps_of_5000_elements(dagbag, storage_root, capfd, caplog):
    """Through the trigger (dag.test() runs it in-process), with and without chunksize:
    the progress counts elements, so a batched map completes."""
    dag = dagbag.get_dag("quelea_e2e_big_deferrable")
    run = dag.test()
    assert _states(run) == {"big_auto": "success", "big_chunked": "success"}, _states(run)
    for task_id in ("big_auto", "big_chunked"):
        assert _xcom(run, task_id) == [2 * x for x in range(5000)]
    out, err = capfd.readouterr()
    text = out + err + caplog.text
    # Each task deferred once (Airflow 2.11 logs to both the stream and caplog).
    assert 2 in {part.count("Deferring to QueleaJobTrigger") for part in (out + err, caplog.text)}, text[
        -3000:
    ]
    assert re.search(r"job [0-9a-f]+-\d+: 5000/5000 \(0 failed\)", text), text[-3000:]
    assert _objects(storage_root) == []


@pytest.mark.parametrize("dag_id", ["quelea_e2e_submit_only", "quelea_e2e_submit_only_deferrable"])
def test_sensor_downstream_of_a_submit_only_operator(dagbag, dag_id, storage_root):
    dag = dagbag.get_dag(dag_id)
    run = dag.test()
    assert _states(run) == {"submit": "success", "wait": "success"}, _states(run)
    job = xcom_value(run, "submit", key="quelea_job")
    assert set(job) == {"kind", "handles", "executor_id"}
    # The sensor cleaned the job once it was done.
    assert _objects(storage_root) == []
