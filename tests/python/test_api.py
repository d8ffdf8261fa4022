"""The Lithops/PyWren API on the local backend."""

from __future__ import annotations

import os
import time

import pytest

import quelea
from quelea.exceptions import ConfigError, WaitTimeoutError


def my_map_function(id, x):
    return x + 7


def test_seed_example_runs_as_written(config):
    pw = quelea.FunctionExecutor(config=config)
    pw.map(my_map_function, [1, 2, 3, 4])
    assert pw.get_result() == [8, 9, 10, 11]
    pw.close()


def square(x):
    return x * x


def test_map_10k_results_in_order(executor):
    futures = executor.map(square, range(10_000))
    assert executor.get_result(futures) == [x * x for x in range(10_000)]
    assert all(f.success for f in futures)
    stats = futures[-1].stats
    assert stats["worker_start_tstamp"] <= stats["worker_end_tstamp"]
    assert stats["worker_peak_memory"] > 0


def add(a, b=0, c=0):
    return a + b + c


def concat(lst):
    return "".join(lst)


def test_iterdata_forms(executor):
    assert executor.get_result(executor.map(add, [1, 2])) == [1, 2]
    assert executor.get_result(executor.map(add, range(3))) == [0, 1, 2]
    assert executor.get_result(executor.map(add, [(1, 2), (3, 4, 5)])) == [3, 12]
    assert executor.get_result(executor.map(add, [{"a": 1, "c": 5}, {"a": 2, "b": 1}])) == [6, 3]
    # Lists and strings are one argument each.
    assert executor.get_result(executor.map(concat, [["a", "b"], ["c", "d"]])) == ["ab", "cd"]
    assert executor.get_result(executor.map(len, ["abc", "de"])) == [3, 2]
    # A generator is consumed; a set and a tuple-of-args element work.
    assert executor.get_result(executor.map(add, (x for x in [5, 6]))) == [5, 6]


def test_extra_args_are_merged(executor):
    assert executor.get_result(executor.map(add, [1, 2], extra_args=(10,))) == [11, 12]
    assert executor.get_result(executor.map(add, [(1,), (2,)], extra_args=(10, 100))) == [111, 112]
    assert executor.get_result(executor.map(add, [{"a": 1}], extra_args={"c": 3})) == [4]
    with pytest.raises(TypeError, match="extra_args must be a dict"):
        executor.map(add, [{"a": 1}], extra_args=(3,))


def with_id(x, id):
    return (id, x)


def writes_to_storage(key, storage):
    storage.put_object(storage.bucket, key, f"written by {key}".encode())
    return storage.bucket


def test_reserved_parameters_are_injected(executor):
    assert executor.get_result(executor.map(with_id, ["a", "b", "c"])) == [(0, "a"), (1, "b"), (2, "c")]
    bucket = executor.get_result(executor.call_async(writes_to_storage, "tests/reserved-storage"))
    written = executor.storage.get_object(bucket, "tests/reserved-storage")
    assert written == b"written by tests/reserved-storage"


def test_return_shapes_and_unread_results(fresh_executor):
    fexec = fresh_executor
    fexec.call_async(square, 9)
    assert fexec.get_result() == 81
    fexec.map(square, [1, 2])
    assert fexec.get_result() == [1, 4]
    assert fexec.get_result() == []  # already read
    fexec.map_reduce(square, [1, 2, 3], sum)
    assert fexec.get_result() == 14


def total(results, offset):
    return sum(results) + offset


def test_map_reduce_with_extra_args_reduce(executor):
    futures = executor.map_reduce(square, range(10), total, extra_args_reduce=(1000,))
    assert futures[-1].job_id.startswith("R")
    assert executor.get_result(futures[-1]) == sum(x * x for x in range(10)) + 1000


def pair(x):
    return (x, x + 1)


def test_chaining_futures(executor):
    futures = executor.map(pair, [1, 2])
    chained = futures.map(add)  # tuple results become positional arguments
    assert chained.get_result() == [3, 5]


def nested_map(n):
    inner = quelea.FunctionExecutor()
    return inner.map(square, range(n))


def test_a_function_that_returns_futures(executor, _own_home):
    # The nested executor in the worker works where its caller does (the
    # runner's config: the test's storage), not in the default ~/.quelea.
    default_storage = _own_home / ".quelea"
    before = set(default_storage.rglob("job.json"))
    futures = executor.map(nested_map, [2, 3])
    assert executor.get_result(futures) == [0, 1, 0, 1, 4]
    assert set(default_storage.rglob("job.json")) == before


def shout(word):
    print(f"hello {word}")
    return os.environ.get("QUELEA_TEST_COLOUR", "unset")


def test_extra_env_and_logs(executor):
    futures = executor.map(shout, ["a", "b"], extra_env={"QUELEA_TEST_COLOUR": "blue"})
    assert executor.get_result(futures) == ["blue", "blue"]
    assert futures[1].logs == "hello b\n"
    # The variable does not leak into later calls on the warm runners.
    assert executor.get_result(executor.map(shout, ["c", "d"])) == ["unset", "unset"]


def slow(x):
    time.sleep(x)
    return x


