"""Module-level ``wait`` and ``get_result``: work on futures of any executor."""

from __future__ import annotations

import pickle
import time
from collections.abc import Iterable

from . import _progress
from ._batch import shared_values
from .future import ALL_COMPLETED, ALWAYS, ANY_COMPLETED, FuturesList, ResponseFuture, engine_wait

# Not `from typing import Any`: typing costs a client's start-up ~3 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


__all__ = ["wait", "get_result", "ALWAYS", "ANY_COMPLETED", "ALL_COMPLETED"]


def _as_list(fs: ResponseFuture | Iterable[ResponseFuture]) -> list[ResponseFuture]:
    if isinstance(fs, ResponseFuture):
        return [fs]
    futures = list(fs)
    for i, f in enumerate(futures):
        if not isinstance(f, ResponseFuture):
            raise TypeError(f"fs[{i}] is a {type(f).__name__}, not a ResponseFuture")
    return futures


def _lazy_job(fs: Any) -> Any:
    """The job of a FuturesList whose futures were never made, else None."""
    if isinstance(fs, FuturesList):
        lazy = fs._job_source()
        if lazy is not None:
            return lazy[0]
    return None


def _group(futures: list[ResponseFuture]) -> list[tuple[Any, list[int] | None]]:
    groups: dict[int, tuple[Any, list[int]]] = {}
    for f in futures:
        groups.setdefault(id(f._job), (f._job, []))[1].append(f._index)
    return [(job, None if len(idx) == job.total else idx) for job, idx in groups.values()]


def cancel_on_interrupt(futures: list[ResponseFuture]) -> None:
    """Ctrl-C while waiting cancels the jobs waited on, wherever it lands."""
    seen = set()
    for f in futures:
        if id(f._job) not in seen:
            seen.add(id(f._job))
            f._job.cancel()


def _check_return_when(return_when: int) -> float:
    if isinstance(return_when, bool) or not isinstance(return_when, int | float):
        raise TypeError(
            f"return_when must be ALWAYS, ANY_COMPLETED, ALL_COMPLETED or a percentage, got {return_when!r}"
        )
    if return_when != ANY_COMPLETED and not 0 <= return_when <= 100:
        raise ValueError(
            f"return_when must be ALWAYS, ANY_COMPLETED, ALL_COMPLETED or 0-100, got {return_when}"
        )
    return float(return_when)


@_progress.option
def wait(
    fs,
    throw_except: bool = True,
    return_when: int = ALL_COMPLETED,
    download_results: bool = False,
    timeout: float | None = None,
    threadpool_size: int = 64,
    wait_dur_sec: float | None = None,
    show_progressbar: bool = True,
) -> tuple[FuturesList, FuturesList]:
    """Waits on futures; returns ``(done, not_done)``. With ``throw_except``, a
    failed call's exception is raised once the wait is over."""
    executor = getattr(fs, "executor", None)
    job = _lazy_job(fs)
    if job is not None:
        # A whole map's list whose futures were never made: wait on the job,
        # and when all of it is done, the list is the done list as it is.
        try:
            engine_wait([(job, None)], _check_return_when(return_when), timeout)
        except KeyboardInterrupt:
            job.cancel()
            raise
        if job.done_count() == job.total and not (throw_except and job.summary()["error"]):
            return fs, FuturesList([], executor)
    futures = _as_list(fs)
    if futures:
        try:
            engine_wait(_group(futures), _check_return_when(return_when), timeout)
        except KeyboardInterrupt:
            cancel_on_interrupt(futures)
            raise
    # One look at each future: a call finishing between two passes would
    # otherwise land in neither list.
    finished = [f.done for f in futures]
    done = FuturesList([f for f, d in zip(futures, finished, strict=True) if d], executor)
    not_done = FuturesList([f for f, d in zip(futures, finished, strict=True) if not d], executor)
    if throw_except:
        for f in done:
            if f.error:
                f._load()
                raise f._value[1]
    return done, not_done


@_progress.option
def get_result(
    fs,
    throw_except: bool = True,
    timeout: float | None = None,
    threadpool_size: int = 64,
    wait_dur_sec: float | None = None,
    show_progressbar: bool = True,
) -> list:
    """Waits for every call and returns the results in call order."""
    job = _lazy_job(fs)
    if job is not None:
        results = lazy_results([fs], timeout)
        if results is not None:
            return results
    futures = _as_list(fs)
    try:
        if futures:
            engine_wait(_group(futures), float(ALL_COMPLETED), timeout)
        return collect_results([f for f in futures if f._produce_output], throw_except, timeout)
    except KeyboardInterrupt:
        cancel_on_interrupt(futures)
        raise


def lazy_results(lists: list[FuturesList], timeout: float | None) -> list | None:
    """The results of whole map jobs whose futures were never made, when
    every call succeeded quietly with a plain value; else None (the caller
    takes the path through futures). Marks them read."""
    jobs = [fs._job_source()[0] for fs in lists]
    try:
        if len(jobs) == 1:
            results = _values_as_they_come(jobs[0], timeout)
        else:
            engine_wait([(job, None) for job in jobs], float(ALL_COMPLETED), timeout)
            results = []
            for job in jobs:
                values = _job_values(job)
                if values is None:
                    return None
                results.extend(values)
    except KeyboardInterrupt:
        for job in jobs:
            job.cancel()
        raise
    if results is None:
        return None
    for fs in lists:
        fs._job_source()[2] = True
    return results


