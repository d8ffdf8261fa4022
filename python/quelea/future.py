"""Futures: ``ResponseFuture`` (one call) and ``FuturesList`` (a list of them)."""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

from . import _engine
from .exceptions import (
    CallTimeoutError,
    CancelledError,
    RemoteError,
    RemoteTraceback,
    WorkerCrashedError,
    WorkerMemoryError,
)

if TYPE_CHECKING:
    from .executor import FunctionExecutor

ALWAYS = 0
ANY_COMPLETED = -1
ALL_COMPLETED = 100

_NOT_LOADED = object()


def _rebuild_future(handle: str, index: int, function_name: str) -> ResponseFuture:
    """Unpickles a future (one a worker returned, say) by attaching to its job."""
    job = _engine.attach(handle)
    return ResponseFuture(job, index, None, function_name, handle=handle)


def _load_result(blob: bytes) -> tuple[Any, str]:
    if blob[:1] == b"\x01":
        result, logs = pickle.loads(blob[1:])
        return result, logs
    return pickle.loads(blob[1:]), ""


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
    if not isinstance(exc, BaseException):
        exc = RemoteError(
            f"{error['error_type']}: {message}", error_type=error["error_type"], traceback=tb, **where
        )
    if tb:
        exc.__cause__ = RemoteTraceback(tb)
        exc.add_note(f"(raised remotely in call {call_id} of job {job_key}; remote traceback above)")
    return exc


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
        ok, data = outcome
        if ok:
            value, self._logs = _load_result(data)
            if _is_futures(value):
                self._new_futures = value
            self._value = (True, value)
        else:
            self._value = (False, _exception_for(data, self.call_id, self.job_key))

    def status(self, throw_except: bool = True, timeout: float | None = None) -> dict:
        """Waits for the call and returns its status: state and stats."""
        _engine.wait([(self._job, [self._index])], ALL_COMPLETED, timeout)
        self._load()
        if throw_except and self._value is not _NOT_LOADED and not self._value[0]:
            raise self._value[1]
        return {"state": self._state(), "call_id": self.call_id, "job_key": self.job_key, **self.stats}

    def result(self, throw_except: bool = True, timeout: float | None = None) -> Any:
        """Waits for the call and returns its result (or raises its exception)."""
        _engine.wait([(self._job, [self._index])], ALL_COMPLETED, timeout)
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
    their results (a tuple result becomes positional arguments)."""

    def __init__(self, futures=(), executor: FunctionExecutor | None = None):
        super().__init__(futures)
        self.executor = executor

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
        from .wait import wait

        return wait(self, **kwargs)

    def get_result(self, **kwargs):
        from .wait import get_result

        return get_result(self, **kwargs)
