"""Retries on the local backend: the engine's (``map(..., retries=N)``) and
Lithops' wrappers on top of them (``quelea.retries``). Attempts are counted
by marker files the calls leave in a directory of the test (the runners are
processes on this machine)."""

from __future__ import annotations

import os
import signal
import time

import pytest

import quelea
from quelea.exceptions import ConfigError


def flaky(x, d, fail_first, how="raise"):
    """Fails its first ``fail_first`` attempts (counted by marker files in
    ``d``), then returns ``(x, attempt)``."""
    import glob
    import os

    seen = len(glob.glob(f"{d}/{x}-*"))
    open(f"{d}/{x}-{seen}-{os.getpid()}", "w").close()
    if seen < fail_first:
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "sleep":
            time.sleep(60)
        if how == "slow":
            time.sleep(1)
        raise ValueError(f"attempt {seen} of {x}")
    return (x, seen)


def runs(d, x) -> int:
    return sum(1 for name in os.listdir(d) if name.split("-")[0] == str(x))


def test_a_call_failing_twice_succeeds_on_its_third_attempt(executor, tmp_path):
    fs = executor.map(flaky, [0, 1, 2], extra_args=(tmp_path, 2), retries=2, retry_user_errors=True)
    assert executor.get_result(fs) == [(0, 2), (1, 2), (2, 2)]
    assert [f.stats["attempt"] for f in fs] == [2, 2, 2]
    assert all(f.success for f in fs)
    assert [runs(tmp_path, x) for x in range(3)] == [3, 3, 3]


def test_the_last_attempts_exception_is_raised(executor, tmp_path):
    fs = executor.map(flaky, [7], extra_args=(tmp_path, 2), retries=1, retry_user_errors=True)
    with pytest.raises(ValueError, match="attempt 1 of 7"):
        executor.get_result(fs)
    assert fs[0].error and fs[0].stats["attempt"] == 1
    assert runs(tmp_path, 7) == 2


def test_user_exceptions_are_retried_only_when_asked(executor, tmp_path):
    fs = executor.map(flaky, [3], extra_args=(tmp_path, 1), retries=3)
    with pytest.raises(ValueError, match="attempt 0 of 3"):
        executor.get_result(fs)
    assert runs(tmp_path, 3) == 1
    # No retries by default.
    fs = executor.map(flaky, [4], extra_args=(tmp_path, 1), retry_user_errors=True)
    with pytest.raises(ValueError, match="attempt 0 of 4"):
        executor.get_result(fs)
    assert runs(tmp_path, 4) == 1


def test_a_killed_runner_and_a_timeout_are_retried(executor, tmp_path):
    fs = executor.map(flaky, [5], extra_args=(tmp_path, 1, "kill"), retries=1)
    assert executor.get_result(fs) == [(5, 1)]
    assert fs[0].stats["attempt"] == 1
    started = time.monotonic()
    fs = executor.map(flaky, [6], extra_args=(tmp_path, 1, "sleep"), retries=1, timeout=1)
    assert executor.get_result(fs) == [(6, 1)]
    assert time.monotonic() - started < 30
    # Without retries the same crash is the call's outcome.
    fs = executor.map(flaky, [8], extra_args=(tmp_path, 1, "kill"))
    with pytest.raises(Exception, match="SIGKILL"):
        executor.get_result(fs)


def test_a_detached_job_is_retried_through_its_host(executor, tmp_path):
    fs = executor.map(flaky, [(x, tmp_path, 1, "kill") for x in (20, 21)], retries=1, detach=True)
    assert executor.get_result(fs) == [(20, 1), (21, 1)]
    assert [f.stats["attempt"] for f in fs] == [1, 1]
    assert executor._engine.host_pid() is not None


