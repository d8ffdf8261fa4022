"""A one-task DAG whose task instance the trigger-cancellation unit tests put in the
metadata DB (run once under dag.test(), then set to the state the test needs)."""

from __future__ import annotations

from datetime import datetime

try:  # Airflow 3
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG
except ImportError:  # Airflow 2.11
    from airflow import DAG
    from airflow.operators.empty import EmptyOperator

with DAG("quelea_trigger_cancel", schedule=None, start_date=datetime(2026, 1, 1), catchup=False) as dag:
    EmptyOperator(task_id="wait")
