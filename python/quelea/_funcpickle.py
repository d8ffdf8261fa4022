"""Functions of the user's script (``__main__``) pickled by value without
cloudpickle, for a client's start-up.

Importing cloudpickle costs a new client process 20–30 ms (it pulls in
``inspect``, ``logging``, ``typing``, ``uuid``, ``platform``), more than
``multiprocessing.Pool`` takes to start and run a thousand calls. The common
function needs none of it: a top-level function or lambda of the script,
without a closure, using the script's globals, modules, installed classes
and other such functions. :class:`Pickler` ships those the way cloudpickle
does (code, the globals the code names, defaults, attributes; one globals
dict per script however many functions share it) with the C pickler and
:mod:`marshal`, and gives up with :class:`NeedsCloudpickle` on anything else
(closures, the script's classes, modules or functions of a script's
neighbour), which then travels with cloudpickle, whole. The worker needs
only :func:`make_function` and :func:`set_function_state` below.

The code object goes through :mod:`marshal`, so client and runner must run
the same Python minor version, as with cloudpickle.
"""

from __future__ import annotations

import builtins
import importlib
import io
import marshal
import pickle
import sys
import types
import weakref
from collections.abc import Callable

# Opcodes naming globals, looked up on first use (``opcode`` costs ~1 ms).
_OPS: tuple[int, int, int, int, int] | None = None


class NeedsCloudpickle(Exception):  # noqa: N818 - a signal, not an error
    """What is being pickled holds something only cloudpickle ships."""


def make_function(code: bytes, base_globals: dict, name: str) -> types.FunctionType:
    """The worker's side: the function's skeleton (state comes next)."""
    base_globals["__builtins__"] = builtins.__dict__
    return types.FunctionType(marshal.loads(code), base_globals, name)


def set_function_state(func: types.FunctionType, state: tuple) -> None:
    """Fills in what may refer back to the function (globals, defaults)."""
    names, attrs, defaults, kwdefaults, annotations, doc, qualname, module, _submodules = state
    func.__globals__.update(names)
    func.__defaults__ = defaults
    func.__kwdefaults__ = kwdefaults
    func.__annotations__ = annotations
    func.__doc__ = doc
    func.__qualname__ = qualname
    func.__module__ = module
    if attrs:
        func.__dict__.update(attrs)


def _ops() -> tuple[int, int, int, int, int]:
    global _OPS
    if _OPS is None:
        import opcode

        m = opcode.opmap
        _OPS = (
            m["LOAD_GLOBAL"],
            m["STORE_GLOBAL"],
            m["DELETE_GLOBAL"],
            opcode.EXTENDED_ARG,
            opcode.HAVE_ARGUMENT,
        )
    return _OPS


def global_names(code: types.CodeType, out: dict[str, None] | None = None) -> dict[str, None]:
    """The global names ``code`` (and the code nested in it) reads, writes
    or deletes, in order: these, not every name of ``co_names`` (which holds
    attribute names too), are the globals that travel."""
    load, store, delete, extended_arg, have_argument = _ops()
    if out is None:
        out = {}
    raw = code.co_code
    names = code.co_names
    # Since 3.11 LOAD_GLOBAL's argument is the name's index shifted left by one.
    load_shift = 1 if sys.version_info >= (3, 11) else 0
    extended = 0
    for i in range(0, len(raw), 2):
        op = raw[i]
        if op < have_argument:
            extended = 0
            continue
        arg = raw[i + 1] | extended
        if op == extended_arg:
            extended = arg << 8
            continue
        extended = 0
        if op == load:
            out[names[arg >> load_shift]] = None
        elif op == store or op == delete:
            out[names[arg]] = None
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            global_names(const, out)
    return out


