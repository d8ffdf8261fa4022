"""``quelea.multiprocessing.Pool`` against the standard library's
``multiprocessing.Pool``: the same calls give the same results, errors,
order and callbacks (each expected value is computed by the stdlib pool)."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time

import pytest

from quelea.multiprocessing import Pool, TimeoutError


def square(x):
    return x * x


def add(a, b):
    return a + b


def ident(x):
    return x


def fails_on_three(x):
    if x == 3:
        raise ValueError(f"bad {x}")
    return x


def slow(x):
    time.sleep(x)
    return x


def wait_for(path):
    if path is None:
        return "fast"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return "released"
        time.sleep(0.01)
    return "never released"


def uses_reserved_names(id, storage=None):
    return (id, storage)


_STATE = {}


def remember(value):
    _STATE["init"] = value


def read_init(_):
    return _STATE.get("init")


@pytest.fixture
def pools(config):
    with Pool(2, config=config) as ours, multiprocessing.get_context("fork").Pool(2) as theirs:
        yield ours, theirs


def test_map_starmap_apply_match_the_stdlib(pools):
    ours, theirs = pools
    items = [1, (2, 3), {"a": 1}, [4], "s", None]
    assert ours.map(ident, items) == theirs.map(ident, items)
    assert ours.map(square, range(20), chunksize=3) == theirs.map(square, range(20), chunksize=3)
    pairs = [(1, 2), [3, 4], (5, 6)]
    assert ours.starmap(add, pairs) == theirs.starmap(add, pairs) == [3, 7, 11]
    assert ours.apply(add, (1, 2)) == theirs.apply(add, (1, 2)) == 3
    assert ours.apply(add, (), {"a": 1, "b": 5}) == 6
    # The stdlib calls tasks plainly: names quelea reserves are ordinary parameters.
    assert ours.map(uses_reserved_names, [7]) == theirs.map(uses_reserved_names, [7]) == [(7, None)]
    assert ours.map(square, []) == theirs.map(square, []) == []


def test_imap_orders_and_imap_unordered_does_not_wait_for_order(pools, tmp_path):
    ours, theirs = pools
    assert list(ours.imap(square, range(6))) == list(theirs.imap(square, range(6)))
    # The first task finishes only once the test has had the second's result:
    # imap_unordered must hand that over without waiting for the first.
    marker = tmp_path / "go"
    it = ours.imap_unordered(wait_for, [str(marker), None])
    assert next(it) == "fast"
    marker.touch()
    assert next(it) == "released"
    assert list(it) == []


def test_async_results(pools):
    ours, theirs = pools
    r, s = ours.map_async(square, range(4)), theirs.map_async(square, range(4))
    assert r.get(timeout=30) == s.get(timeout=30)
    assert r.ready() and r.successful()
    a = ours.apply_async(slow, (1.0,))
    assert not a.ready()
    with pytest.raises(ValueError, match="not ready"):
        a.successful()
    with pytest.raises(TimeoutError):
        a.get(timeout=0.05)
    a.wait()
    assert a.get() == 1.0


def test_errors_and_callbacks(pools):
    ours, theirs = pools
    with pytest.raises(ValueError, match="bad 3"):
        theirs.map(fails_on_three, range(5))
    with pytest.raises(ValueError, match="bad 3"):
        ours.map(fails_on_three, range(5))
    r = ours.map_async(fails_on_three, range(5))
    r.wait()
    assert r.ready() and not r.successful()
    got, errors, done = [], [], threading.Event()
    ours.map_async(square, [2, 3], callback=lambda v: (got.append(v), done.set()))
    assert done.wait(30) and got == [[4, 9]]
    done.clear()
    ours.apply_async(fails_on_three, (3,), error_callback=lambda e: (errors.append(e), done.set()))
    assert done.wait(30) and isinstance(errors[0], ValueError) and str(errors[0]) == "bad 3"


def test_initializer_runs_in_the_runners(config):
    with Pool(1, initializer=remember, initargs=("ready",), config=config) as pool:
        assert pool.map(read_init, range(3)) == ["ready"] * 3


def test_close_join_terminate(config):
    pool = Pool(2, config=config)
    r = pool.map_async(slow, [0.2, 0.2])
    with pytest.raises(ValueError, match="still running"):
        pool.join()
    pool.close()
    with pytest.raises(ValueError, match="Pool not running"):
        pool.map(square, [1])
    pool.join()
    assert r.ready() and r.get() == [0.2, 0.2]
    pool = Pool(2, config=config)
    r = pool.map_async(slow, [30, 30])
    started = time.monotonic()
    pool.terminate()
    with pytest.raises(Exception):  # noqa: B017 - cancelled, as the stdlib's pool loses them
        r.get(timeout=10)
    assert time.monotonic() - started < 10
    with pytest.raises(ValueError, match="Pool not running"):
        pool.apply(square, (1,))
