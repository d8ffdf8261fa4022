"""Bundles: several map elements to one engine call.

A call costs a few microseconds of bookkeeping on each side (a frame, a
pickle, a status). For functions that take microseconds that is the whole
cost, so ``map`` packs elements into bundles, as ``multiprocessing.Pool``
packs its chunks: explicitly with ``chunksize=K`` (Lithops' "calls per
invocation"), and by default on the local backend for large maps with no
per-call ``timeout`` or ``runtime_memory`` (``chunksize=1`` turns it off).

Each element keeps its own outcome: the runner catches every element's
exception, its result and its printed output separately (see
``quelea._serialize`` for the encodings). What a bundle shares is what
happens to its process: a crash, the memory limit or the timeout. So when a
bundle fails that way, its elements run again one per call
(:meth:`BundledJob.settle`), and only the element that caused it fails, with
its own reason. Elements that ran before the failure run twice.

:class:`BundledJob` presents such a job with the interface of
``_engine.Job`` that futures use, indexed by element.
"""

from __future__ import annotations

import base64
import json
import pickle
from collections.abc import Callable
from typing import Any

from . import _engine
from ._serialize import PROTOCOL

# Failures of a bundle's process rather than of one element's code.
_ISOLATE = ("worker_crashed", "out_of_memory", "timeout")
# Calls per worker process that auto-bundling aims for (as Pool.map does).
BUNDLES_PER_WORKER = 4
# Below this many elements, per-call dispatch costs too little to bother.
AUTO_BUNDLE_MIN = 512
# Automatic bundles of larger inputs than this get fewer elements.
MAX_AUTO_BUNDLE_BYTES = 4 << 20


def auto_size(elements: int, workers: int) -> int:
    """``multiprocessing.Pool.map``'s rule: about four bundles per worker."""
    size, extra = divmod(elements, workers * BUNDLES_PER_WORKER)
    return size + 1 if extra else size