def _submodules(attrs: frozenset[str], values: object) -> list[types.ModuleType]:
    """Imported submodules the code reaches through a global package
    (``xml`` used as ``xml.etree.ElementTree``; ``attrs``: the names the
    code and its nested code use): shipped as references so that
    unpickling imports them too, as cloudpickle does. Looked up name by
    name (not a walk of ``sys.modules``, which holds thousands of modules
    in a program that imported numpy or pandas)."""
    found: dict[str, types.ModuleType] = {}
    level = [v.__name__ for v in values if type(v) is types.ModuleType and hasattr(v, "__path__")]
    while level:
        deeper = []
        for package in level:
            for attr in attrs:
                name = f"{package}.{attr}"
                module = sys.modules.get(name)
                if module is not None and name not in found:
                    found[name] = module
                    deeper.append(name)
        level = deeper
    return list(found.values())


# What a code object says of itself, which cannot change: its marshalled
# bytes, the global names it uses, and every name it and its nested code
# use (for submodules). Kept while the code lives, so that a function is
# not walked again at every map.
_CODE_FACTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _code_facts(code: types.CodeType) -> tuple[bytes, tuple[str, ...], frozenset[str]]:
    facts = _CODE_FACTS.get(code)
    if facts is None:
        attrs = set(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                attrs.update(const.co_names)
        facts = (marshal.dumps(code), tuple(global_names(code)), frozenset(attrs))
        _CODE_FACTS[code] = facts
    return facts


class Pickler(pickle.Pickler):
    """The C pickler, shipping the script's plain functions by value and
    raising :class:`NeedsCloudpickle` where only cloudpickle would do.
    ``by_value(module_name)`` says whether a worker could not import the
    module (see ``_serialize._goes_by_value``)."""

    def __init__(self, file: io.BytesIO, protocol: int, by_value: Callable[[str], bool]):
        super().__init__(file, protocol=protocol)
        self._by_value = by_value
        # id(the original globals) -> the dict that stands for them (one per
        # pickle, so functions sharing globals share them once unpickled).
        self._globals: dict[int, dict] = {}

    def reducer_override(self, obj: object) -> object:
        kind = type(obj)
        if kind is types.FunctionType:
            module = obj.__module__
            if module == "__main__":
                return self._reduce_function(obj)
            if isinstance(module, str) and self._by_value(module):
                raise NeedsCloudpickle(module)
        elif kind is types.ModuleType:
            name = obj.__name__
            if sys.modules.get(name) is not obj or self._by_value(name):
                raise NeedsCloudpickle(name)
            return importlib.import_module, (name,)
        elif isinstance(obj, type):
            module = getattr(obj, "__module__", None)
            if isinstance(module, str) and self._by_value(module):
                raise NeedsCloudpickle(module)
        return NotImplemented

    def _reduce_function(self, func: types.FunctionType) -> tuple:
        if func.__closure__ is not None:
            raise NeedsCloudpickle("a closure")
        glob = func.__globals__
        base = self._globals.get(id(glob))
        if base is None:
            # What relative imports inside the function resolve against.
            keys = ("__package__", "__name__", "__path__", "__file__")
            base = self._globals[id(glob)] = {k: glob[k] for k in keys if k in glob}
        marshalled, global_keys, attrs = _code_facts(func.__code__)
        # The globals' values are read at every map: they may have changed.
        names = {k: glob[k] for k in global_keys if k in glob}
        state = (
            names,
            func.__dict__,
            func.__defaults__,
            func.__kwdefaults__,
            func.__annotations__,
            func.__doc__,
            func.__qualname__,
            func.__module__,
            _submodules(attrs, names.values()),
        )
        return (
            make_function,
            (marshalled, base, func.__name__),
            state,
            None,
            None,
            set_function_state,
        )


def dumps(value: object, protocol: int, by_value: Callable[[str], bool]) -> bytes:
    """``value`` pickled by :class:`Pickler`; raises :class:`NeedsCloudpickle`."""
    buf = io.BytesIO()
    Pickler(buf, protocol, by_value).dump(value)
    return buf.getvalue()
