from __future__ import annotations

import json

import pytest


@pytest.fixture
def storage_dir(tmp_path) -> str:
    path = tmp_path / "storage"
    path.mkdir()
    return str(path)


@pytest.fixture
def local_config(storage_dir) -> dict:
    return {"storage": "localdisk", "localdisk": {"root": storage_dir}, "local": {"workers": 2}}


@pytest.fixture
def quelea_conn(monkeypatch, local_config):
    """``quelea_default`` as an environment-variable connection (resolved without the DB)."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_QUELEA_DEFAULT", json.dumps({"conn_type": "quelea", "extra": local_config})
    )
    return local_config
