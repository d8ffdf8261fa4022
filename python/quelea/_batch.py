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

# A map's inputs go to the engine in parts (see `encode`): the first closes
# at FIRST_PART_BYTES of input, each next one at twice as much, up to
# MAX_PART_BYTES, and any at MAX_PART_CALLS inputs (the engine's rule,
# `quelea::Parts`).
from ._engine import FIRST_PART_BYTES, MAX_PART_BYTES, MAX_PART_CALLS
from ._serialize import PROTOCOL

# Not `from typing import Any`: typing costs a client's start-up ~3 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
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
) -> tuple[int, Iterator[tuple[list[bytes], bool]], bool]:
    """The runner calls of a map: ``(chunksize, parts, raw)``, where
    ``parts`` yields the calls' inputs in order, a part at a time, each with
    whether more follow: the client sends a part while it encodes the next.
    The first part closes at ``FIRST_PART_BYTES`` of input, each next one at
    twice as much (up to ``MAX_PART_BYTES``), so a big map's first calls run
    at once and a small map is one part. An automatic size shrinks so that
    a batch stays near ``MAX_AUTO_BATCH_BYTES`` (decided here, on the first
    batch). ``types``: the items' types when each is the single argument.
    Ints, strs and the like pickle naming no class (the C pickler's bytes
    need no look for classes to send by value); calls of one bytes argument
    each are ``raw``: their inputs are the caller's bytes objects
    themselves, which the engine sends from their own buffers (no pickle,
    no copy)."""
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
            return 1, iter([(list(items), False)]), True
        return 1, _each_parts(plain, items, atoms), False
    dumps = _dump_atoms if atoms else _dumps
    blob = dumps((plain, items[:size]))
    while auto and len(blob) > MAX_AUTO_BATCH_BYTES and size > 1:
        size = max(1, size * MAX_AUTO_BATCH_BYTES // len(blob))
        if size == 1:
            return encode(items, plain, 1, auto, types)
        blob = dumps((plain, items[:size]))
    return size, _batch_parts(items, plain, size, atoms, blob), False


def _batch_parts(
    items: list | range, plain: Any, size: int, atoms: bool, first_blob: bytes
) -> Iterator[tuple[list[bytes], bool]]:
    """``encode``'s parts of batches of ``size``, the first batch encoded."""
    n = len(items)
    if n == 1:
        # A runner call of one element carries that element's own input.
        yield encode_each(plain, items, atoms), False
        return
    dumps = _dump_atoms if atoms else _dumps
    part, part_bytes, target = [first_blob], len(first_blob), FIRST_PART_BYTES
    first = size
    while first < n:
        if part_bytes >= target or len(part) >= MAX_PART_CALLS:
            yield part, True
            part, part_bytes, target = [], 0, min(2 * target, MAX_PART_BYTES)
        if n - first == 1:
            blob = encode_each(plain, items[first:], atoms, first)[0]
        else:
            blob = dumps((plain, items[first : first + size]))
        part.append(blob)
        part_bytes += len(blob)
        first += size
    yield part, False


# Elements whose inputs are this big on average are pickled in one pass
# (see `_serialize.dump_input`).
BIG_INPUT_BYTES = 64 << 10


def _each_parts(plain: Any, items: list | range, atoms: bool) -> Iterator[tuple[list[bytes], bool]]:
    """``encode``'s parts of one input per element. Elements are encoded
    in slices sized from the mean input so far (at most doubling from one
    slice to the next, so that a map of big elements closes its first part
    after the first few). A part of small inputs closes at MAX_PART_CALLS:
    its bytes objects go once the engine has their contents, so the
    client never holds one per call of a big map."""
    n = len(items)
    part: list[bytes] = []
    part_bytes, total_bytes, target = 0, 0, FIRST_PART_BYTES
    at, step, big = 0, 1, False
    while at < n:
        if part_bytes >= target or len(part) >= MAX_PART_CALLS:
            yield part, True
            part, part_bytes, target = [], 0, min(2 * target, MAX_PART_BYTES)
        step = min(step, MAX_PART_CALLS - len(part))
        blobs = encode_each(plain, items[at : at + step], atoms, at, big)
        got = sum(map(len, blobs))
        part += blobs
        part_bytes += got
        total_bytes += got
        at += len(blobs)
        mean = max(1, total_bytes // at)
        big = mean >= BIG_INPUT_BYTES
        room = target - part_bytes if part_bytes < target else min(2 * target, MAX_PART_BYTES)
        step = max(1, min(2 * step, room // mean + 1))
    yield part, False


def encode_each(
    plain: Any, items: list | range, atoms: bool = False, start: int = 0, big: bool = False
) -> list[bytes]:
    """One input per element: ``(args, kwargs)`` pickled (``atoms``: as in
    ``encode``; ``start``: the index of the first, for errors; ``big``: the
    elements are likely large, see ``dump_input``)."""
    from ._serialize import dump_input, refers_by_value

    if plain == EXPAND:
        return [dump_input(*element_args(e, None, i), i, big) for i, e in enumerate(items, start)]
    if plain and not big:
        dumps = pickle.dumps
        try:
            blobs = [dumps(((e,), _NO_KWARGS), PROTOCOL) for e in items]
        except Exception:  # noqa: BLE001 - the general path names the bad element
            blobs = None
        if blobs is not None:
            if not atoms:
                # A class or function named by reference may need to go by
                # value (bytes and strs may hold the opcode's byte by chance).
                for j, blob in enumerate(blobs):
                    if refers_by_value(((items[j],), _NO_KWARGS), blob):
                        blobs[j] = dump_input((items[j],), {}, start + j)
            return blobs
    if plain:
        return [dump_input((e,), {}, i, big) for i, e in enumerate(items, start)]
    return [dump_input(args, kwargs, i, big) for i, (args, kwargs) in enumerate(items, start)]


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