# Results are decoded while the job runs, in this many steps, once its first
# step holds more than _BIG_RESULTS bytes: the client's decoding then overlaps
# the runners' work (big results), and small ones are decoded at once. Jobs
# of more calls than _STEPPED_UP_TO (whose values are small, or batched) are
# decoded at once without looking.
_STEPS = 8
_BIG_RESULTS = 1 << 20
_STEPPED_UP_TO = 4096


def _values_as_they_come(job: Any, timeout: float | None) -> list | None:
    """A job's values in call order, decoded a step at a time as its calls
    finish in order while they are big; None as ``_job_values``."""
    total = job.total
    step = max(1, -(-total // _STEPS))
    if step == total or total > _STEPPED_UP_TO or _progress._SHOW.get():
        # (A progress bar counts the whole job.)
        engine_wait([(job, None)], float(ALL_COMPLETED), timeout)
        return _job_values(job)
    deadline = None if timeout is None else time.monotonic() + timeout
    first = list(range(step))
    engine_wait([(job, first)], float(ALL_COMPLETED), timeout)
    runs = job.result_runs(first)
    if runs is None or sum(len(r) if type(r) is not tuple else 0 for r in runs) < _BIG_RESULTS:
        # Small results (or a failure: the caller's path through futures
        # reports it): all at once.
        engine_wait([(job, None)], float(ALL_COMPLETED), _left(deadline))
        return _job_values(job)
    results = _decode_runs(runs)
    done = step
    while results is not None and done < total:
        part = list(range(done, min(total, done + step)))
        engine_wait([(job, part)], float(ALL_COMPLETED), _left(deadline))
        values = _decode_runs(job.result_runs(part))
        if values is None:
            return None
        results.extend(values)
        done += len(part)
    return results


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _job_values(job: Any) -> list | None:
    # A batch's shared values never hold futures (the runner answers such
    # a batch each on its own), and each own result is checked as decoded.
    return _decode_runs(job.result_runs(None))


def collect_results(futures: list[ResponseFuture], throw_except: bool, timeout: float | None) -> list:
    """Results of finished futures in order; futures a call returned are
    resolved in its place (flattened, as Lithops does)."""
    fast = _collect_fast(futures)
    if fast is not None:
        return fast
    by_job: dict[int, list[ResponseFuture]] = {}
    for f in futures:
        if f._value is _not_loaded():
            by_job.setdefault(id(f._job), []).append(f)
    for group in by_job.values():
        outcomes = group[0]._job.outcomes([f._index for f in group])
        for f, outcome in zip(group, outcomes, strict=True):
            if outcome is not None:
                f._apply(outcome)
    results = []
    for f in futures:
        f._read = True
        ok, value = f._value
        if not ok:
            if throw_except:
                raise value
            results.append(None)
        elif isinstance(f._new_futures, ResponseFuture):
            results.append(value.result(throw_except=throw_except, timeout=timeout))
        elif f._new_futures is not None:
            results.extend(get_result(value, throw_except=throw_except, timeout=timeout))
        else:
            results.append(value)
    return results


def _collect_fast(futures: list[ResponseFuture]) -> list | None:
    """Every call succeeded and printed nothing, and no result is futures:
    decode the pickles in one pass, without per-future bookkeeping."""
    if not futures:
        return []
    job = futures[0]._job
    for f in futures:
        if f._job is not job:
            return None
    indices = [f._index for f in futures]
    if indices != sorted(set(indices)):
        return None  # reordered or repeated: the per-future path keeps their order
    if len(indices) == job.total:
        indices = None
    results = _decode_runs(job.result_runs(indices))
    if results is None:
        return None
    for f in futures:
        f._read = True
    return results


def _is_future_value(value: Any) -> bool:
    return isinstance(value, ResponseFuture) or (
        isinstance(value, list) and bool(value) and isinstance(value[0], ResponseFuture)
    )


def _decode_runs(runs: list | None) -> list | None:
    """Results that carry no logs and are not futures, else None. ``runs``
    are a job's results as ``result_runs`` gives them: own result bytes,
    ``(value,)`` for a raw bytes result, or ``(shared bytes, lo, hi)`` for
    elements of a batch's shared result."""
    if runs is None:
        return None
    loads = pickle.loads
    results: list = []
    append = results.append
    for run in runs:
        if type(run) is tuple:
            if len(run) == 1:  # a raw bytes result, as it is (see the worker)
                append(run[0])
                continue
            blob, lo, hi = run
            values = shared_values(blob)
            results.extend(values if lo == 0 and hi == len(values) else values[lo:hi])
            continue
        if run[0] != 0:
            return None
        value = loads(memoryview(run)[1:])
        if _is_future_value(value):
            return None
        append(value)
    return results


def _not_loaded():
    from .future import _NOT_LOADED

    return _NOT_LOADED
