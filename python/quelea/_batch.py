"""The Python encoding of map elements for the engine's batches.

A batch (see ``quelea_worker::runner_protocol``) is the engine's runner call
of ``chunksize`` consecutive map elements. The engine owns everything about
it — states, stats, statuses and crash isolation are per element — and
Python owns only how the elements travel: a batch's input is
``pickle((mode, items))`` (mode ``True``: each item is the single argument;
``False``: each is ``(args, kwargs)``; ``EXPAND``: each is a map element as
the user gave it, which the runner expands by :func:`element_args` — so a
big map is not scanned element by element in the client), a single
element's input is ``(args, kwargs)``, and
a batch whose elements all succeeded quietly answers ``b"\\x02"`` + the
pickled list of their values, which :func:`shared_values` decodes once for
all of them.
"""

from __future__ import annotations

import pickle

from ._serialize import PROTOCOL

# Not `from typing import Any`: typing costs a client's start-up ~3 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# A batch of an automatic size holding more input than this gets fewer
# elements (big elements gain nothing from batching, and one runner would
# hold them all).
MAX_AUTO_BATCH_BYTES = 4 << 20
# Bytes arguments from this size go one per call (automatic size), raw: a
# call costs less than a tenth of copying one, and the copy is saved.
RAW_MIN_BYTES = 256 << 10
_NO_KWARGS: dict = {}
EXPAND = "expand"
# Element types whose pickles name no class.
ATOMS = frozenset({int, float, str, bytes, bool, type(None)})
_BYTES = frozenset({bytes})


def element_args(elem: Any, extra_args: Any, index: int) -> tuple[tuple, dict]:
    """A map element's ``(args, kwargs)``, the Lithops way: a dict is
    keyword arguments, a tuple positional ones, anything else the one
    argument; ``extra_args`` are appended."""
    if isinstance(elem, dict):
        if extra_args is not None and not isinstance(extra_args, dict):
            raise TypeError(
                f"map_iterdata[{index}] is a dict, so extra_args must be a dict, "
                f"got {type(extra_args).__name__}"
            )
        return (), {**elem, **(extra_args or {})}
    if isinstance(elem, tuple):
        if extra_args is not None and not isinstance(extra_args, tuple):
            raise TypeError(
                f"map_iterdata[{index}] is a tuple, so extra_args must be a tuple, "
                f"got {type(extra_args).__name__}"
            )
        return elem + (extra_args or ()), {}
    if extra_args is None:
        return (elem,), {}
    if isinstance(extra_args, dict):
        raise TypeError(f"extra_args is a dict, so map_iterdata[{index}] must be a dict too")
    # A list spreads as a tuple does (Lithops: `(item, *extra_args)`); one other value is one argument.
    return (elem,) + tuple(extra_args if isinstance(extra_args, tuple | list) else (extra_args,)), {}


def encode(
    items: list | range, plain: Any, size: int, auto: bool, types: frozenset | set | None = None
) -> tuple[int, list[bytes], bool]:
    """The runner calls of a map: ``(chunksize, inputs, raw)``. An automatic
    size shrinks so that a batch stays near ``MAX_AUTO_BATCH_BYTES``.
    ``types``: the items' types when each is the single argument. Ints,
    strs and the like pickle naming no class (the C pickler's bytes need no
    look for classes to send by value); calls of one bytes argument each are
    ``raw``: their inputs are the caller's bytes objects themselves, which
    the engine sends from their own buffers (no pickle, no copy)."""
    atoms = types is not None and types <= ATOMS
    if size > 1 and auto and types == _BYTES:
        # Sized from the first element, before anything is pickled.
        first = len(items[0])
        if first >= RAW_MIN_BYTES:
            size = 1
        elif first * size > MAX_AUTO_BATCH_BYTES:
            size = max(1, MAX_AUTO_BATCH_BYTES // max(1, first))
    if size == 1:
        if plain is True and types == _BYTES:
            return 1, list(items), True
        return 1, encode_each(plain, items, atoms), False
    dumps = _dump_atoms if atoms else _dumps
    inputs: list[bytes] = []
    first = 0
    while first < len(items):
        blob = dumps((plain, items[first : first + size]))
        if auto and len(blob) > MAX_AUTO_BATCH_BYTES and size > 1 and not inputs:
            size = max(1, size * MAX_AUTO_BATCH_BYTES // len(blob))
            if size == 1:
                return encode(items, plain, 1, auto, types)
            continue
        inputs.append(blob)
        first += size
    if len(items) % size == 1:
        # A runner call of one element carries that element's own input.
        inputs[-1] = encode_each(plain, items[-1:], atoms)[0]
    return size, inputs, False


def encode_each(plain: Any, items: list | range, atoms: bool = False) -> list[bytes]:
    """One input per element: ``(args, kwargs)`` pickled (``atoms``: as in
    ``encode``)."""
    from ._serialize import dump_input

    if plain == EXPAND:
        return [dump_input(*element_args(e, None, i), i) for i, e in enumerate(items)]
    if plain:
        dumps = pickle.dumps
        try:
            blobs = [dumps(((e,), _NO_KWARGS), PROTOCOL) for e in items]
            # Classes or functions named by reference: some may need to go by
            # value. (Bytes and strs may hold the opcode's byte by chance.)
            if atoms or not any(pickle.STACK_GLOBAL in b for b in blobs):
                return blobs
        except Exception:  # noqa: BLE001 - the general path names the bad element
            pass
        return [dump_input((e,), {}, i) for i, e in enumerate(items)]
    return [dump_input(args, kwargs, i) for i, (args, kwargs) in enumerate(items)]


def _dump_atoms(value: Any) -> bytes:
    return pickle.dumps(value, PROTOCOL)


def _dumps(value: Any) -> bytes:
    from ._serialize import dumps_args

    return dumps_args(value)


# Decoded shared results by the bytes object the engine handed out (which
# the engine's job keeps alive); bounded small: a long session reads many
# batches, in order, and must not keep their values alive.
_SHARED: dict[int, tuple[bytes, list]] = {}
_SHARED_MAX = 16


def shared_values(blob: bytes) -> list:
    """The values of a batch's shared result, decoded once."""
    key = id(blob)
    found = _SHARED.get(key)
    if found is not None and found[0] is blob:
        return found[1]
    values = pickle.loads(memoryview(blob)[1:])
    if len(_SHARED) >= _SHARED_MAX:
        _SHARED.pop(next(iter(_SHARED)))
    _SHARED[key] = (blob, values)
    return values
