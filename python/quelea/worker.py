"""A warm Python runner: ``python -m quelea.worker``.

Started by the engine's local pool (or the HTTP/Lambda runtimes). It speaks
the runner pipe protocol of ``quelea_worker::runner_protocol`` on its stdin
and its original stdout: frames of ``u32 length | u8 tag | body``. It answers
every call in order and flushes each answer at once, so the runtime always
knows which call is running.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import io
import json
import os
import pickle
import resource
import struct
import sys
import traceback
from collections.abc import Iterator
from typing import Any

VERSION = 1
_HEADER = struct.Struct("<IB")
_U32 = struct.Struct("<I")
_CALL = struct.Struct("<II")
# length, tag "D", call_id, ok (0) or error (1), peak RSS bytes; the payload follows.
_DONE_HEAD = struct.Struct("<IBIBQ")

in_worker = False


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, 9)
    except (OSError, AttributeError):
        pass
    parent = os.environ.get("QUELEA_RUNNER_PARENT")
    if parent and os.getppid() != int(parent):
        os._exit(3)


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _Tee(io.TextIOBase):
    """Passes output through to the real stream and keeps a copy for the call's logs."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def take(self) -> str:
        text = "".join(self.parts)
        self.parts.clear()
        return text


class _Function:
    """A loaded function and what it needs per call."""

    def __init__(self, payload: bytes):
        import cloudpickle  # noqa: F401 - payloads reference it

        self.payload = pickle.loads(payload)
        self.func = self.payload.func
        self.reserved = self.payload.reserved
        self.sig = None
        if self.reserved:
            import inspect

            self.sig = inspect.signature(self.func)
        self._storage = None
        self.bundle = getattr(self.payload, "bundle", False)
        self.id_base = getattr(self.payload, "id_base", 0)
        plain = not self.reserved and not self.payload.extra_env and self.payload.reduce_extra_args is None
        self.run = self._run_plain if plain else self._run_general

    def storage(self) -> Any:
        if self._storage is None:
            from .storage import Storage

            self._storage = Storage(config=json.loads(os.environ.get("QUELEA_RUNNER_CONFIG") or "null"))
        return self._storage

    def _run_plain(self, call_id: int, data: Any) -> Any:
        args, kwargs = pickle.loads(data)
        return self.func(*args, **kwargs)

    def _run_general(self, call_id: int, data: Any) -> Any:
        if self.payload.reduce_extra_args is not None and bytes(data[:4]) == b"QRED":
            args, kwargs = _decode_reduce_input(bytes(data))
        else:
            args, kwargs = pickle.loads(data)
        with _extra_env(self.payload.extra_env):
            return self.call(call_id, args, kwargs)

    def call(self, call_id: int, args: tuple, kwargs: dict) -> Any:
        if self.payload.reduce_extra_args is not None:
            args = tuple(args) + tuple(self.payload.reduce_extra_args)
        if not self.reserved:
            return self.func(*args, **kwargs)
        values = {}
        if "id" in self.reserved:
            values["id"] = call_id + self.id_base
        if "storage" in self.reserved:
            values["storage"] = self.storage()
        return _call_with_reserved(self.func, self.sig, args, kwargs, values)

    def run_bundle(self, data: Any, out: _Tee, err: _Tee) -> bytes:
        """Runs every element of a bundle; one element's failure is its own
        (see `quelea._serialize` for the encodings)."""
        first, plain, items = pickle.loads(data)
        func, call = self.func, self.call
        simple = plain and not self.reserved and self.payload.reduce_extra_args is None
        values: list[Any] = []
        entries: list[tuple[bool, bytes]] | None = None
        with _extra_env(self.payload.extra_env):
            for k, item in enumerate(items):
                try:
                    if simple:
                        value = func(item)
                    elif plain:
                        value = call(first + k, (item,), {})
                    else:
                        value = call(first + k, item[0], item[1])
                except BaseException as exc:  # noqa: BLE001 - reported as this element's error
                    if entries is None:
                        entries = self._entries(first, values)
                    out.take()
                    err.take()
                    entries.append((False, _error_report(exc, self.payload.sources)))
                    continue
                if entries is None and not (out.parts or err.parts):
                    values.append(value)
                    continue
                if entries is None:
                    entries = self._entries(first, values)
                logs = out.take() + err.take()
                entries.append(self._entry(first + k, value, logs))
        if entries is None:
            try:
                return b"\x02" + pickle.dumps(values, protocol=5)
            except Exception:  # noqa: BLE001 - find the element that does not pickle
                entries = self._entries(first, values)
        return b"\x03" + pickle.dumps(entries, protocol=5)

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


def _decode_reduce_input(data: bytes) -> tuple[tuple, dict]:
    (count,) = _U32.unpack_from(data, 4)
    pos = 8
    results = []
    for _ in range(count):
        (length,) = _U32.unpack_from(data, pos)
        pos += 4
        results.append(_load_result(data[pos : pos + length]))
        pos += length
    return (results,), {}


def _load_result(blob: bytes) -> Any:
    if blob[:1] == b"\x01":
        return pickle.loads(blob[1:])[0]
    return pickle.loads(blob[1:])


def serve() -> int:
    global in_worker
    in_worker = True
    _die_with_parent()
    # Keep the protocol stream to ourselves; user prints go to stderr.
    proto_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", buffering=0), write_through=True)
    out = os.fdopen(proto_fd, "wb", buffering=0)
    inp = os.fdopen(0, "rb", buffering=1 << 16)
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
            return 0
        length, tag = unpack_head(head)
        body = read(length - 1)
        if len(body) < length - 1:
            return 0
        if tag == 70:  # F
            (function_id,) = _U32.unpack_from(body)
            functions[function_id] = body[4:]
            continue
        if tag != 67:  # C
            sys.__stderr__.write(f"quelea worker: unexpected frame tag {tag}\n")
            return 2
        function_id, call_id = unpack_call(body)
        ok = 0
        function = None
        try:
            function = functions[function_id]
            if type(function) is bytes:
                function = functions[function_id] = _Function(function)
            if function.bundle:
                payload = function.run_bundle(memoryview(body)[8:], stdout_tee, stderr_tee)
                rss = getrusage(RUSAGE_SELF).ru_maxrss * 1024
                writev(out_fd, [pack_done(len(payload) + 14, 68, call_id, 0, rss), payload])
                continue
            result = function.run(call_id, memoryview(body)[8:])
            try:
                if stdout_tee.parts or stderr_tee.parts:
                    logs = stdout_tee.take() + stderr_tee.take()
                    payload = b"\x01" + dumps_value((result, logs))
                else:
                    payload = b"\x00" + dumps_value(result)
            except Exception as e:  # noqa: BLE001
                raise _result_error(function, call_id, result, e) from None
        except BaseException as exc:  # noqa: BLE001 - every failure is reported to the client
            ok = 1
            stdout_tee.take()
            stderr_tee.take()
            sources = function.payload.sources if isinstance(function, _Function) else {}
            payload = _error_report(exc, sources)
        rss = getrusage(RUSAGE_SELF).ru_maxrss * 1024
        # One write per answer, flushed at once (the pipe is unbuffered).
        writev(out_fd, [pack_done(len(payload) + 14, 68, call_id, ok, rss), payload])


if __name__ == "__main__":
    # `python -m quelea.worker` runs this file as `__main__`: the module the
    # package imports (`quelea.worker`, whose `in_worker` nested executors
    # read) is another one, and must say so too.
    import quelea.worker

    quelea.worker.in_worker = True
    sys.exit(serve())