def test_in_a_batch_only_the_failing_element_runs_again(executor, tmp_path):
    items = [(x, tmp_path, 1 if x == 2 else 0) for x in range(5)]
    fs = executor.map(flaky, items, chunksize=5, retries=1, retry_user_errors=True)
    assert executor.get_result(fs) == [(0, 0), (1, 0), (2, 1), (3, 0), (4, 0)]
    assert [runs(tmp_path, x) for x in range(5)] == [1, 1, 2, 1, 1]
    assert [f.stats["attempt"] for f in fs] == [0, 0, 1, 0, 0]


def test_retries_from_the_config_and_bad_values(config, tmp_path):
    with quelea.FunctionExecutor(config={**config, "execution": {"retries": 1}}) as fexec:
        fs = fexec.map(flaky, [1], extra_args=(tmp_path, 1, "kill"))
        assert fexec.get_result(fs) == [(1, 1)]
    # Lithops' setting is the same one.
    with quelea.FunctionExecutor(config={**config, "lithops": {"retries": 2}}) as fexec:
        assert fexec.config["execution"]["retries"] == 2
        with pytest.raises(ValueError, match="retries must be a non-negative integer"):
            fexec.map(flaky, [1], extra_args=(tmp_path, 0), retries=-1)
        with pytest.raises(ValueError, match="retries must be between 0 and 100"):
            fexec.map(flaky, [1], extra_args=(tmp_path, 0), retries=101)
    with pytest.raises(ConfigError, match="execution.retries"):
        quelea.FunctionExecutor(config={**config, "execution": {"retries": 1000}})


def test_retrying_function_executor_as_in_lithops(config, tmp_path):
    # Expected values are what Lithops 3.8 (localhost) gives for the same program.
    from quelea.retries import RetryingFunctionExecutor, RetryingFuture

    assert quelea.RetryingFunctionExecutor is RetryingFunctionExecutor
    with RetryingFunctionExecutor(quelea.FunctionExecutor(config=config)) as fexec:
        fs = fexec.map(flaky, [(x, tmp_path, 2 if x % 2 else 0) for x in range(4)], retries=2)
        assert type(fs) is list and all(isinstance(f, RetryingFuture) for f in fs)
        done, pending = fexec.wait(fs, throw_except=False)
        assert (len(done), len(pending)) == (4, 0)
        assert all(d is f for d, f in zip(sorted(done, key=fs.index), fs, strict=True))
        assert [f.result() for f in fs] == [(0, 0), (1, 2), (2, 0), (3, 2)]
        assert [f.failure_count for f in fs] == [0, 2, 0, 2]
        assert [f.attempts for f in fs] == [1, 3, 1, 3]
        assert [e["message"] for e in fs[1].failed_attempts()] == ["attempt 0 of 1", "attempt 1 of 1"]

        fs = fexec.map(flaky, [(x, tmp_path, 2) for x in (5, 7)], retries=1)
        done, _ = fexec.wait(fs, throw_except=False)
        assert len(done) == 2 and all(f.error for f in fs)
        assert [f.failure_count for f in fs] == [2, 2]
        with pytest.raises(ValueError, match="attempt 1 of 5"):
            fs[0].result()

        # retries from the executor's config (Lithops: `lithops.retries`, 0).
        fs = fexec.map(flaky, [(9, tmp_path, 1)])
        with pytest.raises(ValueError, match="attempt 0 of 9"):
            fexec.wait(fs)


def test_retrying_future_retry_and_cancel(config, tmp_path):
    from quelea.retries import RetryingFunctionExecutor

    with RetryingFunctionExecutor(quelea.FunctionExecutor(config=config)) as fexec:
        # retry() runs a failed call again by hand, as Lithops' wait does.
        (f,) = fexec.map(flaky, [(11, tmp_path, 1, "slow")], retries=1)
        f.cancel()  # before it ended: its first attempt is its last
        fexec.wait([f], throw_except=False)
        assert f.error and f.failure_count == 1 and runs(tmp_path, 11) == 1
        f.retry()
        assert f.result() == (11, 1)
        assert f.failure_count == 1 and f.attempts == 2
        assert runs(tmp_path, 11) == 2
