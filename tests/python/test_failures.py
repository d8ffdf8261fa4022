"""Failures: remote exceptions with tracebacks, timeouts, crashes, memory,
Ctrl-C, and what cannot be pickled."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

import quelea
from conftest import pid_alive, run_script
from quelea.exceptions import (
    CallTimeoutError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
    WorkerCrashedError,
    WorkerMemoryError,
)


class PickyError(Exception):
    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


def picky(x):
    if x == 3:
        raise PickyError(f"three is not welcome ({x})", code=42)
    return x


def test_remote_exception_keeps_type_and_traceback(executor):
    futures = executor.map(picky, range(6))
    with pytest.raises(PickyError) as err:
        executor.get_result(futures)
    assert err.value.code == 42 and "three is not welcome" in str(err.value)
    cause = err.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in picky" in cause.tb and 'raise PickyError(f"three is not welcome' in cause.tb
    assert any("call 00003" in note for note in err.value.__notes__)
    assert [f.success for f in futures] == [True, True, True, False, True, True]
    assert executor.get_result(futures, throw_except=False) == [0, 1, 2, None, 4, 5]


class CustomReduce(Exception):
    def __reduce__(self):
        raise TypeError("not today")


class HoldsALock(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def raises(kind):
    if kind == "reduce":
        raise CustomReduce("rebuilt anyway")
    raise HoldsALock("cannot travel")


def test_an_exception_that_cannot_be_pickled_arrives_as_text(executor):
    with pytest.raises(CustomReduce, match="rebuilt anyway"):
        executor.get_result(executor.call_async(raises, "reduce"))
    with pytest.raises(RemoteError) as err:
        executor.get_result(executor.call_async(raises, "lock"))
    assert err.value.error_type == "HoldsALock" and "cannot travel" in str(err.value)
    assert "test_failures.py" in err.value.traceback
    assert 'raise HoldsALock("cannot travel")' in err.value.traceback


def returns_a_lock(x):
    return threading.Lock()


def test_unpicklable_function_argument_and_result_are_named(executor):
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="returns_lock_closure"):

        def returns_lock_closure(x):
            return lock

        executor.map(returns_lock_closure, [1])
    with pytest.raises(SerializationError, match="input of call 1"):
        executor.map(picky, [1, threading.Lock()])
    with pytest.raises(SerializationError, match=r"result of test_failures.returns_a_lock .*lock"):
        executor.get_result(executor.call_async(returns_a_lock, 1))


def sleeper(x):
    time.sleep(x)
    return x


def test_timeout_fails_only_that_call(fresh_executor):
    started = time.time()
    futures = fresh_executor.map(sleeper, [0.01, 30, 0.01, 0.02], timeout=0.8)
    results = fresh_executor.get_result(futures, throw_except=False)
    assert time.time() - started < 15
    assert results == [0.01, None, 0.01, 0.02]
    with pytest.raises(CallTimeoutError, match="timeout of 0.800 s") as err:
        futures[1].result()
    assert isinstance(err.value, TimeoutError) and err.value.call_id == "00001"


def test_a_runner_killed_mid_call_fails_only_its_call(fresh_executor):
    futures = fresh_executor.map(sleeper, [0.5] * 8)
    deadline = time.time() + 20
    while sum(f.running for f in futures) < 2:
        assert time.time() < deadline
        time.sleep(0.005)
    victim = fresh_executor.runner_pids()[0]
    os.kill(victim, signal.SIGKILL)
    results = fresh_executor.get_result(futures, throw_except=False)
    failed = [f for f in futures if f.error]
    assert len(failed) == 1 and results.count(0.5) == 7
    with pytest.raises(WorkerCrashedError, match="SIGKILL"):
        failed[0].result()


def hog(mb):
    blocks = []
    for _ in range(mb):
        blocks.append(bytearray(1 << 20))
        time.sleep(0.002)
    time.sleep(0.3)
    return len(blocks)


def test_memory_limit(fresh_executor):
    futures = fresh_executor.map(hog, [500, 1], runtime_memory=200)
    with pytest.raises(WorkerMemoryError, match="memory limit of 200 MiB") as err:
        futures[0].result()
    assert isinstance(err.value, MemoryError)
    assert futures[1].result() == 1


def test_the_executors_runtime_memory_takes_effect(config):
    # Lithops' executor-wide setting is every job's limit (not silently dropped).
    with quelea.FunctionExecutor(config=config, runtime_memory=200) as fexec:
        assert fexec.config["execution"]["memory_limit_mb"] == 200
        futures = fexec.map(hog, [500, 1])
        with pytest.raises(WorkerMemoryError, match="memory limit of 200 MiB"):
            futures[0].result()
        assert futures[1].result() == 1


def test_functions_from_main_and_from_a_non_installed_module(tmp_path, storage_root):
    (tmp_path / "helpers_not_installed").mkdir()
    (tmp_path / "helpers_not_installed" / "__init__.py").write_text("def triple(x):\n    return 3 * x\n")
    source = f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import quelea
        from helpers_not_installed import triple

        def double(x):
            return 2 * x

        with quelea.FunctionExecutor(config={{"localdisk": {{"root": {str(storage_root)!r}}}}}) as fexec:
            print(fexec.get_result(fexec.map(double, [1, 2])), fexec.get_result(fexec.map(triple, [1, 2])))
    """
    # Run from another directory, so the workers cannot import the module by name.
    proc = run_script(tmp_path, source)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "[2, 4] [3, 6]"


