from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

DAGS = Path(__file__).parent / "dags"


@pytest.fixture(scope="session")
def storage_root(tmp_path_factory) -> str:
    return os.environ.get("AIRFLOW_PROVIDER_TEST_STORAGE") or str(tmp_path_factory.mktemp("storage"))


@pytest.fixture(scope="session", autouse=True)
def quelea_connection(storage_root):
    if "AIRFLOW_HOME" not in os.environ:
        raise RuntimeError("run the end-to-end tests through providers/airflow/scripts/test.sh")
    conn = {
        "conn_type": "quelea",
        "extra": {"storage": "localdisk", "localdisk": {"root": storage_root}, "local": {"workers": 2}},
    }
    os.environ["AIRFLOW_CONN_QUELEA_DEFAULT"] = json.dumps(conn)
    yield
    os.environ.pop("AIRFLOW_CONN_QUELEA_DEFAULT", None)


@pytest.fixture(scope="session")
def dagbag():
    try:  # Airflow 3
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # Airflow 2.11
        from airflow.models.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS))
    assert not bag.import_errors, bag.import_errors
    return bag
