from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
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


@pytest.fixture
def http_connection(storage_root, monkeypatch):
    """Two `quelea worker serve` on 127.0.0.1 (each in a process group of its own, stopped
    by PID) sharing the test's storage, and the `quelea_http_e2e` connection to them;
    AIRFLOW_PROVIDER_TEST_SERVER_PIDS names the servers (a DAG may kill only those)."""
    secret = secrets.token_hex(16)
    env = {**os.environ, "QUELEA_HTTP_SECRET": secret, "QUELEA_STORAGE": "localdisk"}
    env["QUELEA_STORAGE_DIR"] = storage_root
    procs, urls = [], []
    try:
        for _ in range(2):
            cmd = [sys.executable, "-m", "quelea._cli", "worker", "serve", "--host", "127.0.0.1"]
            cmd += ["--port", "0", "--workers", "1", "--python", sys.executable]
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
            procs.append(proc)
            line = proc.stdout.readline()
            urls.append(next(w for w in line.split() if w.startswith("http://")))
        extra = {
            "storage": "localdisk",
            "localdisk": {"root": storage_root},
            "backend": "http",
            "http": {"urls": urls, "secret": secret},
        }
        conn = json.dumps({"conn_type": "quelea", "extra": extra})
        monkeypatch.setenv("AIRFLOW_CONN_QUELEA_HTTP_E2E", conn)
        monkeypatch.setenv("AIRFLOW_PROVIDER_TEST_SERVER_PIDS", ",".join(str(p.pid) for p in procs))
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
