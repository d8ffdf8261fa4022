"""Helpers of the end-to-end tests."""

from __future__ import annotations


def xcom_value(dag_run, task_id: str, key: str = "return_value"):
    """An XCom of a finished run, read from the metadata DB (3.x: ``XComModel``, 2.11: ``XCom``)."""
    from airflow.utils.session import create_session

    try:  # Airflow 3
        from airflow.models.xcom import XComModel as XCom
    except ImportError:  # Airflow 2.11: the ORM row deserializes its value when loaded
        from airflow.models.xcom import XCom

        def deserialize(row):
            return row.value
    else:
        deserialize = XCom.deserialize_value

    with create_session() as session:
        row = (
            session.query(XCom)
            .filter_by(dag_id=dag_run.dag_id, run_id=dag_run.run_id, task_id=task_id, key=key)
            .one()
        )
        return deserialize(row)
