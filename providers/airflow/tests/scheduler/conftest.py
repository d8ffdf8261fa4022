"""Fixtures of the scheduler tests: two `quelea worker serve` servers and the quelea
connections (local and http backends), shared by the real-scheduler run and dag.test()."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest

from sched_helpers import SERVER_START_S, free_port, stop, wait_tcp


@pytest.fixture(scope="session")
def storage_root(tmp_path_factory) -> str:
    return os.environ.get("AIRFLOW_PROVIDER_TEST_STORAGE") or str(tmp_path_factory.mktemp("storage"))


@pytest.fixture(scope="session")
def http_secret() -> str:
    return secrets.token_hex(32)


@pytest.fixture(scope="session")
def worker_servers(storage_root, http_secret, tmp_path_factory):
    """Two `quelea worker serve` on 127.0.0.1 sharing the test's localdisk storage."""
    logs = tmp_path_factory.mktemp("servers")
    env = {
        **os.environ,
        "QUELEA_STORAGE": "localdisk",
        "QUELEA_STORAGE_DIR": storage_root,
        "QUELEA_HTTP_SECRET": http_secret,
    }
    procs, urls = [], []
    try:
        for n in range(2):
            port = free_port()
            log = open(logs / f"server-{n}.log", "w")  # noqa: SIM115 - closed with the process
            cmd = [sys.executable, "-m", "quelea._cli", "worker", "serve", "--host", "127.0.0.1"]
            cmd += ["--port", str(port), "--workers", "1", "--python", sys.executable]
            proc = subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            procs.append(proc)
            wait_tcp(port, proc, f"quelea worker serve ({logs / f'server-{n}.log'})", SERVER_START_S)
            urls.append(f"http://127.0.0.1:{port}")
        yield urls
    finally:
        for proc in procs:
            stop(proc, "quelea worker serve")


@pytest.fixture(scope="session")
def connections(storage_root, worker_servers, http_secret) -> dict[str, str]:
    """AIRFLOW_CONN_* values of `quelea_default` (local) and `quelea_http`."""
    local = {"storage": "localdisk", "localdisk": {"root": storage_root}, "local": {"workers": 2}}
    http = {**local, "backend": "http", "http": {"urls": worker_servers, "secret": http_secret}}
    conns = {
        "AIRFLOW_CONN_QUELEA_DEFAULT": json.dumps({"conn_type": "quelea", "extra": local}),
        "AIRFLOW_CONN_QUELEA_HTTP": json.dumps({"conn_type": "quelea", "extra": http}),
    }
    os.environ.update(conns)
    return conns
