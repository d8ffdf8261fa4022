"""Fixtures: executors on the real local backend (real runner processes),
with storage in a temporary directory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import quelea


@pytest.fixture(scope="session")
def storage_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quelea-storage")


@pytest.fixture(scope="session")
def config(storage_root) -> dict:
    """Local-directory job storage; with QTEST_STORAGE=s3, the S3 server that
    scripts/s3-server.sh started (its QUELEA_S3_* variables are in the env)."""
    if os.environ.get("QTEST_STORAGE") == "s3":
        assert os.environ.get("QUELEA_S3_ENDPOINT"), "start the S3 server with scripts/s3-server.sh first"
        return {"storage": "s3", "bucket": "quelea-test", "local": {"workers": 2}}
    return {"localdisk": {"root": str(storage_root)}, "local": {"workers": 2}}


@pytest.fixture(scope="module")
def executor(config):
    with quelea.FunctionExecutor(config=config) as fexec:
        yield fexec


@pytest.fixture
def fresh_executor(config):
    with quelea.FunctionExecutor(config=config) as fexec:
        yield fexec


def run_script(tmp_path: Path, source: str, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
    """Starts a Python script as a second client process."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    full_env = {**os.environ, **(env or {})}
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        **kw,
    )


def pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
