"""How functions, arguments and results travel: shared by client and worker.

- A function goes once per job, cloudpickled inside a :class:`FunctionPayload`
  (with the job's ``extra_env`` and which reserved parameters it takes).
  Functions from ``__main__`` and from modules a worker could not import (not
  installed: a script's neighbour, an Airflow DAG file) go by value.
- A call's input is ``(args, kwargs)``, pickled with the C pickler (fast), or
  with cloudpickle when the data holds lambdas or local classes.
- A result is pickled the same way; a result with captured output is
  prefixed ``b"\\x01"`` and pickled with its logs, otherwise ``b"\\x00"``;
  a ``bytes`` result without output is ``b"\\x03"`` and itself (raw: no
  pickle; the engine's binding hands it to Python cut from its tag).
- A *batch* (see :mod:`quelea._batch`) is one runner call of several map
  elements: its input is ``(plain, items)`` pickled, and when every element
  succeeded quietly its shared result is ``b"\\x02"`` + the pickled list of
  values; otherwise each element answers on its own as above.
"""

from __future__ import annotations

import functools
import io
import os
import pickle
import sys
import types
import weakref

from . import _funcpickle
from .exceptions import SerializationError

# Not `from typing import Any`: typing costs a client's start-up ~3 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


# Filled in by the worker (see worker._Function.call and _clients), as in Lithops.
RESERVED = ("id", "storage", "ibm_cos", "rabbitmq")
PROTOCOL = 5


class FunctionPayload:
    """What a job's runners load once: the function and how to call it."""

    def __init__(
        self,
        func: Any,
        name: str,
        extra_env: dict[str, str] | None = None,
        reserved: tuple[str, ...] = (),
        reduce_extra_args: tuple | None = None,
        sources: dict[str, tuple[str, str]] | None = None,
        output: str = "lines",
        raw_input: bool = False,
    ):
        self.func = func
        self.name = name
        self.extra_env = extra_env if extra_env is not None else {}
        self.reserved = reserved
        # Set for reducers: call `func(results, *extra_args)`.
        self.reduce_extra_args = reduce_extra_args
        # module name -> (file name, source) of modules shipped by value, so
        # remote tracebacks can name the file and show the line (cloudpickle
        # drops both).
        self.sources = sources if sources is not None else {}
        # How the calls' output is shown (see worker._Tee and _output):
        # "lines", "prefixed" (by call id) or "logs" (future.logs only).
        self.output = output
        # Each call's input is its one argument, a bytes object, as given (no
        # pickle: the client sends the caller's own buffer, see _batch.encode).
        self.raw_input = raw_input


def _cloudpickle() -> Any:
    # Imported when first needed: it costs a client's start-up 20-30 ms, and
    # the script's plain functions travel without it (see _funcpickle).
    import cloudpickle

    return cloudpickle


def function_name(func: Any) -> str:
    module = getattr(func, "__module__", None) or ""
    qualname = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__
    return f"{module}.{qualname}" if module else qualname


@functools.cache
def _installed_roots() -> tuple[str, ...]:
    # On first use, not at import: sysconfig's paths cost a client's start-up
    # ~2 ms, and many maps never ask.
    import sysconfig

    paths = sysconfig.get_paths()
    roots = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return tuple(sorted(r for r in roots if r))


# Module name -> whether what it defines travels by value (see below).
_BY_VALUE: dict[str, bool] = {}


def _goes_by_value(name: str) -> bool:
    """Whether a worker could not import module ``name`` by name (``__main__``,
    an Airflow DAG file, a module that is not installed: a script's
    neighbour), so that its functions and classes travel by value. Such a
    module (but ``__main__``, which cloudpickle always ships by value) is
    registered with cloudpickle; the answer is cached per module."""
    known = _BY_VALUE.get(name)
    if known is not None:
        return known
    by_value = False
    module = sys.modules.get(name)
    if name.split(".")[0] not in ("quelea", "cloudpickle") and isinstance(module, types.ModuleType):
        path = getattr(module, "__file__", None)
        # Airflow imports DAG files as `unusual_prefix_<hash>_<name>`; built-in
        # and frozen modules have no file: every interpreter has them.
        by_value = (
            name == "__main__"
            or name.startswith("unusual_prefix_")
            or bool(path)
            and not path.startswith(_installed_roots())
        )
        if by_value and name != "__main__":
            try:
                _cloudpickle().register_pickle_by_value(module)
            except (ValueError, TypeError):
                by_value = False
    _BY_VALUE[name] = by_value
    return by_value


