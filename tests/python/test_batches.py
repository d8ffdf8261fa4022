"""Batches: many map elements to one runner call (explicit ``chunksize``, or
automatic for large maps), an engine concept: every element keeps its own
future, state, result, exception, logs, id and failure reason, and a batch
whose process dies is re-run by the runtime one element per call. Real
runner processes throughout."""

from __future__ import annotations

import json
import os
import pickle
import sys
import threading
import time

import pytest

import quelea
from conftest import run_script
from quelea import _batch, _serialize
from quelea._batch import MAX_AUTO_BATCH_BYTES
from quelea.exceptions import CallTimeoutError, RemoteTraceback, SerializationError, WorkerCrashedError


def square(x):
    return x * x


def fussy(x):
    if x % 10 == 3:
        raise KeyError(f"no threes: {x}")
    return x


def chatty(x):
    if x % 2:
        print(f"odd {x}")
    return x


def with_id(id, x):
    return (id, x)


def add(x, y, z=0):
    return x + y + z


def crash_on(x):
    if x == 15:
        os._exit(9)
    return x


def sleep_on(x):
    if x == 7:
        time.sleep(30)
    return x


def lock_on(x):
    return threading.Lock() if x == 4 else x


def env_var(x):
    return os.environ.get("BATCH_VAR", "") + str(x)


AUTO_MIN = 512  # quelea_core::config::AUTO_CHUNK_MIN


