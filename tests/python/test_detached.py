"""Detached jobs: a local map that outlives the process that submitted it.

A client submits ``map(..., detach=True)`` and is SIGKILLed; the job goes on
in its host process. A second process (this test) attaches by handle, sees
progress counted in elements, and reads every result in order; a third
cancels another detached job by its marker, after which no runner process is
left (checked by PID). Real processes throughout.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

import quelea
from conftest import pid_alive, run_script
from quelea.exceptions import CancelledError

CLIENT = """
    import os, signal, sys, time
    import quelea

    SLEEP = float(sys.argv[2])

    def slow_square(x):
        time.sleep(SLEEP)
        return x * x

    config = {{"localdisk": {{"root": {root!r}}}, "local": {{"workers": 2}}}}
    fexec = quelea.FunctionExecutor(config=config)
    futures = fexec.map(slow_square, range({n}), chunksize=int(sys.argv[1]), detach=True)
    print(fexec.job_handle(futures), flush=True)
    print(fexec.host_pid(), flush=True)
    # Gone at once, as a client killed mid-job is: no clean-up of any kind.
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.extend(int(p) for p in (task / "children").read_text().split())
        except OSError:
            pass
    return out


def _wait_gone(pids: list[int], limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not any(pid_alive(p) for p in pids):
            return True
        time.sleep(0.05)
    return False


def _submit(tmp_path: Path, root: Path, n: int, chunksize: int, sleep: float) -> tuple[str, int]:
    proc = run_script(tmp_path, CLIENT.format(root=str(root), n=n), str(chunksize), str(sleep))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    handle, host = out.strip().splitlines()[-2:]
    return handle, int(host)


def test_a_detached_map_outlives_its_killed_client(tmp_path, storage_root):
    config = {"localdisk": {"root": str(storage_root)}}
    handle, host = _submit(tmp_path, storage_root, 2000, 10, 0.002)
    assert json.loads(handle)["total_calls"] == 2000
    futures = quelea.attach(handle, config=config)
    assert len(futures) == 2000
    # Progress is counted in elements, while the job runs without its client.
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        progress = quelea.progress(futures)
        assert progress["total"] == 2000 and progress["failed"] == 0
        seen.append(progress["done"])
        if progress["done"] == 2000:
            break
        time.sleep(0.05)
    assert seen[-1] == 2000 and seen == sorted(seen)
    assert quelea.get_result(futures, timeout=60) == [x * x for x in range(2000)]
    # The host ends with its job, and the last reader cleans the job's objects.
    assert _wait_gone([host], 30)
    assert quelea.clean_job(handle, config=config) > 0
    # Nothing of the job is left: no file under its executor, and attaching says so.
    executor_id = json.loads(handle)["executor_id"]
    assert not [p for p in storage_root.rglob("*") if p.is_file() and executor_id in p.parts]
    with pytest.raises(quelea.exceptions.JobHandleError, match="has no objects"):
        quelea.attach(handle, config=config)


def test_a_third_process_cancels_a_detached_job_and_no_runner_is_left(tmp_path, storage_root):
    config = {"localdisk": {"root": str(storage_root)}}
    handle, host = _submit(tmp_path, storage_root, 20, 1, 60.0)
    futures = quelea.attach(handle, config=config)
    deadline = time.monotonic() + 60
    while not any(f.running for f in futures) and time.monotonic() < deadline:
        time.sleep(0.05)
    runners = _children(host)
    assert runners, "the host runs its runners"
    # A third process cancels through the handle alone.
    source = f"""
        import quelea
        futures = quelea.attach({handle!r}, config={config!r})
        quelea.cancel(futures)
        print("cancelled", flush=True)
    """
    proc = run_script(tmp_path, source)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "cancelled" in out, err
    results = quelea.get_result(futures, throw_except=False, timeout=60)
    assert results == [None] * 20
    try:
        futures[0].result()
    except CancelledError:
        pass
    else:
        raise AssertionError("a cancelled call raises CancelledError")
    assert _wait_gone([host, *runners], 30), f"host {host} or runners {runners} still running"
    assert all(not os.path.exists(f"/proc/{p}") or not pid_alive(p) for p in runners)


MAP_REDUCE_CLIENT = """
    import os, signal, time
    import quelea

    def slow_triple(x):
        time.sleep(0.01)
        return 3 * x

    config = {{"localdisk": {{"root": {root!r}}}, "local": {{"workers": 2}}}}
    fexec = quelea.FunctionExecutor(config=config)
    futures = fexec.map_reduce(slow_triple, range(200), sum, detach=True)
    parts = {{}}
    for f in futures:
        parts.setdefault(f.job_key, []).append(f)
    for fs in parts.values():
        print(fexec.job_handle(fs), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_detached_map_reduce_reduces_after_its_client_is_killed(tmp_path, storage_root):
    """The host runs the reduce once the map is done: the client is long gone by
    then. Cleaning both parts leaves nothing of the executor behind."""
    config = {"localdisk": {"root": str(storage_root)}}
    proc = run_script(tmp_path, MAP_REDUCE_CLIENT.format(root=str(storage_root)))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    map_handle, reduce_handle = out.strip().splitlines()[-2:]
    # Both parts can be attached at once, before the map is done.
    reduce_part = quelea.attach(reduce_handle, config=config)
    assert quelea.get_result(reduce_part, timeout=120) == [sum(3 * x for x in range(200))]
    assert quelea.clean_job(map_handle, config=config) > 0
    assert quelea.clean_job(reduce_handle, config=config) > 0
    executor_id = json.loads(map_handle)["executor_id"]
    left = [p for p in storage_root.rglob("*") if p.is_file() and executor_id in p.parts]
    assert left == [], left


def test_the_host_lease_says_when_a_detached_jobs_host_is_gone(tmp_path, storage_root):
    """The host rewrites its lease while the job runs; once the host is SIGKILLed the
    lease says it is gone (same machine: its pid is dead), and a job that finishes
    normally leaves no lease behind."""
    config = {"localdisk": {"root": str(storage_root)}}
    handle, host = _submit(tmp_path, storage_root, 40, 1, 1.0)
    # Written once the host has accepted the job (the client does not wait for that).
    deadline = time.monotonic() + 30
    while (lease := quelea.host_lease(handle, config=config)) is None:
        assert time.monotonic() < deadline, "the host wrote no lease"
        time.sleep(0.1)
    assert lease is not None and lease["pid"] == host and not lease["gone"], lease
    assert lease["interval_s"] > 0 and lease["age_s"] < 5 * lease["interval_s"], lease
    # Rewritten while the job runs.
    first = lease["ts"]
    deadline = time.monotonic() + 30
    while (lease := quelea.host_lease(handle, config=config))["ts"] == first:
        assert time.monotonic() < deadline, "the lease was not renewed"
        time.sleep(0.2)
    os.kill(host, signal.SIGKILL)
    assert _wait_gone([host], 30)
    lease = quelea.host_lease(handle, config=config)
    assert lease is not None and lease["gone"], lease
    assert quelea.progress(quelea.attach(handle, config=config))["done"] < 40
    quelea.clean_job(handle, config=config)
    assert quelea.host_lease(handle, config=config) is None

    # A job that finishes: its host deletes the lease before it exits.
    handle, host = _submit(tmp_path, storage_root, 4, 1, 0.01)
    futures = quelea.attach(handle, config=config)
    assert quelea.get_result(futures, timeout=60) == [0, 1, 4, 9]
    assert _wait_gone([host], 30)
    assert quelea.host_lease(handle, config=config) is None
    quelea.clean_job(handle, config=config)


# Imported by every Python process started with this directory on PYTHONPATH: the
# detached-job host (QUELEA_RUNNER=host) kills itself at start-up, before it has read
# a byte of its input -- a host killed before it took the job.
HOST_DIES_AT_START = """
import os, signal
if os.environ.get("QUELEA_RUNNER") == "host":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_host_killed_before_it_took_the_job_is_seen_gone(tmp_path, storage_root):
    """The client writes the job's first lease in the host's name before handing it
    over (``taken`` false): a host that dies before it takes the job (so before it
    could write a lease itself) leaves that lease, which says the host is gone."""
    config = {"localdisk": {"root": str(storage_root)}}
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HOST_DIES_AT_START)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = run_script(tmp_path, CLIENT.format(root=str(storage_root), n=4), "1", "0.01", env=env)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    handle, host = out.strip().splitlines()[-2:]
    assert _wait_gone([int(host)], 30)
    lease = quelea.host_lease(handle, config=config)
    assert lease is not None, "no lease: a follower could not tell the host is gone"
    assert lease["pid"] == int(host) and not lease["taken"] and lease["gone"], lease
    futures = quelea.attach(handle, config=config)
    assert quelea.progress(futures)["done"] == 0
    assert quelea.clean_job(handle, config=config) > 0
    assert quelea.host_lease(handle, config=config) is None


