"""The example DAG in examples/airflow (linked into the test DAG folder) runs."""

from __future__ import annotations

from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[4] / "examples" / "airflow" / "quelea_example_dag.py"


def test_example_dag_runs(dagbag):
    dag = dagbag.get_dag("quelea_example")
    assert Path(dag.fileloc).resolve() == EXAMPLE
    run = dag.test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {t: "success" for t in ("read_lines", "line_lengths", "top_words", "summary")}, states
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(XComModel).filter_by(run_id=run.run_id, task_id="summary").one()
    summary = XComModel.deserialize_value(row)
    assert summary.startswith("300 lines, ")
    assert "'the': 300" in summary