def test_ctrl_c_cancels_the_job_and_leaves_no_orphans(tmp_path, storage_root):
    source = f"""
        import sys, threading, time, quelea
        def nap(x):
            time.sleep(60)
        fexec = quelea.FunctionExecutor(config={{"localdisk": {{"root": {str(storage_root)!r}}}}})
        futures = fexec.map(nap, range(6))

        def main_thread_waits():
            frame = sys._current_frames().get(threading.main_thread().ident)
            while frame is not None and frame.f_code.co_name != "get_result":
                frame = frame.f_back
            return frame is not None

        def report_runners():
            # From a thread, once the main thread is in get_result (runners
            # forked from the client run the calls before it gets there).
            while not (any(f.running for f in futures) and main_thread_waits()):
                time.sleep(0.01)
            print(" ".join(map(str, fexec.runner_pids())), flush=True)

        threading.Thread(target=report_runners, daemon=True).start()
        try:
            fexec.get_result(futures)
        except KeyboardInterrupt:
            print("cancelled:", sum(f.error for f in futures), flush=True)
            raise
    """
    proc = run_script(tmp_path, source)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    started = time.time()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.time() - started < 10
    assert "cancelled: 6" in out and "KeyboardInterrupt" in err
    deadline = time.time() + 5
    while any(pid_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.02)
    assert not any(pid_alive(p) for p in pids)


def test_attach_from_another_process(tmp_path, storage_root):
    source = f"""
        import time, quelea
        def slow_square(x):
            time.sleep(0.05)
            return x * x
        cfg = {{"localdisk": {{"root": {str(storage_root)!r}}}, "execution": {{"data_cleaner": False}}}}
        with quelea.FunctionExecutor(config=cfg) as fexec:
            futures = fexec.map(slow_square, range(20))
            print(fexec.job_handle(futures), flush=True)
            fexec.get_result(futures)
            time.sleep(1.5)
    """
    proc = run_script(tmp_path, source)
    handle = proc.stdout.readline()
    assert json.loads(handle)["total_calls"] == 20
    futures = quelea.attach(handle, config={"localdisk": {"root": str(storage_root)}})
    assert quelea.get_result(futures, timeout=60) == [x * x for x in range(20)]
    proc.communicate(timeout=30)
    assert proc.returncode == 0
    with pytest.raises(quelea.exceptions.JobHandleError):
        quelea.attach('{"version": 7}')
