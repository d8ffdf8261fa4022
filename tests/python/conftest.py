"""Fixtures: executors on the real local backend (real runner processes),
with storage in a temporary directory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import quelea


@pytest.fixture(scope="session", autouse=True)
def _own_home(tmp_path_factory):
    """A HOME of the suite's own, and no config file of the user's: the tests do
    not depend on who runs them, and nothing they do lands in ~/.quelea."""
    saved = {k: os.environ.get(k) for k in ("HOME", "QUELEA_CONFIG_FILE", "QUELEA_STORAGE_DIR")}
    home = tmp_path_factory.mktemp("home")
    os.environ["HOME"] = str(home)
    os.environ.pop("QUELEA_CONFIG_FILE", None)
    os.environ.pop("QUELEA_STORAGE_DIR", None)
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


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
    """Starts a Python script as a second client process.

    The script first restores Python's own Ctrl-C handler: a suite started with
    SIGINT ignored (``nohup``, ``cmd &`` in a non-interactive shell, some CI
    runners) passes that on to its children, which would then ignore the
    SIGINT a test sends them."""
    script = tmp_path / "script.py"
    preamble = "import signal as _signal\n_signal.signal(_signal.SIGINT, _signal.default_int_handler)\n"
    script.write_text(preamble + textwrap.dedent(source))
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


@contextlib.contextmanager
def worker_servers(count: int, workers: int, env: dict):
    """``count`` real ``quelea worker serve`` processes (the console script
    next to this interpreter, on 127.0.0.1, a free port each, Python runners
    of this interpreter), each leading its own session: ``(procs, urls)``.
    They are stopped by PID, with their runners (the whole group)."""
    script = Path(sys.executable).with_name("quelea")
    assert script.exists(), f"{script} is missing: install the package (maturin develop)"
    env = dict(env)
    env.pop("PORT", None)
    procs, urls = [], []
    try:
        for _ in range(count):
            proc = subprocess.Popen(
                [
                    str(script),
                    "worker",
                    "serve",
                    "--port",
                    "0",
                    "--workers",
                    str(workers),
                    "--python",
                    sys.executable,
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
            procs.append(proc)
            line = proc.stdout.readline()
            urls.append(next(w for w in line.split() if w.startswith("http://")))
        yield procs, urls
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
