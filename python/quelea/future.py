"""Futures: ``ResponseFuture`` (one call) and ``FuturesList`` (a list of them)."""

from __future__ import annotations

import pickle

from . import _engine, _progress
from ._batch import shared_values
from .exceptions import (
    CallTimeoutError,
    CancelledError,
    RemoteError,
    RemoteKeyboardInterrupt,
    RemoteSystemExit,
    RemoteTraceback,
    WorkerCrashedError,
    WorkerMemoryError,
)

# Not `from typing import TYPE_CHECKING`: typing costs a client's start-up ~3 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .executor import FunctionExecutor

ALWAYS = 0
ANY_COMPLETED = -1
# Futures pickled by this process: a runner answers a batch whose values
# hold futures each on its own (see worker.Function.run_batch).
PICKLED = [0]

ALL_COMPLETED = 100

_NOT_LOADED = object()


def _rebuild_future(handle: str, index: int, function_name: str) -> ResponseFuture:
    """Unpickles a future (one a worker returned, say) by attaching to its job."""
    return ResponseFuture(attach_job(handle), index, None, function_name, handle=handle)


def attach_job(handle: str, overrides: str | None = None, config_file: str | None = None) -> Any:
    """The job behind a handle (``executor.job_handle``)."""
    return _engine.attach(handle, overrides, config_file)


def engine_wait(groups: list[tuple[Any, Any]], return_when: float, timeout: float | None) -> None:
    """Waits in the engine for ``(job, indices or None)`` groups (with a
    progress bar when the API call asked for one: see ``_progress``)."""
    _progress.engine_wait(groups, return_when, timeout)


def _load_result(blob: Any) -> tuple[Any, str]:
    if type(blob) is tuple:  # a raw bytes result, as it is (see the worker)
        return blob[0], ""
    if blob[:1] == b"\x01":
        result, logs = pickle.loads(memoryview(blob)[1:])
        return result, logs
    return pickle.loads(memoryview(blob)[1:]), ""


def _exception_for(error: dict, call_id: str, job_key: str) -> BaseException:
    """Re-creates a remote failure as the exception to raise here."""
    reason = error["reason"]
    message = error["message"]
    where = dict(call_id=call_id, job_key=job_key)
    if reason == "timeout":
        return CallTimeoutError(message, **where)
    if reason == "out_of_memory":
        return WorkerMemoryError(message, **where)
    if reason == "worker_crashed":
        return WorkerCrashedError(message, **where)
    if reason == "cancelled":
        return CancelledError(message, **where)
    tb = error.get("traceback") or ""
    exc: BaseException | None = None
    if error.get("payload"):
        try:
            exc = pickle.loads(error["payload"])
        except Exception:  # noqa: BLE001 - the type may not exist here
            exc = None
    if not isinstance(exc, Exception):
        exc = _remote_error(exc, error, tb, where)
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
        exc.add_note(f"(raised remotely in call {call_id} of job {job_key}; remote traceback above)")
    return exc


def _remote_error(exc: BaseException | None, error: dict, tb: str, where: dict) -> RemoteError:
    """A remote exception that cannot be re-raised as it is: its type is not
    here, or it is a ``BaseException`` (``SystemExit``, ``KeyboardInterrupt``)
    that would end or interrupt the client."""
    kind = error["error_type"]
    said = f"{kind}: {error['message']}" if error["message"] else kind
    said = f"{said} (raised remotely in call {where['call_id']} of job {where['job_key']})"
    if isinstance(exc, SystemExit) or (exc is None and kind == "SystemExit"):
        code = exc.code if exc is not None else None
        message = f"the function exited with code {code!r}: {said}"
        return RemoteSystemExit(message, code=code, error_type=kind, traceback=tb, **where)
    if isinstance(exc, KeyboardInterrupt) or (exc is None and kind == "KeyboardInterrupt"):
        message = f"the function raised KeyboardInterrupt itself, not a Ctrl-C here: {said}"
        return RemoteKeyboardInterrupt(message, error_type=kind, traceback=tb, **where)
    message = said if exc is not None else f"{kind}: {error['message']}"
    return RemoteError(message, error_type=kind, traceback=tb, **where)