def encode(items: list | range, plain: bool, size: int, auto: bool = False) -> tuple[int, list[bytes]]:
    """Bundle inputs: ``(first element index, plain, items)``, where a plain
    item is the single argument and a general one is ``(args, kwargs)``.
    An automatic size shrinks so that a bundle stays near
    ``MAX_AUTO_BUNDLE_BYTES`` (big elements gain nothing from bundling, and
    one runner would hold them all); returns the size used and the inputs."""
    inputs: list[bytes] = []
    first = 0
    while first < len(items):
        blob = _dumps((first, plain, items[first : first + size]))
        if auto and len(blob) > MAX_AUTO_BUNDLE_BYTES and size > 1 and not inputs:
            size = max(1, size * MAX_AUTO_BUNDLE_BYTES // len(blob))
            continue
        inputs.append(blob)
        first += size
    return size, inputs


def _dumps(value: Any) -> bytes:
    try:
        return pickle.dumps(value, protocol=PROTOCOL)
    except Exception:  # noqa: BLE001 - lambdas, local classes: cloudpickle
        import cloudpickle

        return cloudpickle.dumps(value, protocol=PROTOCOL)


def _element_inputs(bundle_input: bytes) -> list[bytes]:
    """One call's input per element of a bundle (for running them apart)."""
    import cloudpickle

    _first, plain, items = pickle.loads(bundle_input)
    calls = [((item,), {}) for item in items] if plain else [(args, kwargs) for args, kwargs in items]
    return [cloudpickle.dumps(call, protocol=PROTOCOL) for call in calls]


def _error_dict(report: bytes) -> dict:
    error = json.loads(report)
    error["reason"] = "user_error"
    payload = error.get("payload")
    error["payload"] = base64.b64decode(payload) if payload else None
    return error


class BundledJob:
    """A job of ``total`` elements run ``size`` to an engine call.

    ``rerun(first, inputs)`` submits elements again one per call (their
    reserved ``id`` starting at ``first``) and returns the engine job; it is
    ``None`` for a job followed from another process, which cannot.
    """

    def __init__(
        self,
        engine: Any,
        size: int,
        total: int,
        inputs: list[bytes | None] | None,
        rerun: Callable[[int, list[bytes]], Any] | None,
    ):
        self.engine = engine
        self.size = size
        self.total = total
        self._inputs = inputs
        self._rerun = rerun
        # bundle -> decoded result: a list of values (all succeeded quietly)
        # or a list of (ok, blob or error report) entries.
        self._decoded: dict[int, tuple[bool, list]] = {}
        self._reruns: dict[int, Any] = {}

    @property
    def executor_id(self) -> str:
        return self.engine.executor_id

    @property
    def job_id(self) -> str:
        return self.engine.job_id

    def handle_fields(self) -> dict:
        return {"size": self.size, "total": self.total}

    # -- per element ----------------------------------------------------------------------------

    def _decode(self, bundle: int) -> tuple[bool, list]:
        decoded = self._decoded.get(bundle)
        if decoded is None:
            ok, blob = self.engine.outcome(bundle)
            assert ok, "only succeeded bundles are decoded"
            tag = blob[0]
            decoded = (tag == 2, pickle.loads(memoryview(blob)[1:]))
            self._decoded[bundle] = decoded
            if self._inputs is not None:
                self._inputs[bundle] = None  # it ran as a whole: no re-run needed
        return decoded

    def _engine_state(self, bundle: int) -> str:
        state = self.engine.state(bundle)
        if state == "error" and self._isolate(bundle):
            return "rerun"
        return state

    def state(self, index: int) -> str:
        bundle, k = divmod(index, self.size)
        rerun = self._reruns.get(bundle)
        if rerun is not None:
            return rerun.state(k)
        state = self._engine_state(bundle)
        if state == "rerun":
            return self._reruns[bundle].state(k)
        if state == "success":
            values_only, items = self._decode(bundle)
            return "success" if values_only or items[k][0] else "error"
        return state

    def states(self) -> list[str]:
        return [self.state(i) for i in range(self.total)]

    def stats(self, index: int) -> dict:
        bundle, k = divmod(index, self.size)
        rerun = self._reruns.get(bundle)
        stats = dict(rerun.stats(k) if rerun is not None else self.engine.stats(bundle))
        stats["bundle"] = bundle
        return stats

    def outcome(self, index: int) -> tuple | None:
        """``None`` while running; ``(True, blob)``, ``(True, value, logs)``
        (already decoded) or ``(False, error dict)``."""
        bundle, k = divmod(index, self.size)
        if self.state(index) not in ("success", "error"):
            return None
        rerun = self._reruns.get(bundle)
        if rerun is not None:
            outcome = rerun.outcome(k)
            if outcome is not None and not outcome[0]:
                # The re-run's call k is this element: say so in its terms.
                error = dict(outcome[1])
                error["message"] = error["message"].replace(f"call {k:05d}", f"call {index:05d}")
                return (False, error)
            return outcome
        if self.engine.state(bundle) == "error":
            return self.engine.outcome(bundle)
        values_only, items = self._decode(bundle)
        if values_only:
            return (True, items[k], "")
        ok, data = items[k]
        return (True, data) if ok else (False, _error_dict(data))

    def outcomes(self, indices: list[int]) -> list:
        return [self.outcome(i) for i in indices]

    def values(self, indices: list[int] | None) -> list | None:
        """Every element's value when all of them succeeded quietly, else
        ``None``: the fast path of ``get_result``."""
        if self._reruns:
            return None
        bundles = range(self.engine.total) if indices is None else sorted({i // self.size for i in indices})
        if any(self.engine.state(b) != "success" for b in bundles):
            return None
        parts = {}
        for b in bundles:
            values_only, items = self._decode(b)
            if not values_only:
                return None
            parts[b] = items
        if indices is None:
            out: list = []
            for b in bundles:
                out.extend(parts[b])
            return out
        return [parts[i // self.size][i % self.size] for i in indices]

    def cancel(self) -> None:
        self.engine.cancel()
        for rerun in self._reruns.values():
            rerun.cancel()

    # -- waiting ----------------------------------------------------------------------------------

    def wait_items(self, indices: list[int] | None) -> list[tuple[Any, list[int] | None]]:
        """What to wait on in the engine for these elements."""
        if indices is None:
            items: list = [(self.engine, None)]
            items.extend((rerun, None) for rerun in self._reruns.values())
            return items
        direct: set[int] = set()
        rerun_idx: dict[int, list[int]] = {}
        for i in indices:
            bundle, k = divmod(i, self.size)
            if bundle in self._reruns:
                rerun_idx.setdefault(bundle, []).append(k)
            else:
                direct.add(bundle)
        items = [(self.engine, sorted(direct))] if direct else []
        items.extend((self._reruns[b], ks) for b, ks in rerun_idx.items())
        return items

    def settle(self) -> bool:
        """Re-runs the elements of bundles that failed as a process; True if
        it started any (they need waiting for)."""
        started = False
        for bundle, state in enumerate(self.engine.states()):
            if state == "error" and bundle not in self._reruns and self._isolate(bundle):
                started = True
        return started

    def _isolate(self, bundle: int) -> bool:
        """Starts the one-per-call re-run of a failed bundle, if it is one
        to isolate; True if there is one."""
        if bundle in self._reruns:
            return True
        if self._rerun is None or self._inputs is None or self._inputs[bundle] is None:
            return False
        first = bundle * self.size
        count = min(self.size, self.total - first)
        if count < 2:
            return False
        outcome = self.engine.outcome(bundle)
        if outcome is None or outcome[0] or outcome[1]["reason"] not in _ISOLATE:
            return False
        self._reruns[bundle] = self._rerun(first, _element_inputs(self._inputs[bundle]))
        return True


def wait_items(job: Any, indices: list[int] | None) -> list[tuple[Any, list[int] | None]]:
    if isinstance(job, BundledJob):
        return job.wait_items(indices)
    return [(job, indices)]


def engine_wait(groups: list[tuple[Any, Any]], return_when: float, timeout: float | None) -> None:
    """``_engine.wait`` for jobs that may be bundled: when a wait for all of
    them ends with a bundle that failed as a process, waits again for the
    re-run of its elements."""
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        items = [item for job, indices in groups for item in wait_items(job, indices)]
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        _engine.wait(items, return_when, left)
        if return_when != 100.0:
            return
        if not any(isinstance(job, BundledJob) and job.settle() for job, _ in groups):
            return