def _ship_modules_by_value(func: Any) -> dict[str, tuple[str, str]]:
    """Registers the function's module for pickling by value when a worker
    could not import it by name; returns the sources of by-value modules."""
    name = getattr(func, "__module__", None)
    if not isinstance(name, str) or not _goes_by_value(name):
        return {}
    path = getattr(sys.modules[name], "__file__", None)
    if not path:
        return {}
    try:
        stat = os.stat(path)
        key = (path, stat.st_mtime_ns, stat.st_size)
        source = _SOURCES.get(key)
        if source is None:
            with open(path, encoding="utf-8") as f:
                source = f.read()
            _SOURCES.clear()  # the current script's source is the one that matters
            _SOURCES[key] = source
        return {name: (path, source)}
    except (OSError, UnicodeDecodeError):
        return {}


# The last by-value module source read, by path, modification time and size:
# a session of maps reads its script once, and again only once it changed.
_SOURCES: dict[tuple[str, int, int], str] = {}


def dump_function(payload: FunctionPayload) -> bytes:
    payload.sources.update(_ship_modules_by_value(payload.func))
    try:
        return _funcpickle.dumps(payload, PROTOCOL, _goes_by_value)
    except Exception:  # noqa: BLE001 - NeedsCloudpickle, or what cloudpickle may still manage
        pass
    try:
        return _cloudpickle().dumps(payload, protocol=PROTOCOL)
    except Exception as e:  # noqa: BLE001 - any pickling failure is the user's to see
        raise SerializationError(f"cannot pickle function {payload.name}: {type(e).__name__}: {e}") from e


# Protocol 4+ names every global (a class, a function) with this opcode; a
# pickle without it holds only built-in data and needs no closer look.
_STACK_GLOBAL = pickle.STACK_GLOBAL


class _ByValueFinder(pickle.Pickler):
    """Pickles (into nothing, for a look only), noting whether a class or
    function of a module that goes by value is met (each such module is registered with
    cloudpickle on the way, so all of them must be visited). The C pickler
    asks ``reducer_override`` only about objects that are not plain built-in
    data, and about classes."""

    found = False

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (type, types.FunctionType)):
            name = getattr(obj, "__module__", None)
            if isinstance(name, str) and _goes_by_value(name):
                self.found = True
        return NotImplemented


class _Sink:
    def write(self, data: Any) -> int:
        return len(data)


def refers_by_value(value: Any, blob: bytes) -> bool:
    """Whether ``blob`` (``value`` pickled by reference) names a class or
    function that a worker could not import: then ``value`` must travel with
    cloudpickle, which ships them by value, as it does functions."""
    if _STACK_GLOBAL not in blob:
        return False
    finder = _ByValueFinder(_Sink(), protocol=PROTOCOL)
    try:
        finder.dump(value)
    except Exception:  # noqa: BLE001 - it pickled once already; be safe
        return True
    return finder.found


def dumps_args(value: Any, big: bool = False) -> bytes:
    """Arguments pickled: the C pickler, or cloudpickle when they hold
    lambdas, local classes, or instances of classes defined in the user's
    script or in a module not installed on the workers (even nested).
    ``big``: the value is likely large, so it is pickled once, looking for
    such things on the way (a big value's bytes all but surely hold the
    opcode that sends a pickle to a second look)."""
    try:
        if big:
            blob = _dump_checked(value)
        else:
            blob = pickle.dumps(value, protocol=PROTOCOL)
            blob = None if refers_by_value(value, blob) else blob
        if blob is not None:
            return blob
    except Exception:  # noqa: BLE001 - fall back to cloudpickle for lambdas etc.
        pass
    return _cloudpickle().dumps(value, protocol=PROTOCOL)


def dump_input(args: tuple, kwargs: dict, index: int, big: bool = False) -> bytes:
    """A call's ``(args, kwargs)`` pickled as ``dumps_args`` does; a value
    nothing can pickle is an error naming the call."""
    try:
        return dumps_args((args, kwargs), big)
    except Exception as e:  # noqa: BLE001
        raise SerializationError(f"cannot pickle the input of call {index}: {type(e).__name__}: {e}") from e


def _dump_checked(value: Any) -> bytes | None:
    """``value`` pickled by the C pickler in one pass that also looks for
    classes and functions that must go by value (see ``_ByValueFinder``);
    ``None`` when there are any."""
    out = io.BytesIO()
    pickler = _ByValueFinder(out, protocol=PROTOCOL)
    pickler.dump(value)
    return None if pickler.found else out.getvalue()


def dumps_value(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=PROTOCOL)
    except Exception:  # noqa: BLE001
        return _cloudpickle().dumps(value, protocol=PROTOCOL)


_CO_VARARGS = 0x04
_CO_VARKEYWORDS = 0x08