class ResponseFuture:
    """The future result of one call."""

    __slots__ = (
        "_produce_output",
        "_job",
        "_index",
        "_executor",
        "_value",
        "_logs",
        "_read",
        "function_name",
        "_handle",
        "_new_futures",
    )

    def __init__(
        self,
        job: Any,
        index: int,
        executor: FunctionExecutor | None,
        function_name: str,
        handle: str | None = None,
    ):
        self._job = job
        self._index = index
        self._executor = executor
        self._value: Any = _NOT_LOADED
        self._logs = ""
        self._read = False
        self.function_name = function_name
        self._handle = handle
        self._new_futures = None
        # False for the map calls of a map_reduce: they feed the reducer, and
        # get_result() returns only the reducer's results (as in Lithops).
        self._produce_output = True

    # ids, Lithops-style
    @property
    def call_id(self) -> str:
        return f"{self._index:05d}"

    @property
    def job_id(self) -> str:
        return self._job.job_id

    @property
    def executor_id(self) -> str:
        return self._job.executor_id

    @property
    def job_key(self) -> str:
        return f"{self._job.executor_id}-{self._job.job_id}"

    # states
    def _state(self) -> str:
        return self._job.state(self._index)

    @property
    def new(self) -> bool:
        return self._state() == "new"

    @property
    def invoked(self) -> bool:
        return self._state() == "invoked"

    @property
    def running(self) -> bool:
        return self._state() == "running"

    @property
    def ready(self) -> bool:
        return self._state() in ("success", "error")

    @property
    def success(self) -> bool:
        return self._state() == "success"

    @property
    def error(self) -> bool:
        return self._state() == "error"

    @property
    def done(self) -> bool:
        return self._state() in ("success", "error")

    @property
    def futures(self) -> bool:
        """True when the call returned futures (dynamic futures)."""
        self._load()
        return self._new_futures is not None

    @property
    def stats(self) -> dict:
        return dict(self._job.stats(self._index))

    @property
    def logs(self) -> str:
        """What the call printed (stdout and stderr), once it has finished."""
        self._load()
        return self._logs

    def _load(self) -> None:
        if self._value is not _NOT_LOADED:
            return
        outcome = self._job.outcome(self._index)
        if outcome is None:
            return
        self._apply(outcome)

    def _apply(self, outcome: tuple) -> None:
        ok, data = outcome[0], outcome[1]
        if ok:
            if len(outcome) == 3:  # an element of its batch's shared result
                value, self._logs = shared_values(data)[outcome[2]], ""
            else:
                value, self._logs = _load_result(data)
            if _is_futures(value):
                self._new_futures = value
            self._value = (True, value)
        else:
            self._value = (False, _exception_for(data, self.call_id, self.job_key))

    def status(self, throw_except: bool = True, timeout: float | None = None) -> dict:
        """Waits for the call and returns its status: state and stats."""
        engine_wait([(self._job, [self._index])], float(ALL_COMPLETED), timeout)
        self._load()
        if throw_except and self._value is not _NOT_LOADED and not self._value[0]:
            raise self._value[1]
        return {"state": self._state(), "call_id": self.call_id, "job_key": self.job_key, **self.stats}

    def result(self, throw_except: bool = True, timeout: float | None = None) -> Any:
        """Waits for the call and returns its result (or raises its exception)."""
        engine_wait([(self._job, [self._index])], float(ALL_COMPLETED), timeout)
        self._load()
        ok, value = self._value
        if not ok:
            if throw_except:
                raise value
            return None
        if self._new_futures is not None:
            return _resolve(value, timeout)
        return value

    def __reduce__(self):
        PICKLED[0] += 1
        handle = self._handle
        if handle is None:
            if self._executor is None:
                raise pickle.PicklingError("this future cannot be pickled: it has no job handle")
            handle = self._executor._engine_executor().job_handle(self._job)
        return (_rebuild_future, (handle, self._index, self.function_name))

    def __repr__(self) -> str:
        return f"<ResponseFuture {self.job_key}/{self.call_id} {self._state()}>"


