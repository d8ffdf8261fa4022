"""A warm Python runner: ``python -m quelea.worker``.

Started by the engine's local pool (or the HTTP/Lambda runtimes). It speaks
the runner pipe protocol of ``quelea_worker::runner_protocol`` on the two
descriptors the pool names in ``QUELEA_RUNNER_FDS`` (never 0/1/2: stdin is
``/dev/null`` and fds 1/2 are the user's): frames of ``u32 length | u8 tag |
body``. It answers every call in order and flushes each answer at once, so
the runtime always knows which call is running. A call may be a batch of
several map elements (see ``runner_protocol``): each element gets its own
outcome, and when all of them succeed quietly the answer is one pickle of all
their values.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import resource
import signal
import struct
import sys
from collections.abc import Iterator

# Not `from typing import Any`: typing costs a client's start-up ~3 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


VERSION = 2
_HEADER = struct.Struct("<IB")
_U32 = struct.Struct("<I")
# function id, first element, elements, the one element to run (or _ALL).
_CALL = struct.Struct("<IIII")
_ALL = 0xFFFFFFFF
# length, tag "D", call_id, kind, peak RSS bytes; the payload follows.
# Kinds: 0 ok, 1 error, 2 a batch's shared values, 3 each element's entry.
_DONE_HEAD = struct.Struct("<IBIBQ")
_ENTRY = struct.Struct("<BI")
_BATCH_MAGIC = b"QBAT"
# A result's tag: 0 pickled, 1 pickled with the call's output, 3 a bytes
# value as it is (the engine's binding cuts the tag: RAW_BYTES_RESULT).
_RAW_RESULT = b"\x03"
_EXPAND = "expand"  # quelea._batch.EXPAND, without importing it for every runner
_EXPANDED = (dict, tuple)  # elements that are arguments, not one argument


def _pickled_futures() -> int:
    """How many futures this process has pickled (none if it never loaded them)."""
    future = sys.modules.get("quelea.future")
    return future.PICKLED[0] if future is not None else 0


in_worker = False


def _keep_freed_memory() -> None:
    from ._engine import runner_keeps_freed_memory

    runner_keeps_freed_memory()


def _die_with_parent() -> None:
    try:
        from ._engine import arm_runner_client_death
    except ImportError:  # an extension without it: the runner alone dies with its client
        arm_runner_client_death = None
    if arm_runner_client_death is not None:
        # Native: dies with the client and takes its process group along,
        # and exits (code 3) if the client is already gone.
        arm_runner_client_death()
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, 9)
    except (OSError, AttributeError):
        pass
    parent = os.environ.get("QUELEA_RUNNER_PARENT")
    if parent and os.getppid() != int(parent):
        os._exit(3)


def _protocol_fds() -> tuple[int, int]:
    """The descriptors the pool passed for the protocol: calls in, answers out."""
    value = os.environ.get("QUELEA_RUNNER_FDS", "")
    try:
        calls, answers = (int(part) for part in value.split(","))
    except ValueError:
        calls = answers = -1
    if calls <= 2 or answers <= 2 or calls == answers:
        sys.stderr.write(
            f"quelea worker: QUELEA_RUNNER_FDS={value!r} is not two descriptors above 2 like '3,4'"
            " (runners are started by quelea's pool)\n"
        )
        raise SystemExit(2)
    return calls, answers


def _detach_protocol_in_child(fds: tuple[int, int]) -> None:
    """In a child forked by a call: point the protocol descriptors at /dev/null.

    The child must never read calls or write answers; they are not closed, so
    their numbers are not reused under the file objects of the serve loop.
    """
    null = os.open(os.devnull, os.O_RDWR)
    for fd in fds:
        os.dup2(null, fd, inheritable=False)
    os.close(null)


def _end_own_group() -> None:
    """End this runner's process group (itself included), if it leads one."""
    if os.getpgrp() == os.getpid():
        os.killpg(0, signal.SIGKILL)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Current:
    """The call running now and how its output is shown (see ``_Tee``)."""

    __slots__ = ("call_id", "output", "exact", "fast")

    def __init__(self) -> None:
        self.call_id = 0
        # False while a batch's hot loop runs elements without saying which.
        self.exact = True
        # While a batch's fastest loop runs (``values.extend(map(func, it))``):
        # ``(values, it, first)``. The element running is ``len(values)``;
        # the first output stops the loop after that element (see ``_Tee``).
        self.fast: tuple[list, Any, int] | None = None
        # "lines": whole lines on the terminal; "prefixed": each line led by
        # the call id (a job of several calls); "logs": only in the call's logs.
        self.output = "lines"