def test_wait_modes(executor):
    futures = executor.map(slow, [0.01, 1.5, 1.5])
    done, not_done = executor.wait(futures, return_when=quelea.ANY_COMPLETED)
    assert len(done) >= 1 and len(done) + len(not_done) == 3
    done, not_done = executor.wait(futures, return_when=quelea.ALWAYS)
    assert len(done) + len(not_done) == 3
    with pytest.raises(WaitTimeoutError) as err:
        executor.wait(futures, timeout=0.05)
    assert isinstance(err.value, TimeoutError)
    done, _ = quelea.wait(futures, return_when=60)
    assert len(done) >= 2
    assert quelea.get_result(futures) == [0.01, 1.5, 1.5]
    with pytest.raises(ValueError, match="0-100"):
        executor.wait(futures, return_when=150)


def test_job_summary_and_clean(fresh_executor):
    fresh_executor.get_result(fresh_executor.map(square, range(20)))
    (row,) = fresh_executor.job_summary()
    assert row["calls"] == 20 and row["success"] == 20 and row["error"] == 0
    assert row["function"].endswith("square")
    assert fresh_executor.clean() > 0


def test_bad_input_is_a_clear_error(executor, config):
    with pytest.raises(TypeError, match="must be callable"):
        executor.map(42, [1])
    with pytest.raises(ValueError, match="empty"):
        executor.map(square, [])
    with pytest.raises(ValueError, match="chunksize"):
        executor.map(square, [1], chunksize=0)
    with pytest.raises(ValueError, match="timeout"):
        executor.map(square, [1], timeout=-1)
    with pytest.raises(TypeError, match=r"map_iterdata\[1\] does not fit"):
        executor.map(add, [{"a": 1}, {"b": 2}])
    with pytest.raises(ConfigError, match="wokers"):
        quelea.FunctionExecutor(config={**config, "local": {"wokers": 2}})
    with pytest.raises(ConfigError, match="max_workers"):
        quelea.FunctionExecutor(config=config, max_workers=0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        quelea.FunctionExecutor(config=config, colour="red")
    # Numbers out of any sensible range are named errors, never a Rust panic
    # (which would slip past `except Exception`).
    for bad in (1e30, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="timeout"):
            executor.map(square, [1], timeout=bad)
    for bad in (2**44, -256, "256", 0):
        with pytest.raises(ValueError, match="runtime_memory"):
            executor.map(square, [1], runtime_memory=bad)
    with pytest.raises(ValueError, match="runtime_memory"):
        quelea.FunctionExecutor(config=config, runtime_memory=-1)
    with pytest.raises(ConfigError, match="execution.timeout"):
        quelea.FunctionExecutor(config={**config, "execution": {"timeout": 1e30}})
    with pytest.raises(ConfigError, match="http.replay_window"):
        quelea.FunctionExecutor(config={**config, "http": {"replay_window": 1e30}})
    with pytest.raises(TypeError, match="detach"):
        executor.map(square, [1], detach="yes")


def test_lithops_shaped_config_is_understood(storage_root):
    cfg = {
        "lithops": {"backend": "localhost", "storage": "localhost"},
        "localhost": {"worker_processes": 1},
        "localdisk": {"root": str(storage_root)},
    }
    with quelea.FunctionExecutor(config=cfg) as fexec:
        assert fexec.config["local"]["workers"] == 1
        assert fexec.get_result(fexec.map(square, [3])) == [9]


def test_context_manager_stops_runners(config):
    with quelea.FunctionExecutor(config=config) as fexec:
        fexec.get_result(fexec.map(square, [1, 2]))
        pids = fexec.runner_pids()
        assert len(pids) == 2
    from conftest import pid_alive

    deadline = time.time() + 5
    while any(pid_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.02)
    assert not any(pid_alive(p) for p in pids)


def test_serverless_mode_needs_a_serverless_backend(config):
    with pytest.raises(ConfigError, match="mode='serverless' needs a serverless backend.*`local`"):
        quelea.FunctionExecutor(mode="serverless", config=config)


def mebibyte_of(x):
    if x == 11:
        raise ValueError("no 11")
    time.sleep(0.02 * (x % 3))  # finishing out of order
    return bytes([x]) * (1 << 20)


def test_big_results_decoded_while_the_map_runs_keep_order_failures_and_timeouts(executor):
    # 16 calls of 1 MiB: get_result decodes them a step at a time as they end.
    from quelea import _wait

    assert 16 <= _wait._STEPPED_UP_TO and 2 << 20 > _wait._BIG_RESULTS  # the stepped path is taken
    values = executor.get_result(executor.map(mebibyte_of, [x for x in range(16) if x != 11]))
    assert [v[:1] for v in values] == [bytes([x]) for x in range(16) if x != 11]
    assert all(len(v) == 1 << 20 for v in values)
    # A failure in a later step is the caller's to see, as on the other path.
    with pytest.raises(ValueError, match="no 11"):
        executor.get_result(executor.map(mebibyte_of, range(16)))
    got = executor.get_result(executor.map(mebibyte_of, range(16)), throw_except=False)
    assert got[11] is None and got[12][:1] == b"\x0c" and len(got) == 16
    # The timeout covers every step.
    naps = executor.map(slow, [0.01, 0.01, 1, 1])
    started = time.monotonic()
    with pytest.raises(WaitTimeoutError):
        executor.get_result(naps, timeout=0.5)
    assert time.monotonic() - started < 0.9
    assert executor.get_result(naps) == [0.01, 0.01, 1, 1]