def _is_futures(value: Any) -> bool:
    if isinstance(value, ResponseFuture):
        return True
    return isinstance(value, list) and bool(value) and all(isinstance(v, ResponseFuture) for v in value)


def _resolve(value: Any, timeout: float | None) -> Any:
    if isinstance(value, ResponseFuture):
        return value.result(timeout=timeout)
    return [f.result(timeout=timeout) for f in value]


class FuturesList(list):
    """A list of futures, with chaining: ``futures.map(g)`` maps ``g`` over
    their results (a tuple result becomes positional arguments).

    The list ``map`` returns is filled on first use: creating ten thousand
    futures costs more than running ten thousand batched no-op calls, and
    ``get_result`` does not need them (see :meth:`_job_source`).
    """

    def __init__(self, futures=(), executor: FunctionExecutor | None = None):
        super().__init__(futures)
        self.executor = executor
        # (job, function name, read) until the futures are made.
        self._lazy: list | None = None

    @classmethod
    def _of_job(cls, job: Any, function_name: str, executor: FunctionExecutor | None) -> FuturesList:
        futures = cls((), executor)
        futures._lazy = [job, function_name, False]
        return futures

    def _job_source(self) -> list | None:
        """``[job, function name, read]`` while no future has been made."""
        return self._lazy

    def _materialize(self) -> None:
        lazy = self._lazy
        if lazy is None:
            return
        self._lazy = None
        job, name, read = lazy
        made = [ResponseFuture(job, i, self.executor, name) for i in range(job.total)]
        if read:
            for f in made:
                f._read = True
        list.extend(self, made)

    def __len__(self) -> int:
        lazy = self._lazy
        return lazy[0].total if lazy is not None else list.__len__(self)

    def __reduce__(self):
        # The executor stays behind: the futures re-attach through their handles.
        return (FuturesList, (list(self),))

    def _executor_or_new(self) -> FunctionExecutor:
        if self.executor is None:
            from .executor import FunctionExecutor

            self.executor = FunctionExecutor()
        return self.executor

    def map(self, map_function, sync: bool = False, **kwargs) -> FuturesList:
        return self._executor_or_new().map(map_function, self, **kwargs)

    def map_reduce(self, map_function, reduce_function, sync: bool = False, **kwargs):
        return self._executor_or_new().map_reduce(map_function, self, reduce_function, **kwargs)

    def wait(self, **kwargs):
        from ._wait import wait

        return wait(self, **kwargs)

    def get_result(self, **kwargs):
        from ._wait import get_result

        return get_result(self, **kwargs)


def _materializing(name: str):
    method = getattr(list, name)

    def wrapper(self, *args, **kwargs):
        self._materialize()
        # C code reads another list's storage directly (`a + b`,
        # `a.extend(b)`): an unmade list of futures must be made first, or
        # its futures would be silently left out.
        for arg in args:
            if isinstance(arg, FuturesList):
                arg._materialize()
        return method(self, *args, **kwargs)

    wrapper.__name__ = name
    wrapper.__doc__ = method.__doc__
    return wrapper


# Every list operation sees the futures (C code reading a list subclass's
# storage directly does so only for exact lists, or through these).
for _name in (
    "__iter__", "__getitem__", "__setitem__", "__delitem__", "__contains__", "__reversed__",
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__add__", "__iadd__",
    "__mul__", "__rmul__", "__imul__", "__repr__", "append", "extend", "insert", "pop",
    "remove", "index", "count", "sort", "reverse", "copy", "clear",
):  # fmt: skip
    setattr(FuturesList, _name, _materializing(_name))


def _radd(self, other):
    self._materialize()
    return list(other) + list.copy(self)


FuturesList.__radd__ = _radd
FuturesList.__hash__ = None  # type: ignore[assignment]