_CURRENT = _Current()


def _stop_fast_loop() -> None:
    """Output during a batch's fastest loop: names the element that writes
    (the one running, ``len(values)``), so its output is shown and kept as
    its own, and ends the loop once that element returns (its iterator is
    set to the end; ``map`` then stops)."""
    values, it, first = _CURRENT.fast
    _CURRENT.fast = None
    _CURRENT.call_id, _CURRENT.exact = first + len(values), True
    it.__setstate__(sys.maxsize)  # clamped to the end


class _Tee(io.TextIOBase):
    """Keeps a call's output for its logs and passes it on to the real stream
    as whole lines, one write each, so that the runners sharing a terminal
    never cut into each other's lines; a line not finished when the call
    ends is finished then."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.parts: list[str] = []
        self._pending = ""
        self._held: list[str] = []

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        if _CURRENT.fast is not None:
            _stop_fast_loop()
        self.parts.append(text)
        if _CURRENT.output != "logs":
            pending = self._pending + text
            cut = pending.rfind("\n") + 1
            self._pending = pending[cut:]
            if cut:
                if _CURRENT.output == "prefixed" and not _CURRENT.exact:
                    self._held.append(pending[:cut])
                else:
                    self._emit(pending[:cut])
        return len(text)

    def _emit(self, lines: str) -> None:
        if _CURRENT.output == "prefixed":
            prefix = f"[{_CURRENT.call_id:05d}] "
            lines = "".join(prefix + line for line in lines.splitlines(keepends=True))
        data = lines.encode(getattr(self.stream, "encoding", None) or "utf-8", "replace")
        try:
            fd = self.stream.fileno()
        except (OSError, ValueError, AttributeError):
            fd = None
        try:
            if fd is None:
                self.stream.write(lines)
                self.stream.flush()
                return
            while data:
                data = data[os.write(fd, data) :]
        except (OSError, ValueError):  # a call closed fd 1 or 2: its output is still captured
            pass

    def flush(self) -> None:
        pass  # whole lines are written at once; a partial one waits for its end

    def finish_line(self) -> None:
        """Writes what is held and finishes a partial line (a call's end)."""
        lines = "".join(self._held)
        self._held.clear()
        if self._pending:
            lines += self._pending + "\n"
            self._pending = ""
        if lines:
            self._emit(lines)

    def take(self) -> str:
        self.finish_line()
        text = "".join(self.parts)
        self.parts.clear()
        return text


class _Function:
    """A loaded function and what it needs per call."""

    def __init__(self, payload: bytes):
        self.payload = pickle.loads(payload)
        self.func = self.payload.func
        self.reserved = self.payload.reserved
        self.output = getattr(self.payload, "output", "lines")
        self.sig = None
        if self.reserved:
            import inspect

            self.sig = inspect.signature(self.func)
        self._storage = None
        plain = not self.reserved and not self.payload.extra_env and self.payload.reduce_extra_args is None
        # A raw job's input is each call's one bytes argument itself (see _batch.encode).
        self.decode = _raw_input if getattr(self.payload, "raw_input", False) else pickle.loads
        if not plain:
            self.run = self._run_general
        elif self.decode is _raw_input:
            self.run = self._run_raw
        else:
            self.run = self._run_plain

    def storage(self) -> Any:
        if self._storage is None:
            from .storage import Storage

            self._storage = Storage(config=json.loads(os.environ.get("QUELEA_RUNNER_CONFIG") or "null"))
        return self._storage

    def client(self, name: str) -> Any:
        """The ready client of a reserved parameter, made once per function
        (a closed broker connection is opened again)."""
        clients = self.__dict__.setdefault("_clients", {})
        client = clients.get(name)
        if client is None or getattr(client, "is_closed", False):
            from . import _clients

            client = clients[name] = _clients.make(name)
        return client

    def _run_plain(self, call_id: int, data: Any) -> Any:
        args, kwargs = pickle.loads(data)
        return self.func(*args, **kwargs)

    def _run_raw(self, call_id: int, data: Any) -> Any:
        return self.func(bytes(data))

    def _run_general(self, call_id: int, data: Any) -> Any:
        if self.payload.reduce_extra_args is not None and bytes(data[:4]) == b"QRED":
            args, kwargs = _decode_reduce_input(bytes(data))
        else:
            args, kwargs = self.decode(data)
        with _extra_env(self.payload.extra_env):
            return self.call(call_id, args, kwargs)

    def call(self, call_id: int, args: tuple, kwargs: dict) -> Any:
        if self.payload.reduce_extra_args is not None:
            args = tuple(args) + tuple(self.payload.reduce_extra_args)
        if not self.reserved:
            return self.func(*args, **kwargs)
        values = {}
        if "id" in self.reserved:
            values["id"] = call_id
        if "storage" in self.reserved:
            values["storage"] = self.storage()
        for name in ("ibm_cos", "rabbitmq"):
            if name in self.reserved:
                values[name] = self.client(name)
        return _call_with_reserved(self.func, self.sig, args, kwargs, values)

    def batch_items(self, data: Any) -> tuple[bool, list, bool]:
        """A batch input's elements: ``(plain, items, framed)``. The Python
        front end pickles ``(plain, items)`` (a plain item is the single
        argument, a general one ``(args, kwargs)``); the engine's own framing
        (``QBAT``) carries each element's input as a single call would."""
        if bytes(data[:4]) == _BATCH_MAGIC:
            (count,) = _U32.unpack_from(data, 4)
            pos, items = 8, []
            for _ in range(count):
                (length,) = _U32.unpack_from(data, pos)
                items.append(data[pos + 4 : pos + 4 + length])
                pos += 4 + length
            return False, items, True
        plain, items = pickle.loads(data)
        return plain, items, False

    def run_element(self, call_id: int, plain: Any, framed: bool, item: Any) -> Any:
        if framed:
            return self.run(call_id, item)
        if plain is True:
            return self.call(call_id, (item,), {})
        if plain == _EXPAND:
            from ._batch import element_args

            return self.call(call_id, *element_args(item, None, call_id))
        return self.call(call_id, item[0], item[1])

    def run_batch(self, first: int, data: Any, out: _Tee, err: _Tee) -> tuple[int, bytes]:
        """Runs every element of a batch, each failure its own: ``(kind,
        payload)``, kind 2 with all values pickled at once when every element
        succeeded quietly, else 3 with each element's entry."""
        plain, items, framed = self.batch_items(data)
        run = self.run_element
        simple = (
            (plain is True or plain == _EXPAND)
            and not framed
            and not self.reserved
            and self.payload.reduce_extra_args is None
        )
        values: list[Any] = []
        entries: list[tuple[bool, bytes]] | None = None
        with _extra_env(self.payload.extra_env):
            current = _CURRENT
            # The hot loop does not say which element runs: prefixed lines
            # wait for the element's end, when `current.call_id` is set.
            current.exact = False
            start, ended = 0, None
            if simple:
                if plain is True:
                    start, ended = self._run_fast_batch(first, items, values)
                else:
                    start, ended = self._run_plain_batch(items, values, out, err)
            for k in range(start, len(items)):
                if ended is not None:
                    # The element the hot loop stopped at, already run.
                    (failed, value), ended = ended, None
                else:
                    current.call_id, current.exact = first + k, True
                    try:
                        failed, value = False, run(first + k, plain, framed, items[k])
                    except BaseException as exc:  # noqa: BLE001 - reported as this element's error
                        failed, value = True, exc
                current.call_id = first + k
                if failed:
                    if entries is None:
                        entries = self._entries(first, values)
                    out.take()
                    err.take()
                    entries.append((False, _error_report(value, self.payload.sources)))
                    continue
                if entries is None and not (out.parts or err.parts):
                    values.append(value)
                    continue
                if entries is None:
                    entries = self._entries(first, values)
                logs = out.take() + err.take()
                entries.append(self._entry(first + k, value, logs))
        if entries is None:
            # Values that are futures (a call that returned another map's) are
            # answered each on its own, so the client chains on them without
            # scanning every shared value: their pickling counts itself.
            futures_before = _pickled_futures()
            try:
                blob = pickle.dumps(values, protocol=5)
                if _pickled_futures() == futures_before:
                    return 2, b"\x02" + blob
            except Exception:  # noqa: BLE001 - find the element that does not pickle
                pass
            entries = self._entries(first, values)
        parts = [_U32.pack(len(entries))]
        for ok, blob in entries:
            parts.append(_ENTRY.pack(0 if ok else 1, len(blob)))
            parts.append(blob)
        return 3, b"".join(parts)

    def _run_fast_batch(
        self, first: int, items: list | range, values: list
    ) -> tuple[int, tuple[bool, Any] | None]:
        """The hot loop of a batch whose elements are each the single
        argument, at C speed: runs elements while they succeed quietly,
        appending their values; the first output ends it after the element
        that wrote (see ``_stop_fast_loop``). Returns, as
        ``_run_plain_batch`` does, where it stopped and that element's
        ``(failed, value or exception)``."""
        it = iter(items)
        _CURRENT.fast = (values, it, first)
        try:
            values.extend(map(self.func, it))
        except BaseException as exc:  # noqa: BLE001 - reported as this element's error
            return len(values), (True, exc)
        finally:
            stopped = _CURRENT.fast is None
            _CURRENT.fast = None
        if stopped:
            return len(values) - 1, (False, values.pop())
        return len(values), None

    def _run_plain_batch(
        self, items: list, values: list, out: _Tee, err: _Tee
    ) -> tuple[int, tuple[bool, Any] | None]:
        """The hot loop of a batch of map elements as given: runs elements
        while each is one plain argument that succeeds quietly, appending
        their values. Returns where it stopped and, if it ran that element,
        its ``(failed, value or exception)`` (its output is still in the
        tees)."""
        func, append = self.func, values.append
        out_parts, err_parts = out.parts, err.parts
        for k, item in enumerate(items):
            if isinstance(item, _EXPANDED):
                return k, None
            try:
                value = func(item)
            except BaseException as exc:  # noqa: BLE001 - reported as this element's error
                return k, (True, exc)
            if out_parts or err_parts:
                return k, (False, value)
            append(value)
        return len(items), None

    def run_selected(self, first: int, select: int, data: Any) -> Any:
        """Runs only element ``select`` of a batch (its re-run on its own)."""
        plain, items, framed = self.batch_items(data)
        with _extra_env(self.payload.extra_env):
            return self.run_element(first + select, plain, framed, items[select])

    def _entries(self, first: int, values: list) -> list[tuple[bool, bytes]]:
        return [self._entry(first + k, value, "") for k, value in enumerate(values)]

    def _entry(self, index: int, value: Any, logs: str) -> tuple[bool, bytes]:
        from ._serialize import dumps_value

        try:
            if logs:
                return True, b"\x01" + dumps_value((value, logs))
            return True, b"\x00" + dumps_value(value)
        except Exception as e:  # noqa: BLE001
            return False, _error_report(_result_error(self, index, value, e), {})


@contextlib.contextmanager
def _extra_env(env: dict[str, str]) -> Iterator[None]:
    """The job's `extra_env` set for its calls, and the worker's own put back."""
    if not env:
        yield
        return
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _call_with_reserved(func: Any, sig: Any, args: tuple, kwargs: dict, reserved: dict) -> Any:
    """Calls `func` with iterdata bound to its other parameters and the
    reserved ones filled by name, wherever they stand in the signature."""
    import inspect

    plain = sig.replace(parameters=[p for n, p in sig.parameters.items() if n not in reserved])
    bound = plain.bind(*args, **kwargs)
    positional: list[Any] = []
    named: dict[str, Any] = {}
    has_var_positional = any(p.kind is p.VAR_POSITIONAL for p in sig.parameters.values())
    for name, param in sig.parameters.items():
        if name in reserved:
            value = reserved[name]
        elif name in bound.arguments:
            value = bound.arguments[name]
        else:
            continue
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            positional.extend(value)
        elif param.kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        elif param.kind is inspect.Parameter.POSITIONAL_ONLY or (
            has_var_positional and param.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        ):
            positional.append(value)
        else:
            named[name] = value
    return func(*positional, **named)


def _result_error(function: _Function, call_id: int, result: Any, error: Exception) -> Exception:
    from .exceptions import SerializationError

    what = f"{function.payload.name} (call {call_id:05d}, a {type(result).__name__})"
    return SerializationError(f"cannot pickle the result of {what}: {type(error).__name__}: {error}")


def _error_report(exc: BaseException, sources: dict) -> bytes:
    # Imported on a failure only: a runner's start-up does without them.
    import base64
    import traceback

    import cloudpickle

    from ._serialize import format_remote_traceback

    try:
        tb = format_remote_traceback(exc, sources)
    except Exception:  # noqa: BLE001 - fall back to the plain format
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    from ._serialize import ExceptionCarrier

    payload = None
    exc.__traceback__ = None
    for candidate in (exc, ExceptionCarrier(exc)):
        try:
            blob = cloudpickle.dumps(candidate)
            pickle.loads(blob)  # an exception that cannot be re-created arrives as text
        except Exception:  # noqa: BLE001
            continue
        payload = base64.b64encode(blob).decode()
        break
    report = {
        "error_type": type(exc).__name__,
        "message": str(exc),
        "traceback": tb,
    }
    if payload is not None:
        report["payload"] = payload
    return json.dumps(report).encode()


def _raw_input(data: Any) -> tuple[tuple, dict]:
    return (bytes(data),), {}


def _decode_reduce_input(data: bytes) -> tuple[tuple, dict]:
    (count,) = _U32.unpack_from(data, 4)
    pos = 8
    results: list = []
    for _ in range(count):
        (length,) = _U32.unpack_from(data, pos)
        pos += 4
        entry = data[pos : pos + length]
        if entry[:1] == b"\x05":
            # A run of elements sharing their batch's values.
            lo, hi = struct.unpack_from("<II", entry, 1)
            # 0x05, lo, hi (9 bytes), then the shared bytes: b"\x02" + the
            # pickled list of values.
            results.extend(pickle.loads(entry[10:])[lo:hi])
        else:
            results.append(_load_result(entry))
        pos += length
    return (results,), {}


def _load_result(blob: bytes) -> Any:
    if blob[:1] == _RAW_RESULT:
        return bytes(blob[1:])
    if blob[:1] == b"\x01":
        return pickle.loads(blob[1:])[0]
    return pickle.loads(blob[1:])


def serve() -> int:
    global in_worker
    in_worker = True
    _die_with_parent()
    _keep_freed_memory()
    # The protocol is on its own descriptors, kept out of processes that
    # calls start (close-on-exec) or fork (pointed at /dev/null there).
    calls_fd, answers_fd = _protocol_fds()
    for fd in (calls_fd, answers_fd):
        os.set_inheritable(fd, False)
    os.register_at_fork(after_in_child=lambda: _detach_protocol_in_child((calls_fd, answers_fd)))
    # fd 1 is the pool's stderr: user prints go there (and to the call's logs).
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0, closefd=False), write_through=True)
    out = os.fdopen(answers_fd, "wb", buffering=0)
    inp = os.fdopen(calls_fd, "rb", buffering=1 << 16)
    out.write(_HEADER.pack(9, ord("R")) + struct.pack("<II", VERSION, os.getpid()))

    from ._serialize import dumps_value

    functions: dict[int, _Function | bytes] = {}
    stdout_tee, stderr_tee = _Tee(sys.stdout), _Tee(sys.stderr)
    sys.stdout, sys.stderr = stdout_tee, stderr_tee
    read = inp.read
    writev = os.writev
    out_fd = out.fileno()
    unpack_head = _HEADER.unpack
    unpack_call = _CALL.unpack_from
    pack_done = _DONE_HEAD.pack
    getrusage, RUSAGE_SELF = resource.getrusage, resource.RUSAGE_SELF
    while True:
        head = read(5)
        if len(head) < 5:
            # End of input: the pool is gone; take what our calls left behind along.
            _end_own_group()
            return 0
        length, tag = unpack_head(head)
        body = read(length - 1)
        if len(body) < length - 1:
            _end_own_group()
            return 0
        if tag == 70:  # F
            (function_id,) = _U32.unpack_from(body)
            functions[function_id] = body[4:]
            continue
        if tag != 67:  # C
            sys.__stderr__.write(f"quelea worker: unexpected frame tag {tag}\n")
            return 2
        function_id, call_id, count, select = unpack_call(body)
        ok = 0
        function = None
        # The answer is written as header, prefix, payload: no copy to join them.
        prefix = b""
        try:
            function = functions[function_id]
            if type(function) is bytes:
                function = functions[function_id] = _Function(function)
            data = memoryview(body)[16:]
            _CURRENT.output = function.output
            _CURRENT.call_id = call_id if select == _ALL else call_id + select
            _CURRENT.exact = True
            if count > 1 and select == _ALL:
                kind, payload = function.run_batch(call_id, data, stdout_tee, stderr_tee)
                rss = getrusage(RUSAGE_SELF).ru_maxrss * 1024
                writev(out_fd, [pack_done(len(payload) + 14, 68, call_id, kind, rss), payload])
                continue
            if count > 1:
                call_id += select
                result = function.run_selected(call_id - select, select, data)
            else:
                result = function.run(call_id, data)
            try:
                if stdout_tee.parts or stderr_tee.parts:
                    logs = stdout_tee.take() + stderr_tee.take()
                    prefix, payload = b"\x01", dumps_value((result, logs))
                elif type(result) is bytes:
                    # Raw: sent from its own buffer, handed to the client as it is.
                    prefix, payload = _RAW_RESULT, result
                else:
                    prefix, payload = b"\x00", dumps_value(result)
            except Exception as e:  # noqa: BLE001
                raise _result_error(function, call_id, result, e) from None
        except BaseException as exc:  # noqa: BLE001 - every failure is reported to the client
            ok, prefix = 1, b""
            stdout_tee.take()
            stderr_tee.take()
            sources = function.payload.sources if isinstance(function, _Function) else {}
            payload = _error_report(exc, sources)
        rss = getrusage(RUSAGE_SELF).ru_maxrss * 1024
        # One write per answer, flushed at once (the pipe is unbuffered).
        writev(out_fd, [pack_done(len(prefix) + len(payload) + 14, 68, call_id, ok, rss), prefix, payload])


if __name__ == "__main__":
    # `python -m quelea.worker` runs this file as `__main__`: the module the
    # package imports (`quelea.worker`, whose `in_worker` nested executors
    # read) is another one, and must say so too.
    import quelea.worker

    quelea.worker.in_worker = True
    sys.exit(serve())