class CallShape:
    """What a map needs of a function's parameters: whether one positional
    argument fits it, whether it takes ``obj`` (a map over storage objects),
    which reserved parameters the worker fills, and, when a closer check is
    needed, the signature without those (what iterdata must fill).

    A plain function answers the first three from its code: ``inspect``
    costs a client's start-up ~10 ms, and most maps never need it. Anything
    else (a decorated function, a callable object, a function taking
    reserved parameters) asks ``inspect.signature``.
    """

    def __init__(self, func: Any):
        self.func = func
        self._sig: Any = _UNSET
        params = _plain_params(func)
        if params is not None:
            code = func.__code__
            n = code.co_argcount
            required = n - len(func.__defaults__ or ())
            kwdefaults = func.__kwdefaults__ or {}
            kwonly = code.co_varnames[n : n + code.co_kwonlyargcount]
            self.one_fits = (
                (n >= 1 or bool(code.co_flags & _CO_VARARGS))
                and required <= 1
                and all(name in kwdefaults for name in kwonly)
            )
            self.takes_obj = "obj" in params and "obj" not in code.co_varnames[: code.co_posonlyargcount]
            self.reserved: tuple[str, ...] = ()
            return
        self.one_fits = False
        full = _signature(func)
        self.reserved = () if full is None else tuple(n for n in RESERVED if n in full.parameters)
        sig = self.sig
        obj = sig.parameters.get("obj") if sig is not None else None
        self.takes_obj = obj is not None and obj.kind is not obj.POSITIONAL_ONLY

    @property
    def sig(self) -> Any:
        """``inspect.Signature`` without the reserved parameters, or None
        for a callable without one."""
        if self._sig is _UNSET:
            sig = _signature(self.func)
            if sig is not None:
                sig = sig.replace(parameters=[p for n, p in sig.parameters.items() if n not in RESERVED])
            self._sig = sig
        return self._sig


_UNSET = object()


def _plain_params(func: Any) -> tuple[str, ...] | None:
    """The parameter names of a plain function (its signature is its code's:
    no ``__signature__`` or ``__wrapped__`` set) taking no reserved
    parameter, else None."""
    if (
        type(func) is not types.FunctionType
        or "__signature__" in func.__dict__
        or "__wrapped__" in func.__dict__
    ):
        return None
    code = func.__code__
    count = code.co_argcount + code.co_kwonlyargcount
    count += bool(code.co_flags & _CO_VARARGS) + bool(code.co_flags & _CO_VARKEYWORDS)
    params = code.co_varnames[:count]
    if any(name in RESERVED for name in params):
        return None
    return params


# Shapes of functions seen, for maps that call the same function again.
_SHAPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def call_shape(func: Any) -> CallShape:
    # What a plain function's shape is made of (besides a rare assigned
    # __signature__ or __wrapped__, which _plain_params looks at each time).
    parts = None
    if type(func) is types.FunctionType:
        parts = (func.__code__, func.__defaults__, func.__kwdefaults__, len(func.__dict__))
        cached = _SHAPES.get(func)
        if (
            cached is not None
            and all(a is b for a, b in zip(cached[0][:3], parts[:3], strict=True))
            and cached[0][3] == parts[3]
        ):
            return cached[1]
    shape = CallShape(func)
    if parts is not None:
        _SHAPES[func] = (parts, shape)
    return shape


def _same_parts(old: tuple, new: tuple) -> bool:
    return all(a is b for a, b in zip(old[:3], new[:3], strict=True)) and old[3] == new[3]


def _signature(func: Any) -> Any:
    import inspect

    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None


def rebuild_exception(cls: type, args: tuple, state: dict) -> BaseException:
    """Re-creates an exception whose ``__init__`` does not take its ``args``
    back (a custom signature), as pickle's default path would need."""
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class ExceptionCarrier:
    """Pickles as a call to :func:`rebuild_exception`."""

    def __init__(self, exc: BaseException):
        self.exc = exc

    def __reduce__(self):
        state = {k: v for k, v in vars(self.exc).items() if k not in ("__traceback__",)}
        return (rebuild_exception, (type(self.exc), self.exc.args, state))


def format_remote_traceback(exc: BaseException, sources: dict[str, tuple[str, str]]) -> str:
    """Formats a traceback, naming the real file and line of code shipped by value."""
    import traceback

    frames = []
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        code = frame.f_code
        filename, line = code.co_filename, None
        found = sources.get(frame.f_globals.get("__name__", ""))
        # cloudpickle names shipped code "<dynamic-code>"; quelea._funcpickle
        # keeps its file's name, which a remote runner may not have.
        if found and filename in ("<dynamic-code>", found[0]):
            filename = found[0]
            lines = found[1].splitlines()
            line = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else None
        frames.append(traceback.FrameSummary(filename, lineno, code.co_name, line=line))
    parts = ["Traceback (most recent call last):\n"]
    parts.extend(traceback.StackSummary.from_list(frames).format())
    parts.extend(traceback.format_exception_only(type(exc), exc))
    return "".join(parts)
