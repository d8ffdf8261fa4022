"""What a call does to its runner process cannot hang the client or orphan
processes: forking, crashing after a fork, multiprocessing.Pool, children
left behind, reading stdin, closing fd 1. Real runner processes; every wait
has a deadline; leaks are checked by PID and by process group."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import quelea
from conftest import pid_alive, run_script
from quelea.exceptions import CallTimeoutError, WorkerCrashedError


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def assert_all_gone(pids: list[int], groups: list[int] = (), within: float = 10.0) -> None:
    deadline = time.time() + within
    while True:
        alive = [p for p in pids if pid_alive(p)]
        left = [m for g in groups for m in group_members(g)]
        if not alive and not left:
            return
        assert time.time() < deadline, f"still running: {alive}, left in the runners' groups: {left}"
        time.sleep(0.02)


def close_quickly(fexec) -> None:
    started = time.time()
    fexec.close()
    assert time.time() - started < 5, f"close took {time.time() - started:.1f} s"


def forks_and_sleeps(path):
    child = os.fork()
    if child == 0:
        time.sleep(20)
        while True:
            pass
    Path(path).write_text(str(child))
    time.sleep(60)


def square(x):
    return x * x


def test_a_call_that_forks_times_out_on_time_and_others_do_not_wait(config, tmp_path):
    fexec = quelea.FunctionExecutor(config=config)
    started = time.time()
    forked = fexec.call_async(forks_and_sleeps, str(tmp_path / "child"), timeout=2)
    squares = fexec.map(square, range(100))
    with pytest.raises(CallTimeoutError, match="timeout of 2.000 s"):
        fexec.get_result(forked, timeout=30)
    assert time.time() - started < 10
    assert fexec.get_result(squares, timeout=30) == [x * x for x in range(100)]
    groups = fexec.runner_pids()
    assert_all_gone([int((tmp_path / "child").read_text())])
    close_quickly(fexec)
    assert_all_gone([], groups)


def forks_then_crashes(path):
    child = os.fork()
    if child == 0:
        time.sleep(300)
        os._exit(0)
    Path(path).write_text(str(child))
    os.abort()


def test_a_crash_after_fork_is_reported_at_once(config, tmp_path):
    fexec = quelea.FunctionExecutor(config=config)
    started = time.time()
    with pytest.raises(WorkerCrashedError, match="SIGABRT"):
        fexec.get_result(fexec.call_async(forks_then_crashes, str(tmp_path / "child")), timeout=30)
    assert time.time() - started < 10
    assert_all_gone([int((tmp_path / "child").read_text())])
    assert fexec.get_result(fexec.map(square, range(10)), timeout=30) == [x * x for x in range(10)]
    close_quickly(fexec)


def with_a_pool(n):
    import multiprocessing

    with multiprocessing.Pool(2) as pool:
        return pool.map(abs, range(-n, 0))


def with_a_stuck_pool(path):
    import multiprocessing

    pool = multiprocessing.Pool(2)
    Path(path).write_text(" ".join(str(p.pid) for p in multiprocessing.active_children()))
    pool.map(time.sleep, [60, 60])


def test_multiprocessing_pool_inside_a_call(config, tmp_path):
    fexec = quelea.FunctionExecutor(config=config)
    assert fexec.get_result(fexec.map(with_a_pool, [3, 5]), timeout=60) == [[3, 2, 1], [5, 4, 3, 2, 1]]
    started = time.time()
    with pytest.raises(CallTimeoutError):
        fexec.get_result(fexec.call_async(with_a_stuck_pool, str(tmp_path / "pool"), timeout=3), timeout=30)
    assert time.time() - started < 15
    workers = [int(p) for p in (tmp_path / "pool").read_text().split()]
    assert len(workers) >= 2
    assert_all_gone(workers)
    groups = fexec.runner_pids()
    close_quickly(fexec)
    assert_all_gone([], groups)


def leaves_sleepers(n):
    return [subprocess.Popen(["sleep", "300"]).pid for _ in range(n)]


def test_children_left_behind_die_with_close(config):
    fexec = quelea.FunctionExecutor(config=config)
    sleepers = fexec.get_result(fexec.call_async(leaves_sleepers, 50), timeout=60)
    assert len(sleepers) == 50 and all(pid_alive(p) for p in sleepers)
    groups = fexec.runner_pids()
    close_quickly(fexec)
    assert_all_gone(sleepers, groups)


def test_children_left_behind_die_with_a_sigkilled_client(tmp_path, storage_root):
    source = f"""
        import subprocess, time, quelea

        def leaves_sleepers(n):
            return [subprocess.Popen(["sleep", "300"]).pid for _ in range(n)]

        fexec = quelea.FunctionExecutor(config={{"localdisk": {{"root": {str(storage_root)!r}}}}})
        sleepers = fexec.get_result(fexec.call_async(leaves_sleepers, 50), timeout=60)
        print(" ".join(map(str, sleepers)), flush=True)
        print(" ".join(map(str, fexec.runner_pids())), flush=True)
        time.sleep(120)
    """
    proc = run_script(tmp_path, source)
    try:
        sleepers = [int(p) for p in proc.stdout.readline().split()]
        runners = [int(p) for p in proc.stdout.readline().split()]
        assert len(sleepers) == 50 and runners, proc.stderr.read() if proc.poll() is not None else ""
        assert all(pid_alive(p) for p in sleepers)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert_all_gone(sleepers + runners, runners)


def reads_stdin(x):
    return x, sys.stdin.read(), os.read(0, 100)


def closes_fd1(x):
    try:
        os.close(1)
    except OSError:  # closed by an earlier call on this runner
        pass
    return x


def prints(x):
    print("still printing", x)
    return x


def test_stdin_is_empty_and_closing_fd1_breaks_nothing(config):
    fexec = quelea.FunctionExecutor(config=config)
    # Enough calls for both runners: each read sees end-of-file, not
    # another call's input.
    assert fexec.get_result(fexec.map(reads_stdin, range(8)), timeout=30) == [(x, "", b"") for x in range(8)]
    runners = sorted(fexec.runner_pids())
    assert fexec.get_result(fexec.map(closes_fd1, range(8)), timeout=30) == list(range(8))
    assert fexec.get_result(fexec.map(prints, range(50)), timeout=30) == list(range(50))
    assert fexec.get_result(fexec.map(square, range(200)), timeout=30) == [x * x for x in range(200)]
    assert sorted(fexec.runner_pids()) == runners, "no runner died"
    close_quickly(fexec)


def test_runners_lead_their_own_process_group(config):
    fexec = quelea.FunctionExecutor(config=config)
    pids = fexec.get_result(fexec.map(lambda _: (os.getpid(), os.getpgrp()), range(4)), timeout=30)
    assert all(pid == pgrp for pid, pgrp in pids)
    assert os.getpgrp() not in {pgrp for _, pgrp in pids}
    close_quickly(fexec)
