"""Python functions on the `http` backend: two real `quelea worker serve`
processes (the console script, serving Python runners of this interpreter),
signed Invocations, results followed through shared storage (a directory
here; the S3 server with QTEST_STORAGE=s3)."""

from __future__ import annotations

import os
import time

import pytest

import quelea
from conftest import worker_servers
from quelea.exceptions import CallTimeoutError, ConfigError, RemoteTraceback, WorkerCrashedError

SECRET = "python-suite-secret"


@pytest.fixture(scope="module")
def servers(config):
    env = {**os.environ, "QUELEA_HTTP_SECRET": SECRET}
    if config.get("storage") == "s3":
        env.update(QUELEA_STORAGE="s3", QUELEA_BUCKET=config["bucket"])
    else:
        env["QUELEA_STORAGE_DIR"] = config["localdisk"]["root"]
    with worker_servers(2, 2, env) as (_, urls):
        yield urls


@pytest.fixture
def remote(config, servers):
    http = {"urls": servers, "secret": SECRET}
    with quelea.FunctionExecutor(backend="http", config={**config, "http": http}) as fexec:
        yield fexec


def square(x):
    return x * x


def total(results):
    return sum(results)


def fussy(x):
    if x == 2:
        raise ValueError(f"no twos here ({x})")
    return x


def sleepy(x):
    time.sleep(x)
    return x


def die(x):
    if x == 1:
        os._exit(5)
    return x


def with_id(id, x):
    return (id, x)


def test_map_and_map_reduce_run_on_worker_servers(remote, servers):
    before = [_health(url)["calls"] for url in servers]
    futures = remote.map(square, range(50))
    assert remote.get_result(futures) == [x * x for x in range(50)]
    after = [_health(url)["calls"] for url in servers]
    assert sum(after) - sum(before) == 50 and all(a > b for a, b in zip(after, before, strict=True))
    remote.map_reduce(square, range(20), total)
    assert remote.get_result() == sum(x * x for x in range(20))


def test_remote_errors_keep_type_and_traceback(remote):
    futures = remote.map(fussy, range(4))
    with pytest.raises(ValueError, match="no twos here") as err:
        remote.get_result(futures)
    assert isinstance(err.value.__cause__, RemoteTraceback) and "in fussy" in err.value.__cause__.tb
    assert remote.get_result(futures, throw_except=False) == [0, 1, None, 3]


def test_timeouts_and_crashes_fail_only_their_call(remote):
    slow = remote.map(sleepy, [0.01, 20, 0.01], timeout=1)
    assert remote.get_result(slow, throw_except=False) == [0.01, None, 0.01]
    with pytest.raises(CallTimeoutError):
        slow[1].result()
    crashed = remote.map(die, range(3))
    assert remote.get_result(crashed, throw_except=False) == [0, None, 2]
    with pytest.raises(WorkerCrashedError, match="code 5"):
        crashed[1].result()


def test_batches_and_reserved_id_travel_too(remote):
    futures = remote.map(with_id, ["a", "b", "c", "d", "e"], chunksize=2)
    assert remote.get_result(futures) == [(0, "a"), (1, "b"), (2, "c"), (3, "d"), (4, "e")]
    job = futures._job_source()[0]
    assert job.chunksize == 2 and job.total == 5
    # Three runner calls of one batch each, counted per element.
    row = next(r for r in remote.job_summary() if r["job_key"] == futures[0].job_key)
    assert row["calls"] == 5 and row["runner_calls"] == 3


def test_lithops_backend_names_and_bad_settings(config, servers):
    http = {"urls": servers, "secret": SECRET}
    lithops_shaped = {**config, "lithops": {"backend": "knative"}, "http": http}
    with quelea.FunctionExecutor(mode="serverless", config=lithops_shaped) as fexec:
        assert fexec.config["backend"] == "http"
        assert fexec.get_result(fexec.call_async(square, 7)) == 49
    with pytest.raises(ConfigError, match="http.secret"):
        quelea.FunctionExecutor(backend="http", config={**config, "http": {"urls": servers}})
    with pytest.raises(ConfigError, match="backend"):
        quelea.FunctionExecutor(backend="ibm_cf")


def _health(url: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
        return json.load(answer)


def test_cancel_stops_the_calls_on_the_servers(remote, servers):
    futures = remote.map(sleepy, [30] * 6)
    deadline = time.time() + 30
    while sum(f.running for f in futures) < 2:
        assert time.time() < deadline, "the servers never started the calls"
        time.sleep(0.05)
    started = time.time()
    remote.cancel(futures)
    # The servers see the job's cancel marker and stop its calls, queued
    # and running, well before their 30 s are up.
    while any(_health(url)["queued_calls"] or _health(url)["running_calls"] for url in servers):
        assert time.time() - started < 15, [_health(url) for url in servers]
        time.sleep(0.1)
    results = remote.get_result(futures, throw_except=False)
    assert results == [None] * 6
    assert all(f.error for f in futures)