def auto_size(elements: int, workers: int) -> int:
    """multiprocessing.Pool.map's rule: about four runner calls per worker."""
    return -(-elements // (workers * 4))


def test_large_maps_are_batched_like_pool_and_keep_call_order(executor):
    n = 10_000
    futures = executor.map(square, range(n))
    job = futures._job_source()[0]
    # The engine's job counts elements, and knows its batch size.
    assert job.chunksize == auto_size(n, 2) == 1250 and job.total == n
    assert len(futures) == n
    assert executor.get_result(futures) == [x * x for x in range(n)]
    # The futures are there when asked for, one per element.
    assert futures[1234].result() == 1234 * 1234 and futures[1234].call_id == "01234"
    assert futures[-1].success
    # Elements of one batch share its run, on one runner.
    last = [f.stats for f in futures[-1250:]]
    assert len({(s["worker_start_tstamp"], s["worker_id"]) for s in last}) == 1
    assert [f.result() for f in futures[10:13]] == [100, 121, 144]
    # Read once: a second get_result() has nothing new.
    assert executor.get_result() == []
    row = next(r for r in executor.job_summary() if r["job_key"] == futures[0].job_key)
    assert row["calls"] == n and row["success"] == n and row["runner_calls"] == 8


def length(data):
    return len(data)


def test_automatic_batches_of_big_elements_stay_small(executor):
    blobs = [bytes([i % 256]) * (64 << 10) for i in range(600)]
    futures = executor.map(length, blobs)
    job = futures._job_source()[0]
    assert auto_size(600, 2) == 75 and 1 < job.chunksize < 75
    assert job.chunksize * (64 << 10) <= MAX_AUTO_BATCH_BYTES
    assert executor.get_result(futures) == [64 << 10] * 600


def test_small_maps_and_chunksize_1_are_not_batched(executor, storage_root):
    small = executor.map(square, range(AUTO_MIN - 1))
    explicit = executor.map(square, range(AUTO_MIN * 2), chunksize=1)
    timed = executor.map(square, range(AUTO_MIN * 2), timeout=60)
    for futures in (small, explicit, timed):
        assert futures._job_source()[0].chunksize == 1
    assert executor.get_result(explicit) == [x * x for x in range(AUTO_MIN * 2)]
    # One meaning: `execution.chunksize` in the config is the same setting.
    cfg = {"localdisk": {"root": str(storage_root)}, "execution": {"chunksize": 1}}
    with quelea.FunctionExecutor(config=cfg) as fexec:
        futures = fexec.map(square, range(AUTO_MIN * 2))
        assert futures._job_source()[0].chunksize == 1
        assert fexec.get_result(futures) == [x * x for x in range(AUTO_MIN * 2)]
    cfg["execution"]["chunksize"] = 7
    with quelea.FunctionExecutor(config=cfg) as fexec:
        futures = fexec.map(square, range(20))
        assert futures._job_source()[0].chunksize == 7
        assert fexec.get_result(futures) == [x * x for x in range(20)]


def total(values):
    return sum(values)


def test_a_reducer_gets_every_batched_result_in_order(executor):
    # Automatic batches (shared results) and a chunksize that leaves a
    # single-element last call: the reducer sees each map result once, in order.
    assert executor.get_result(executor.map_reduce(square, range(5000), total)) == sum(
        x * x for x in range(5000)
    )
    futures = executor.map_reduce(chatty, range(7), list, chunksize=3)
    assert executor.get_result(futures) == list(range(7))


def test_each_element_keeps_its_exception_and_traceback(executor):
    futures = executor.map(fussy, range(30), chunksize=8)
    assert executor.get_result(futures, throw_except=False) == [None if x % 10 == 3 else x for x in range(30)]
    assert [f.error for f in futures] == [x % 10 == 3 for x in range(30)]
    with pytest.raises(KeyError, match="no threes: 13") as err:
        futures[13].result()
    assert isinstance(err.value.__cause__, RemoteTraceback)
    assert "in fussy" in err.value.__cause__.tb
    assert any("call 00013" in note for note in err.value.__notes__)
    with pytest.raises(KeyError, match="no threes: 3"):
        executor.get_result(futures)


def test_each_element_keeps_its_logs(executor):
    futures = executor.map(chatty, range(6), chunksize=6)
    assert executor.get_result(futures) == list(range(6))
    assert [f.logs for f in futures] == ["" if x % 2 == 0 else f"odd {x}\n" for x in range(6)]


def moody(x):
    if x in (0, 5, 11):
        print(f"line {x}", end="" if x == 5 else "\n")  # 5: a line left unfinished
    if x == 7:
        print("before failing", file=sys.stderr)
        raise ValueError(f"seven {x}")
    if x == 9:
        raise ValueError(f"nine {x}")
    return 2 * x


def moody_str(s):
    return moody(int(s))


def last_word(x):
    if x == 11:
        print("the end")
    return x


@pytest.mark.parametrize(
    "func, data", [(moody, range(12)), (moody_str, [str(x) for x in range(12)])], ids=["range", "strs"]
)
def test_output_and_failures_anywhere_in_a_batch_stay_with_their_element(executor, func, data):
    # One batch of 12; output from the first, a middle and the last element,
    # failures after output and without: the runner's fast loop stops at
    # each element that writes and goes on after it.
    futures = executor.map(func, data, chunksize=12)
    expected = [None if x in (7, 9) else 2 * x for x in range(12)]
    assert executor.get_result(futures, throw_except=False) == expected
    assert [f.error for f in futures] == [x in (7, 9) for x in range(12)]
    logs = {0: "line 0\n", 5: "line 5", 11: "line 11\n"}
    assert [f.logs for f in futures if not f.error] == [logs.get(x, "") for x in range(12) if x not in (7, 9)]
    with pytest.raises(ValueError, match="seven 7"):
        futures[7].result()
    with pytest.raises(ValueError, match="nine 9"):
        futures[9].result()


def test_output_of_a_batch_s_last_element_stays_with_it(executor):
    # Only the last element writes: the runner's fast loop ends with it.
    futures = executor.map(last_word, range(12), chunksize=12)
    assert executor.get_result(futures) == list(range(12))
    assert [f.logs for f in futures] == [""] * 11 + ["the end\n"]


def test_reserved_id_argument_forms_and_extra_env(executor):
    futures = executor.map(with_id, ["a", "b", "c", "d", "e"], chunksize=2)
    assert executor.get_result(futures) == [(0, "a"), (1, "b"), (2, "c"), (3, "d"), (4, "e")]
    tuples = executor.map(add, [(1, 2), (3, 4), (5, 6)], chunksize=2, extra_args=(100,))
    assert executor.get_result(tuples) == [103, 107, 111]
    dicts = executor.map(add, [{"x": 1, "y": 2}, {"x": 3, "y": 4}], chunksize=2, extra_args={"z": 10})
    assert executor.get_result(dicts) == [13, 17]
    envs = executor.map(env_var, range(3), chunksize=3, extra_env={"BATCH_VAR": "v"})
    assert executor.get_result(envs) == ["v0", "v1", "v2"]


def test_a_result_that_cannot_be_pickled_fails_only_its_element(executor):
    futures = executor.map(lock_on, range(6), chunksize=6)
    assert executor.get_result(futures, throw_except=False) == [0, 1, 2, 3, None, 5]
    with pytest.raises(SerializationError, match=r"result of test_batches.lock_on \(call 00004"):
        futures[4].result()


def test_a_crash_fails_only_the_element_that_caused_it(fresh_executor):
    futures = fresh_executor.map(crash_on, range(40), chunksize=10)
    results = fresh_executor.get_result(futures, throw_except=False)
    assert results == [None if x == 15 else x for x in range(40)]
    assert [f.error for f in futures].count(True) == 1
    with pytest.raises(WorkerCrashedError, match="call 00015 died: exited with code 9"):
        futures[15].result()
    # The crashed batch's elements ran again one per call: three batches and
    # ten single runs (the dead run itself left no stats).
    row = next(r for r in fresh_executor.job_summary() if r["job_key"] == futures[0].job_key)
    assert row["runner_calls"] == 13
    starts = {f.stats["worker_start_tstamp"] for f in futures[10:20]}
    assert len(starts) == 10


def test_a_batch_timeout_times_out_only_the_slow_element(fresh_executor):
    started = time.time()
    futures = fresh_executor.map(sleep_on, range(10), chunksize=5, timeout=1)
    results = fresh_executor.get_result(futures, throw_except=False)
    assert results == [None if x == 7 else x for x in range(10)]
    assert time.time() - started < 20
    with pytest.raises(CallTimeoutError, match="timeout of 1.000 s") as err:
        futures[7].result()
    assert err.value.call_id == "00007"
    assert futures[6].success and futures[8].success


def square_later(x):
    if x >= 5:
        time.sleep(0.5)  # the first batch ends well before the others
    return x * x


def test_wait_any_and_states_work_per_element(executor):
    futures = executor.map(square_later, range(20), chunksize=5)
    done, not_done = executor.wait(futures, return_when=quelea.ANY_COMPLETED)
    assert len(done) >= 5 and len(done) + len(not_done) == 20
    done, not_done = quelea.wait(futures)
    assert len(done) == 20 and not not_done
    assert all(f.done and f.success for f in futures)
    assert futures._job_source() is None  # made when wait needed them


def test_waiting_for_a_whole_map_makes_no_futures(executor):
    futures = executor.map(square, range(20), chunksize=5)
    done, not_done = executor.wait(futures)
    # Everything ended: the list is the done list as it is.
    assert done is futures and len(not_done) == 0
    assert futures._job_source() is not None
    assert [f.result() for f in done] == [x * x for x in range(20)]


def test_the_lazy_list_behaves_as_a_list(executor):
    futures = executor.map(square, range(12), chunksize=4)
    assert len(futures) == 12 and bool(futures)
    made = list(futures)
    assert len(made) == 12 and all(isinstance(f, quelea.ResponseFuture) for f in made)
    other = executor.map(square, range(12), chunksize=4)
    joined = [] + other
    assert len(joined) == 12 and isinstance(joined[0], quelea.ResponseFuture)
    chained = executor.map(square, range(3), chunksize=3).map(square)
    assert executor.get_result(chained) == [0, 1, 16]


def test_batched_futures_pickle_and_attach_by_handle(tmp_path, storage_root):
    source = f"""
        import quelea
        def cube(x):
            return x ** 3
        cfg = {{"localdisk": {{"root": {str(storage_root)!r}}}, "execution": {{"data_cleaner": False}}}}
        with quelea.FunctionExecutor(config=cfg) as fexec:
            futures = fexec.map(cube, range(25), chunksize=10)
            fexec.get_result(futures)
            print(fexec.job_handle(futures), flush=True)
    """
    proc = run_script(tmp_path, source)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    handle = out.strip().splitlines()[-1]
    # The handle counts elements; nothing Python-specific rides along.
    fields = json.loads(handle)
    assert fields["total_calls"] == 25 and "python_bundle" not in fields
    futures = quelea.attach(handle, config={"localdisk": {"root": str(storage_root)}})
    assert len(futures) == 25
    assert quelea.get_result(futures, timeout=60) == [x**3 for x in range(25)]
    again = pickle.loads(pickle.dumps(futures[24]))
    assert again.result(timeout=60) == 24**3
    attached = quelea.attach(handle, config={"localdisk": {"root": str(storage_root)}})
    done, not_done = quelea.wait(attached, timeout=60)
    assert len(done) == 25 and not not_done and all(f.success for f in attached)
    bad = json.loads(handle)
    bad["python_bundle"] = {"size": 3, "total": 25}
    with pytest.raises(quelea.exceptions.JobHandleError, match="python_bundle"):
        quelea.attach(json.dumps(bad), config={"localdisk": {"root": str(storage_root)}})


def describe(data):
    if data[:1] == b"!":
        raise ValueError(f"bad blob of {len(data)}")
    return type(data).__name__, len(data), data[:1]


def crash_on_marker(data):
    if data[:1] == b"X":
        os._exit(9)
    return len(data)


def flaky_bytes(data):
    marker = os.path.join(os.environ["QTEST_MARKERS"], f"seen-{data[:1].hex()}")
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return len(data)


def encode(*args):
    """``_batch.encode`` with its parts joined: ``(size, inputs, raw)``."""
    size, parts, raw = _batch.encode(*args)
    return size, [blob for part, _ in parts for blob in part], raw


def test_big_bytes_arguments_travel_raw_one_per_call():
    from quelea._batch import RAW_MIN_BYTES

    blobs = [bytes([i]) * (RAW_MIN_BYTES + i) for i in range(8)]
    size, inputs, raw = encode(blobs, True, 4, True, frozenset({bytes}))
    # The caller's own objects: nothing pickled, nothing copied.
    assert (size, raw) == (1, True) and all(a is b for a, b in zip(inputs, blobs, strict=True))
    # Small bytes batch as before (pickled); one bytes element per call is raw at any size.
    assert encode([b"a"] * 8, True, 4, True, frozenset({bytes}))[::2] == (4, False)
    assert encode([b"a", b""], True, 1, False, frozenset({bytes}))[1:] == ([b"a", b""], True)
    # Anything but exactly bytes (a str among them, a subclass, bytearray) is pickled.
    for mixed in ([b"a" * RAW_MIN_BYTES, "s"], [bytearray(RAW_MIN_BYTES)]):
        types = frozenset(map(type, mixed))
        assert encode(mixed, True, 1, True, types)[2] is False


def test_raw_bytes_calls_keep_results_failures_and_order(executor):
    blobs = [bytes([65 + i]) * ((300 << 10) + i) for i in range(12)]
    blobs[5] = b"!" + blobs[5][1:]
    futures = executor.map(describe, blobs)
    assert futures._job_source()[0].chunksize == 1
    results = executor.get_result(futures, throw_except=False)
    expected = [("bytes", len(b), b[:1]) for b in blobs]
    expected[5] = None
    assert results == expected
    with pytest.raises(ValueError, match=f"bad blob of {len(blobs[5])}"):
        futures[5].result()
    # Small ones with chunksize=1, the empty one included.
    small = [b"", b"a", b"bc" * 1000]
    assert executor.get_result(executor.map(describe, small, chunksize=1)) == [
        ("bytes", 0, b""),
        ("bytes", 1, b"a"),
        ("bytes", 2000, b"b"),
    ]
    # A reducer gets every raw call's result, in order.
    sizes = executor.get_result(executor.map_reduce(len, blobs, sum))
    assert sizes == sum(len(b) for b in blobs)


def test_raw_bytes_calls_crash_and_retry_alone(fresh_executor, tmp_path):
    blobs = [bytes([65 + i]) * (300 << 10) for i in range(6)]
    blobs[2] = b"X" * (300 << 10)
    futures = fresh_executor.map(crash_on_marker, blobs)
    assert fresh_executor.get_result(futures, throw_except=False) == [
        None if i == 2 else 300 << 10 for i in range(6)
    ]
    with pytest.raises(WorkerCrashedError):
        futures[2].result()
    # extra_env: the runner's general path decodes raw inputs too.
    retried = fresh_executor.map(
        flaky_bytes,
        blobs[:2] + blobs[3:],
        extra_env={"QTEST_MARKERS": str(tmp_path)},
        retries=1,
        retry_user_errors=True,
    )
    assert fresh_executor.get_result(retried) == [300 << 10] * 5


def echo_bytes(data):
    return data


def bytes_or_output(x):
    if x == 2:
        print("said something")
    return bytes([x]) * (x * 100_000)


def test_bytes_results_come_back_as_they_are(executor, fresh_executor):
    # A bytes result travels raw (unpickled); with output, subclasses and
    # other types it is pickled as before. Every path that reads a result.
    blobs = [bytes([i]) * (i * 100_000) for i in range(5)]
    futures = executor.map(echo_bytes, blobs)
    assert executor.get_result(futures) == blobs  # the whole job at once
    assert [f.result() for f in futures] == blobs  # future by future
    assert all(type(f.result()) is bytes for f in futures)
    assert executor.get_result(futures[1:3]) == blobs[1:3]  # a selection
    # A reducer gets raw results in order; a call's printed output keeps its
    # result pickled with it.
    assert executor.get_result(executor.map_reduce(echo_bytes, blobs, lambda r: [len(b) for b in r])) == [
        len(b) for b in blobs
    ]
    mixed = fresh_executor.map(bytes_or_output, range(4), chunksize=1)
    assert fresh_executor.get_result(mixed) == [bytes([x]) * (x * 100_000) for x in range(4)]
    assert "said something" in mixed[2].logs and mixed[1].logs == ""
    # A batch's shared result is pickled as before.
    batched = executor.map(echo_bytes, [b"a", b"b"] * 100, chunksize=50)
    assert executor.get_result(batched) == [b"a", b"b"] * 100


def test_raw_bytes_results_attach_by_handle(tmp_path, storage_root):
    # Read by another process, from the job's stored results.
    source = f"""
        import quelea
        def blob(x):
            return bytes([x]) * 200_000
        cfg = {{"localdisk": {{"root": {str(storage_root)!r}}}, "execution": {{"data_cleaner": False}}}}
        with quelea.FunctionExecutor(config=cfg) as fexec:
            futures = fexec.map(blob, range(3))
            fexec.get_result(futures)
            print(fexec.job_handle(futures), flush=True)
    """
    proc = run_script(tmp_path, source)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    futures = quelea.attach(out.strip().splitlines()[-1], config={"localdisk": {"root": str(storage_root)}})
    assert quelea.get_result(futures, timeout=60) == [bytes([x]) * 200_000 for x in range(3)]
    assert futures[1].result(timeout=60) == bytes([1]) * 200_000


# -- inputs in parts: the first calls run while the rest are encoded ------------------------------


def test_inputs_are_encoded_in_growing_parts():
    """A big map's inputs come out a part at a time, in order, each part
    closing at about twice the last (from FIRST_PART_BYTES): the same bytes
    as one whole encoding would give. A small map is one part."""
    big = [[i, os.urandom(100_000)] for i in range(120)]
    for size, plain, items in ((1, True, big), (3, True, big), (1, _batch.EXPAND, [tuple(e) for e in big])):
        got, parts, raw = _batch.encode(items, plain, size, False, {list})
        parts = list(parts)
        assert (got, raw) == (size, False)
        assert [more for _, more in parts] == [True] * (len(parts) - 1) + [False]
        sizes = [sum(map(len, part)) for part, _ in parts]
        assert len(parts) >= 4 and sizes[0] >= _batch.FIRST_PART_BYTES
        for before, after in zip(sizes[:-2], sizes[1:-1], strict=True):
            assert 1.5 * before <= after <= 3 * before, sizes
        inputs = [blob for part, _ in parts for blob in part]
        batches = [items[i : i + size] for i in range(0, len(items), size)]
        assert len(inputs) == len(batches)
        for blob, batch in zip(inputs, batches, strict=True):
            value = pickle.loads(blob)
            if size == 1:
                args = tuple(batch[0]) if plain == _batch.EXPAND else (batch[0],)
                assert value == (args, {})
            else:
                assert value == (plain, batch)
    (only, more), *rest = _batch.encode(list(range(10_000)), True, 1250, True, {int})[1]
    assert not more and not rest and len(only) == 8
    # Small inputs one per call: parts of at most MAX_PART_CALLS, whose
    # bytes objects go once sent, so the client never holds one per call.
    n = _batch.MAX_PART_CALLS
    parts = list(_batch.encode(range(3 * n + 5), True, 1, False, {int})[1])
    assert [len(part) for part, _ in parts] == [n, n, n, 5]
    decoded = [pickle.loads(blob) for part, _ in parts for blob in part]
    assert decoded == [((i,), {}) for i in range(3 * n + 5)]


class _ByValue:
    """A class of this test module, which workers could not import: it travels by value."""

    def __init__(self, n):
        self.n = n


def test_big_inputs_pickle_once_and_still_send_script_classes_by_value():
    data = os.urandom(1 << 20)
    assert pickle.STACK_GLOBAL in data, "random bytes hold the opcode's byte"
    plain = _serialize.dump_input(([1, data],), {}, 0, big=True)
    assert pickle.loads(plain) == (([1, data],), {}) and b"cloudpickle" not in plain
    by_value = _serialize.dump_input(([_ByValue(3), data],), {}, 0, big=True)
    assert b"cloudpickle" in by_value and b"_ByValue" in by_value
    # Through the map's encoding: the big elements' parts hold the same.
    _, parts, _ = _batch.encode([[_ByValue(i), data] for i in range(4)], True, 1, False, {list})
    assert all(b"cloudpickle" in blob for part, _ in parts for blob in part)


def touch_then_len(x):
    if isinstance(x, list):
        with open(x[0], "w") as f:
            f.write("ran")
        return len(x[1])
    return x


class _WaitsForMarker:
    """Pickles (as its path) only once the map's first call has written the
    marker: encoding it blocks until a call of the same map has run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        deadline = time.monotonic() + 60
        while not os.path.exists(self.path):
            if time.monotonic() > deadline:
                raise AssertionError("the map's first call never ran while its last input was encoded")
            time.sleep(0.01)
        return (str, (self.path,))


def test_a_map_s_first_calls_run_while_the_rest_is_encoded(executor, tmp_path):
    marker = str(tmp_path / "first-call-ran")
    items = [[marker, bytes(2 << 20)], _WaitsForMarker(marker)]
    futures = executor.map(touch_then_len, items)
    assert executor.get_result(futures) == [2 << 20, marker]


def sleep_long(x):
    time.sleep(120)
    return x


class _Interrupts:
    def __reduce__(self):
        raise KeyboardInterrupt


@pytest.mark.parametrize(
    "bad, error", [(threading.Lock(), SerializationError), (_Interrupts(), KeyboardInterrupt)]
)
def test_an_input_that_fails_mid_map_cancels_the_calls_already_sent(fresh_executor, bad, error):
    """The first parts already run when a later element fails to encode (or
    Ctrl-C comes): the error reaches the caller, and the running calls are
    stopped (both runners would sleep two minutes)."""
    items = [[i, bytes(1 << 20)] for i in range(3)] + [bad]
    with pytest.raises(error) as raised:
        fresh_executor.map(sleep_long, items)
    if error is SerializationError:
        assert "call 3" in str(raised.value)
    # Both runners were busy with sent calls; they are free again at once.
    assert fresh_executor.get_result(fresh_executor.map(square, [1, 2]), timeout=60) == [1, 4]
