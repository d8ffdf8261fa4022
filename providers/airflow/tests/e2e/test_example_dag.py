"""The example DAG in examples/airflow (linked into the test DAG folder) runs."""

from __future__ import annotations

from pathlib import Path

from e2e_helpers import xcom_value

EXAMPLE = Path(__file__).resolve().parents[4] / "examples" / "airflow" / "quelea_example_dag.py"


def test_example_dag_runs(dagbag):
    dag = dagbag.get_dag("quelea_example")
    assert Path(dag.fileloc).resolve() == EXAMPLE
    run = dag.test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {t: "success" for t in ("read_lines", "line_lengths", "top_words", "summary")}, states
    summary = xcom_value(run, "summary")
    assert summary.startswith("300 lines, ")
    assert "'the': 300" in summary
