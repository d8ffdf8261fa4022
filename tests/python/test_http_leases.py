"""What runs where for a detached `http` job, and how a follower learns that
part of it is lost.

``map(..., detach=True)`` on the http backend delivers every Invocation to the
worker servers before it returns: no process of the client's drives the job
afterwards (unlike the local backend's detached host). A server writes a lease
for each job it has calls of (``leases/<machine>-<pid>.lease`` in the job's
storage) before it answers that it took them, renews it while it runs them and
deletes it once they are done; a server that dies leaves a lease that stops
being renewed, so ``quelea.job_leases`` says it is gone: the job is abandoned
(its calls on that server will never finish). Two real ``quelea worker serve``
processes, one killed by PID."""

from __future__ import annotations

import os
import signal
import time

import pytest

import quelea
from conftest import worker_servers

SECRET = "lease-suite-secret"


def sleepy(x):
    time.sleep(x)
    return x


@pytest.fixture
def two_servers(storage_root):
    env = {**os.environ, "QUELEA_HTTP_SECRET": SECRET, "QUELEA_STORAGE_DIR": str(storage_root)}
    with worker_servers(2, 1, env) as servers:
        yield servers


def _wait(what: str, check, limit: float = 30.0):
    deadline = time.monotonic() + limit
    while not (value := check()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return value


def test_a_killed_worker_server_leaves_a_lease_that_says_it_is_gone(two_servers, storage_root):
    procs, urls = two_servers
    config = {"localdisk": {"root": str(storage_root)}, "http": {"urls": urls, "secret": SECRET}}
    with quelea.FunctionExecutor(backend="http", config=config) as fexec:
        futures = fexec.map(sleepy, [30.0] * 4, chunksize=1, detach=True)
        handle = fexec.job_handle(futures)
    # Every call was delivered before map() returned, and each server wrote its lease
    # before it answered: both are there at once.
    leases = quelea.job_leases(handle, config=config)
    assert sorted(lease["pid"] for lease in leases) == sorted(p.pid for p in procs), leases
    assert all(lease["role"] == "server" and not lease["gone"] for lease in leases), leases
    assert quelea.host_lease(handle, config=config) is None  # no host: nothing local runs it
    first = {lease["pid"]: lease["ts"] for lease in leases}
    _wait(
        "the leases were not renewed",
        lambda: all(x["ts"] > first[x["pid"]] for x in quelea.job_leases(handle, config=config)),
    )

    os.killpg(procs[0].pid, signal.SIGKILL)
    procs[0].wait(timeout=30)
    leases = quelea.job_leases(handle, config=config)
    gone = [lease for lease in leases if lease["gone"]]
    assert [lease["pid"] for lease in gone] == [procs[0].pid], leases
    assert [lease["pid"] for lease in leases if not lease["gone"]] == [procs[1].pid], leases
    followed = quelea.attach(handle, config=config)
    assert quelea.progress(followed)["done"] == 0
    quelea.cancel(followed)
    # The live server stops its cancelled calls, then deletes its lease; the dead one's stays.
    _wait(
        "the live server kept its lease",
        lambda: [x["pid"] for x in quelea.job_leases(handle, config=config)] == [procs[0].pid],
    )
    assert quelea.clean_job(handle, config=config) > 0
    assert quelea.job_leases(handle, config=config) == []


def test_a_finished_http_job_leaves_no_lease(two_servers, storage_root):
    _, urls = two_servers
    config = {"localdisk": {"root": str(storage_root)}, "http": {"urls": urls, "secret": SECRET}}
    with quelea.FunctionExecutor(backend="http", config=config) as fexec:
        futures = fexec.map(sleepy, [0.2] * 4, chunksize=1, detach=True)
        handle = fexec.job_handle(futures)
    assert quelea.get_result(quelea.attach(handle, config=config), timeout=60) == [0.2] * 4
    _wait("a finished job's leases stayed", lambda: quelea.job_leases(handle, config=config) == [])
    quelea.clean_job(handle, config=config)