SLOW_MAP_REDUCE_CLIENT = """
    import os, signal, time
    import quelea

    def slow(x):
        time.sleep(0.5)
        return x

    config = {{"localdisk": {{"root": {root!r}}}, "local": {{"workers": 1}}}}
    fexec = quelea.FunctionExecutor(config=config)
    futures = fexec.map_reduce(slow, range(12), sum, chunksize=1, detach=True)
    parts = {{}}
    for f in futures:
        parts.setdefault(f.job_key, []).append(f)
    for fs in parts.values():
        print(fexec.job_handle(fs), flush=True)
    print(fexec.host_pid(), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_detached_reduce_has_a_live_lease_while_its_map_runs(tmp_path, storage_root):
    """The reduce part's lease is there from submission and kept by the host while
    the map runs (the reduce calls are not accepted yet), so a host killed then is
    seen gone by a follower of the reduce part too; a finished reduce leaves none."""
    config = {"localdisk": {"root": str(storage_root)}}
    proc = run_script(tmp_path, SLOW_MAP_REDUCE_CLIENT.format(root=str(storage_root)))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, err
    map_handle, reduce_handle, host = out.strip().splitlines()[-3:]
    lease = quelea.host_lease(reduce_handle, config=config)
    assert lease is not None and lease["pid"] == int(host) and not lease["gone"], lease
    deadline = time.monotonic() + 30
    while not (renewed := quelea.host_lease(reduce_handle, config=config))["taken"]:
        assert time.monotonic() < deadline, "the host did not take the reduce's lease"
        time.sleep(0.1)
    first = renewed["ts"]
    while (renewed := quelea.host_lease(reduce_handle, config=config))["ts"] == first:
        assert time.monotonic() < deadline, "the reduce's lease was not renewed"
        time.sleep(0.2)
    assert quelea.progress(quelea.attach(map_handle, config=config))["done"] < 12, "map done already"
    assert not renewed["gone"], renewed
    reduce_part = quelea.attach(reduce_handle, config=config)
    assert quelea.get_result(reduce_part, timeout=120) == [sum(range(12))]
    assert _wait_gone([int(host)], 30)
    assert quelea.host_lease(reduce_handle, config=config) is None
    assert quelea.host_lease(map_handle, config=config) is None
    quelea.clean_job(map_handle, config=config)
    quelea.clean_job(reduce_handle, config=config)
