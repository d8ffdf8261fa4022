"""``FunctionExecutor``: the Lithops/PyWren executor API on quelea's engine."""

from __future__ import annotations

import collections
import json
import os
import sys
import weakref
from collections.abc import Callable, Iterable, Iterator

from . import _batch, _engine, _fork, _iterdata, _lithops_config, _output, _progress
from . import _serialize as ser
from ._storage_kinds import storage_names
from ._wait import _check_return_when, _group, cancel_on_interrupt, collect_results, engine_wait, lazy_results
from ._wait import wait as _wait_futures
from .exceptions import ConfigError
from .future import ALL_COMPLETED, FuturesList, ResponseFuture

# Not `from typing import Any`: typing costs a client's start-up ~3 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


# Storage names (quelea's, Lithops', schemes) come from the storage crate.
_LITHOPS_STORAGES = storage_names()
# Validation of every element costs ~10 us; beyond this many, only a sample
# is checked here and the rest fail in the worker with the same TypeError.
_VALIDATE_ALL_UP_TO = 2000
# Read lists of futures an executor keeps whoever else holds them.
KEEP_READ_LISTS = 64


_translate_lithops = _lithops_config.translate
_LITHOPS_BACKENDS = _lithops_config.LITHOPS_BACKENDS


def _deep_merged(base: dict, top: dict) -> dict:
    """``base`` with ``top``'s settings over it, section by section."""
    out = dict(base)
    for key, value in top.items():
        out[key] = (
            _deep_merged(out[key], value)
            if isinstance(value, dict) and isinstance(out.get(key), dict)
            else value
        )
    return out


_name = _lithops_config.name


def config_overrides(
    config: dict | None = None,
    backend: str | None = None,
    storage: str | None = None,
    max_workers: int | None = None,
    extras: dict | None = None,
    **kwargs: Any,
) -> dict:
    """The explicit config layer from FunctionExecutor's arguments
    (``extras`` receives what is not an engine setting: ``log_level``)."""
    if config is not None and not isinstance(config, dict):
        raise ConfigError(f"config must be a dict, got {type(config).__name__}")
    overrides = _translate_lithops(config or {})
    # `lithops.log_level` is the executor's (see FunctionExecutor), not the engine's.
    log_level = overrides.pop(_lithops_config.LOG_LEVEL, False)
    if extras is not None:
        extras["log_level"] = log_level
    if backend is not None:
        overrides["backend"] = _name(backend, _LITHOPS_BACKENDS, "backend")
    if storage is not None:
        overrides["storage"] = _name(storage, _LITHOPS_STORAGES, "storage")
    if max_workers is not None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigError(f"max_workers must be a positive integer, got {max_workers!r}")
        overrides.setdefault("local", {})["workers"] = max_workers
    for key, value in kwargs.items():
        if value is None:
            continue
        if key == "runtime_memory":
            # Every job's runner memory limit, unless a call gives its own.
            overrides.setdefault("execution", {})["memory_limit_mb"] = _memory(value, "runtime_memory")
            continue
        if key in ("runtime", "worker_processes", "remote_invoker", "invoke_pool_threads"):
            continue  # serverless-only Lithops settings: no meaning on the local backend
        raise TypeError(f"FunctionExecutor() got an unexpected keyword argument {key!r}")
    return overrides


def _to_list(iterdata: Any) -> list | range:
    """The elements of iterdata; a range stays one (it pickles as three ints)."""
    if isinstance(iterdata, list | range):
        return iterdata
    if isinstance(iterdata, set | frozenset):
        return list(iterdata)
    if isinstance(iterdata, tuple):
        return list(iterdata)  # iterdata, not one call's arguments (see _iterdata)
    if isinstance(iterdata, (str, bytes, dict)) or not isinstance(iterdata, Iterable):
        return [iterdata]
    return list(iterdata)  # generators and other iterators


_element_args = _batch.element_args
_INTS = frozenset({int})


_NO_KWARGS: dict = {}
_DEFAULT_OBJ = {"chunk_size": None, "chunk_number": None, "newline": "\n", "header": False}


# A map's elements as calls (see ``_calls``); ``types``: the elements'
# types when each is the single argument (see _batch.encode).
_Calls = collections.namedtuple("_Calls", "plain items types", defaults=(None,))


# A map over partitioned data: one input per chunk, chunks per object.
_Objects = collections.namedtuple("_Objects", "inputs parts")


def _calls(
    func: Callable, shape: ser.CallShape, elements: list, extra_args: Any, types: set[type] | None = None
) -> _Calls:
    """Checks the elements against the function; returns ``(True, elements)``
    when each is the single argument, ``(EXPAND, elements)`` when the runners
    expand them (a big map: no scan of every element here), else ``(False,
    [(args, kwargs), ...])``. ``types``: the elements' types, if known."""
    if extra_args is None and isinstance(elements, range):
        _check_one(shape, func, elements[0])
        return _Calls(True, elements, _INTS)
    if types is None:
        types = _iterdata.element_types(elements)
    if extra_args is None and not any(issubclass(t, dict | tuple) for t in types):
        # The common case, one plain argument per call.
        _check_one(shape, func, elements[0])
        return _Calls(True, elements, types)
    sig = shape.sig
    # Dicts carrying a function's *args/**kwargs are expanded here (see _iterdata).
    var_sig = _iterdata.var_signature(func, sig)
    var_dicts = var_sig is not None and any(issubclass(t, dict) for t in types)
    if extra_args is None and len(elements) > _VALIDATE_ALL_UP_TO and not var_dicts:
        if sig is not None:
            # The first 100 are checked, once per shape (binding is slow).
            shapes = set()
            for i, elem in enumerate(elements[:100]):
                shape = _shape(elem)
                if shape not in shapes:
                    shapes.add(shape)
                    _bind_or_raise(sig, func, *_element_args(elem, None, i), i)
        return _Calls(_batch.EXPAND, elements)
    check = len(elements) <= _VALIDATE_ALL_UP_TO
    items = []
    for i, elem in enumerate(elements):
        args, kwargs = _element_args(elem, extra_args, i)
        if var_dicts and isinstance(elem, dict):
            args, kwargs = _iterdata.expand_var_keys(var_sig, kwargs, i)
        if sig is not None and (check or i < 100):
            _bind_or_raise(sig, func, args, kwargs, i)
        items.append((args, kwargs))
    return _Calls(False, items)


def _shape(elem: Any) -> Any:
    """What decides whether an element binds to a signature."""
    if isinstance(elem, dict):
        return (dict, tuple(elem))
    if isinstance(elem, tuple):
        return (tuple, len(elem))
    return None


def _check_one(shape: ser.CallShape, func: Callable, arg: Any) -> None:
    """Raises unless one positional argument fits the function."""
    if not shape.one_fits and shape.sig is not None:
        _bind_or_raise(shape.sig, func, (arg,), {}, 0)


def _bind_or_raise(sig: Any, func: Callable, args: tuple, kwargs: dict, index: int) -> None:
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"map_iterdata[{index}] does not fit {ser.function_name(func)}{sig}: {e}") from None


class FunctionExecutor:
    """Runs Python functions on quelea, with the Lithops ``FunctionExecutor`` API.

    ``config`` is a dict shaped like quelea's YAML config (Lithops-shaped dicts
    with ``lithops``/``localhost`` sections are translated); ``backend``,
    ``storage`` and ``max_workers`` override it.
    """

    def __init__(
        self,
        mode: str | None = None,
        config: dict | None = None,
        config_file: str | None = None,
        backend: str | None = None,
        storage: str | None = None,
        monitoring: str | None = None,
        log_level: Any = False,
        max_workers: int | None = None,
        **kwargs: Any,
    ):
        if mode not in (None, "localhost", "local", "serverless"):
            raise ConfigError(f"mode {mode!r} is not one of 'localhost' or 'serverless'")
        config, config_file, source = _lithops_config_layer(config, config_file)
        extras: dict = {}
        try:
            self._overrides = config_overrides(config, backend, storage, max_workers, extras=extras, **kwargs)
        except ConfigError as e:
            if source is None:
                raise
            _lithops_config.logger().error("quelea: refused the Lithops config in %s: %s", source, e)
            raise ConfigError(f"{e} (in the Lithops config {source})") from None
        if source is not None:
            _lithops_config.logger().info(
                "quelea: read the Lithops config in %s: took %s", source, _lithops_config.keys_of(config)
            )
        level, self._output = _output.resolve(log_level, extras.get("log_level", False))
        _output.setup_logger(level)
        self._log_level = _output.level_name(level)
        text = json.dumps(self._overrides) if self._overrides else None
        if _in_worker():
            # A nested executor works where its caller does (the runner's config:
            # same storage and backend) unless told otherwise, and keeps its
            # jobs' objects: the caller reads them.
            base = json.loads(os.environ.get("QUELEA_RUNNER_CONFIG") or "{}")
            self._overrides = _deep_merged(base, self._overrides)
            self._overrides.setdefault("execution", {})["data_cleaner"] = False
            text = json.dumps(self._overrides)
        self._config_file = config_file
        self._nested = _in_worker()
        # The first local runners are forks of this process, made before the
        # engine starts its threads (see _fork); they pass to the engine at
        # prestart below.
        forked = [] if self._nested else _fork.fork_runners(_engine.runners_to_fork(text, config_file))
        try:
            self._engine = _engine.Executor(sys.executable, text, config_file)
        except BaseException:
            _fork.discard(forked)
            raise
        self.executor_id = self._engine.id
        resolved = self.config
        self._backend = resolved.get("backend", "local")
        if mode == "serverless" and self._backend == "local":
            self._engine.close()
            _fork.discard(forked)
            raise ConfigError(
                "mode='serverless' needs a serverless backend, and the configured one is `local`: "
                "pass backend='aws_lambda' or backend='http' (or set `backend` in the config), "
                "or leave out mode to run on this machine"
            )
        self._workers = int((resolved.get("local") or {}).get("workers") or 1)
        # Every FuturesList this executor made, in order (`futures` flattens
        # them); once read, held weakly: read results are their owner's to
        # keep, so a long session's memory stays flat.
        self._lists: list[Any] = []
        # Where in _lists the lists not yet read in full are: _forget_read
        # looks at these only, not at every map of a long session.
        self._unread: list[int] = []
        self._last_call: str | None = None
        self._storage = None
        self._jobs: list[Any] = []
        # The last read lists, held strongly (see _forget_read).
        self._recent: collections.deque = collections.deque(maxlen=KEEP_READ_LISTS)
        self.cleaned_jobs: set[str] = set()
        if not self._nested:
            # Runners start while the caller prepares its first map.
            self._engine.prestart(forked)
        self._finalizer = weakref.finalize(self, _close_engine, self._engine, self._jobs, self._nested)

    def _engine_executor(self) -> Any:
        return self._engine

    @property
    def futures(self) -> list[ResponseFuture]:
        """Every future of this executor, in submission order."""
        return [f for futures in self._live_lists() for f in futures]

    def _live_lists(self) -> list[FuturesList]:
        lists = (entry.ref() if isinstance(entry, _ReadList) else entry for entry in self._lists)
        return [fs for fs in lists if fs is not None]

    def _unread_entries(self) -> list[FuturesList]:
        """The lists that may hold unread futures (a read one never does)."""
        return [self._lists[i] for i in self._unread]

    def _forget_read(self) -> None:
        """Holds read lists weakly (see _ReadList), except the last
        ``KEEP_READ_LISTS``: those stay, so ``fexec.futures`` right after a
        ``get_result()`` still lists them, as in Lithops, while a long
        session's memory stays bounded."""
        engine = self._engine
        unread = []
        for i in self._unread:
            entry = self._lists[i]
            if _fully_read(entry):
                self._recent.append(entry)
                self._lists[i] = _ReadList(engine, entry)
            else:
                unread.append(i)
        self._unread = unread

    @property
    def config(self) -> dict:
        """The resolved config, secrets redacted, with its Lithops view: the
        ``lithops`` section (backend, storage, mode, ... in Lithops' names)
        and, on the local backend, ``localhost``."""
        resolved = json.loads(self._engine.config_json())
        return {**resolved, **_lithops_config.lithops_sections(resolved, self._log_level)}

    @property
    def backend(self) -> str:
        """The compute backend, by its Lithops name (``localhost``, ``aws_lambda``, ``http``)."""
        return _lithops_config.lithops_sections({"backend": self._backend}, None)["lithops"]["backend"]

    @property
    def mode(self) -> str:
        """``localhost`` on the local backend, else ``serverless`` (Lithops' modes)."""
        return "localhost" if self._backend == "local" else "serverless"

    @property
    def last_call(self) -> str | None:
        """``call_async``, ``map`` or ``map_reduce``: the last submission (None before any)."""
        return self._last_call

    @property
    def storage(self):
        from .storage import Storage

        if self._storage is None:
            self._storage = Storage(config=self._overrides or None, config_file=self._config_file)
        return self._storage

    # -- submitting --------------------------------------------------------------------------------

    def _prepare_objects(self, func: Callable, iterdata: Any, extra_args: Any, obj: dict) -> _Objects:
        """Expands elements whose ``obj`` names data into one call per chunk;
        returns the inputs and the chunk count of each object."""
        from .partition import ChunkObject

        newline = obj["newline"]
        if newline is not None:
            if isinstance(newline, str):
                newline = newline.encode()
            if not isinstance(newline, bytes) or not newline:
                raise ValueError(
                    f"obj_newline must be a non-empty str or bytes, or None; got {obj['newline']!r}"
                )
        size, number = obj["chunk_size"], obj["chunk_number"]
        for name, value in (("obj_chunk_size", size), ("obj_chunk_number", number)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        inputs: list[bytes] = []
        parts: list[int] = []
        for i, elem in enumerate(_to_list(iterdata)):
            if isinstance(elem, str):
                elem = {"obj": elem}
            if not isinstance(elem, dict) or "obj" not in elem:
                raise TypeError(f"map_iterdata[{i}] must name data: a str, or a dict with an 'obj' key")
            others = {k: v for k, v in elem.items() if k != "obj"}
            if extra_args is not None:
                if not isinstance(extra_args, dict):
                    raise TypeError("with an `obj` parameter, extra_args must be a dict")
                others.update(extra_args)
            names = elem["obj"] if isinstance(elem["obj"], list) else [elem["obj"]]
            if not all(isinstance(n, str) for n in names):
                raise TypeError(
                    f"map_iterdata[{i}]['obj'] must be a str (or list of str), got {elem['obj']!r}"
                )
            chunks, counts = self._engine.partition(names, size, number, newline, obj["header"])
            parts.extend(counts)
            for chunk in chunks:
                inputs.append(ser.dump_input((), {"obj": ChunkObject(chunk), **others}, len(inputs)))
        if not inputs:
            raise ValueError("map_iterdata is empty: there is nothing to map")
        return _Objects(inputs, parts)

    def _prepare(
        self, func: Callable, iterdata: Any, extra_args: Any, what: str, obj: dict | None = None
    ) -> Any:
        if not callable(func):
            raise TypeError(f"{what} must be callable, got {type(func).__name__}")
        if isinstance(iterdata, FuturesList):
            # Chaining: the previous calls' results become this map's input.
            results = collect_results_after_wait(iterdata)
            iterdata = list(results)
            types = None
        else:
            types = _iterdata.element_types(iterdata)
            if (chained := _iterdata.chained_futures(iterdata, types)) is not None:
                # A slice of a FuturesList, or a list of futures: chaining too.
                iterdata = list(collect_results_after_wait(FuturesList(chained, self)))
                types = None
        elements = _to_list(iterdata)
        if not elements:
            raise ValueError("map_iterdata is empty: there is nothing to map")
        shape = ser.call_shape(func)
        if shape.takes_obj:
            return self._prepare_objects(func, elements, extra_args, obj or _DEFAULT_OBJ)
        return _calls(func, shape, elements, extra_args, types)

    def _payload(
        self,
        func: Callable,
        extra_env: dict | None,
        reduce_extra_args: tuple | None = None,
        calls: int = 1,
        raw_input: bool = False,
    ) -> bytes:
        env = {}
        for key, value in (extra_env or {}).items():
            if not isinstance(key, str):
                raise TypeError(f"extra_env keys must be strings, got {key!r}")
            env[key] = str(value)
        payload = ser.FunctionPayload(
            func=func,
            name=ser.function_name(func),
            extra_env=env,
            reserved=ser.call_shape(func).reserved,
            reduce_extra_args=reduce_extra_args,
            output=_output.payload_output(self._output, calls),
            raw_input=raw_input,
        )
        return ser.dump_function(payload)

    def _futures(self, job: Any, func: Callable) -> FuturesList:
        if self._nested:
            # Waited for at close (see _close_engine); finished ones are done with.
            self._jobs[:] = [j for j in self._jobs if j.done_count() < j.total]
            self._jobs.append(job)
        futures = FuturesList._of_job(job, ser.function_name(func), self)
        self._unread.append(len(self._lists))
        self._lists.append(futures)
        if os.environ.get("QUELEA_DASHBOARD_URL"):  # `quelea dashboard` runs there
            url = os.environ["QUELEA_DASHBOARD_URL"].rstrip("/")
            print(f"quelea: {url}/job/{job.executor_id}-{job.job_id}", file=sys.stderr)
        return futures

    def _batches(
        self, prepared: Any, chunksize: int | None, timeout: Any, memory: Any
    ) -> tuple[Iterator[tuple[list[bytes], bool]], int, int | None, bool, int]:
        """The runner calls of a map: ``(parts, chunksize, total, raw,
        calls)``, where ``parts`` yields their inputs a part at a time, each
        with whether more follow (see ``_batch.encode``), ``total`` is set
        when the inputs are batches in Python's encoding (the engine decides
        the size, see ``Executor::chunksize_for``), ``raw`` when each input
        is its call's bytes argument itself, and ``calls`` counts the
        elements."""
        if isinstance(prepared, _Objects):
            # Chunks are encoded one by one; the engine frames any batches.
            return iter([(prepared.inputs, False)]), chunksize, None, False, len(prepared.inputs)
        plain, items, types = prepared
        size = self._engine.chunksize_for(len(items), chunksize, timeout, memory)
        size, parts, raw = _batch.encode(items, plain, size, auto=chunksize is None, types=types)
        return parts, size, len(items), raw, len(items)

    def _fed(self, payload: bytes, name: str, first: list, rest: Iterator, size: int, *options: Any) -> Any:
        """Submits a map whose inputs are still being encoded: each part
        goes to the engine as soon as it is ready (``first``, then those of
        ``rest``), and the first calls run while the client pickles the
        others. An encoding that fails (or a Ctrl-C) cancels the calls
        already sent before the error goes on."""
        job, feed = self._engine.submit_fed(name, payload, size, *options)
        try:
            feed.send(first)
            del first
            for inputs, _ in rest:
                feed.send(inputs)
            feed.finish()
        except BaseException as e:
            feed.abandon(f"its inputs stopped at {type(e).__name__}: {e}")
            raise
        return job

    @staticmethod
    def _timeout(timeout: Any) -> float | None:
        if timeout is None:
            return None
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        return float(timeout)

    @staticmethod
    def _chunksize(chunksize: Any) -> int | None:
        if chunksize is None:
            return None
        if isinstance(chunksize, bool) or not isinstance(chunksize, int) or chunksize < 1:
            raise ValueError(f"chunksize must be a positive integer, got {chunksize!r}")
        return chunksize

    def call_async(
        self,
        func: Callable,
        data: Any,
        extra_env: dict | None = None,
        runtime_memory: int | None = None,
        timeout: float | None = None,
        include_modules: list | None = None,
        exclude_modules: list | None = None,
        detach: bool = False,
        retries: int | None = None,
        retry_user_errors: bool | None = None,
    ) -> ResponseFuture:
        """Runs ``func`` once on ``data`` (a tuple: positional args; a dict: kwargs).
        ``detach=True``: the call outlives this executor and process (see ``map``);
        ``retries`` and ``retry_user_errors`` as for ``map``."""
        prepared = self._prepare(func, [data], None, "func")
        inputs = (
            prepared.inputs
            if isinstance(prepared, _Objects)
            else _batch.encode_each(prepared.plain, prepared.items)
        )
        job = self._engine.submit(
            "call_async",
            ser.function_name(func),
            self._payload(func, extra_env),
            inputs,
            None,
            self._timeout(timeout),
            _memory(runtime_memory, "runtime_memory"),
            None,
            _flag(detach, "detach"),
            *_retry_args(retries, retry_user_errors),
        )
        self._last_call = "call_async"
        return self._futures(job, func)[0]

    def map(
        self,
        map_function: Callable,
        map_iterdata: Any,
        chunksize: int | None = None,
        extra_args: Any = None,
        extra_env: dict | None = None,
        runtime_memory: int | None = None,
        obj_chunk_size: int | None = None,
        obj_chunk_number: int | None = None,
        obj_newline: str | None = "\n",
        timeout: float | None = None,
        include_modules: list | None = None,
        exclude_modules: list | None = None,
        obj_header: bool = False,
        detach: bool = False,
        retries: int | None = None,
        retry_user_errors: bool | None = None,
    ) -> FuturesList:
        """Runs ``map_function`` once per element of ``map_iterdata``.

        A function with an ``obj`` parameter runs once per chunk of the data
        each element names (see :mod:`quelea.partition`); ``obj_header=True``
        gives every chunk the object's first line as ``obj.header``.

        ``detach=True``: the job outlives this executor and this process (on
        the local backend it runs in a host process of its own). Any process
        can ``quelea.attach(fexec.job_handle(futures))`` to follow it, read
        its results or ``quelea.cancel`` it; ``quelea.clean_job`` deletes its
        objects once read.

        ``retries=N`` (default: the config's ``execution.retries``) runs a
        call that failed again, up to N times: after a timeout, running out
        of memory, a crashed runner or a lost call, and after an exception
        of the function too with ``retry_user_errors=True``. A future then
        has one outcome, its last attempt's; ``stats["attempt"]`` says which.
        """
        obj = _obj_options(obj_chunk_size, obj_chunk_number, obj_newline, obj_header)
        prepared = self._prepare(map_function, map_iterdata, extra_args, "map_function", obj)
        timeout, chunksize = self._timeout(timeout), self._chunksize(chunksize)
        runtime_memory = _memory(runtime_memory, "runtime_memory")
        parts, size, total, raw, calls = self._batches(prepared, chunksize, timeout, runtime_memory)
        name = ser.function_name(map_function)
        payload = self._payload(map_function, extra_env, calls=calls, raw_input=raw)
        options = (
            timeout,
            runtime_memory,
            total,
            _flag(detach, "detach"),
            *_retry_args(retries, retry_user_errors),
        )
        inputs, more = next(parts)
        if more:
            job = self._fed(payload, name, inputs, parts, size, *options)
        else:
            job = self._engine.submit("map", name, payload, inputs, size, *options)
        self._last_call = "map"
        return self._futures(job, map_function)

    def map_reduce(
        self,
        map_function: Callable,
        map_iterdata: Any,
        reduce_function: Callable,
        chunksize: int | None = None,
        extra_args: Any = None,
        extra_args_reduce: Any = None,
        extra_env: dict | None = None,
        map_runtime_memory: int | None = None,
        reduce_runtime_memory: int | None = None,
        timeout: float | None = None,
        obj_chunk_size: int | None = None,
        obj_chunk_number: int | None = None,
        obj_newline: str | None = "\n",
        obj_reduce_by_key: bool = False,
        spawn_reducer: int = 20,
        include_modules: list | None = None,
        exclude_modules: list | None = None,
        obj_header: bool = False,
        detach: bool = False,
    ) -> FuturesList:
        """Maps, then calls ``reduce_function(results, *extra_args_reduce)`` on all
        map results in call order. ``get_result()`` returns the reducer's result.

        The reducer starts as soon as the map is done (``spawn_reducer`` is
        accepted for compatibility; locally there is no cold start to hide).
        """
        obj = _obj_options(obj_chunk_size, obj_chunk_number, obj_newline, obj_header)
        _check_return_when(spawn_reducer)
        if not callable(reduce_function):
            raise TypeError(f"reduce_function must be callable, got {type(reduce_function).__name__}")
        if extra_args_reduce is not None and not isinstance(extra_args_reduce, tuple):
            extra_args_reduce = (extra_args_reduce,)
        prepared = self._prepare(map_function, map_iterdata, extra_args, "map_function", obj)
        parts = prepared.parts if isinstance(prepared, _Objects) else None
        if obj_reduce_by_key and parts is None:
            raise ValueError("obj_reduce_by_key needs a map function with an `obj` parameter")
        timeout = self._timeout(timeout)
        memory = _memory(map_runtime_memory, "map_runtime_memory") or _memory(
            reduce_runtime_memory, "reduce_runtime_memory"
        )
        encoded, size, total, raw, calls = self._batches(
            prepared, self._chunksize(chunksize), timeout, memory
        )
        # The reduce job is made with the map's: its inputs go whole.
        inputs = [blob for part, _ in encoded for blob in part]
        groups = parts if obj_reduce_by_key else [calls]
        map_job, reduce_job = self._engine.map_reduce_grouped(
            ser.function_name(map_function),
            self._payload(map_function, extra_env, calls=calls, raw_input=raw),
            inputs,
            ser.function_name(reduce_function),
            self._payload(
                reduce_function, extra_env, reduce_extra_args=extra_args_reduce or (), calls=len(groups)
            ),
            groups,
            size,
            timeout,
            memory,
            total,
            _flag(detach, "detach"),
        )
        self._last_call = "map_reduce"
        map_futures = self._futures(map_job, map_function)
        for f in map_futures:
            f._read = True
            f._produce_output = False
        reduce_futures = self._futures(reduce_job, reduce_function)
        return FuturesList(list(map_futures) + list(reduce_futures), self)

    # -- waiting -----------------------------------------------------------------------------------

    @_progress.option
    def wait(
        self,
        fs: Any = None,
        throw_except: bool = True,
        return_when: int = ALL_COMPLETED,
        download_results: bool = False,
        timeout: float | None = None,
        threadpool_size: int = 64,
        wait_dur_sec: float | None = None,
        show_progressbar: bool = True,
    ) -> tuple[FuturesList, FuturesList]:
        """Waits on futures (default: all of this executor's); returns ``(done, not_done)``."""
        futures = self.futures if fs is None else fs
        return _wait_futures(
            futures if isinstance(futures, FuturesList) else FuturesList(_listify(futures), self),
            throw_except=throw_except,
            return_when=return_when,
            timeout=timeout,
            show_progressbar=show_progressbar,
        )

    @_progress.option
    def get_result(
        self,
        fs: Any = None,
        throw_except: bool = True,
        timeout: float | None = None,
        threadpool_size: int = 64,
        wait_dur_sec: float | None = None,
        show_progressbar: bool = True,
    ) -> Any:
        """Results in call order. With ``fs=None``: this executor's results not
        read yet. A ``map`` gives a list; ``call_async`` and ``map_reduce`` a value."""
        futures: list[ResponseFuture] = []
        timeout = self._timeout(timeout) if timeout else None
        try:
            # Whole maps whose futures were never made: results without futures.
            if fs is None:
                lazy = self._unread_lists()
                if len(lazy) != len(self._unread_lists(all_kinds=True)):
                    lazy = []
            else:
                lazy = [fs] if _unread_lazy(fs) else []
            results = lazy_results(lazy, timeout) if lazy else None
            if results is not None:
                return self._shape(fs, results)
            if fs is None:
                futures = [f for fs_ in self._unread_entries() for f in fs_ if not f._read]
            else:
                futures = [f for f in _listify(fs) if f._produce_output]
            if not futures:
                return []
            engine_wait(_group(futures), float(ALL_COMPLETED), timeout)
            results = collect_results(futures, throw_except, timeout)
        except KeyboardInterrupt:
            # Wherever Ctrl-C lands, the jobs waited on (or all of this
            # executor's unfinished ones) are cancelled.
            cancel_on_interrupt(futures or [f for f in self.futures if not f.done])
            raise
        finally:
            self._forget_read()
        return self._shape(fs, results)

    def _shape(self, fs: Any, results: list) -> Any:
        single = self._last_call in ("call_async", "map_reduce") and len(results) == 1
        if single or isinstance(fs, ResponseFuture):
            return results[0]
        return results

    def _unread_lists(self, all_kinds: bool = False) -> list:
        """Lists of futures not made yet and not read; with ``all_kinds``,
        also every list holding an unread future."""
        out = []
        for futures in self._unread_entries():
            if _unread_lazy(futures):
                out.append(futures)
            elif all_kinds and futures._job_source() is None and any(not f._read for f in futures):
                out.append(futures)
        return out

    def job_summary(self) -> list[dict]:
        """One row per job: calls, successes, errors, and timing."""
        rows: dict[str, dict] = {}
        for entry in self._lists:
            if isinstance(entry, _ReadList):
                row = entry.summary()
            else:
                row = _summary_row(self._engine, *_job_and_name(entry))
            rows.setdefault(row["job_key"], row)
        return list(rows.values())

    def plot(self, fs: Any = None, dst: Any = None, figsize: tuple = (10, 6)) -> tuple[str, str]:
        """Lithops' timeline and histogram PNGs of these futures (default: all); needs ``quelea[plot]``."""
        from .plot import plot

        return plot(self.futures if fs is None else _listify(fs), dst, figsize)

    def job_handle(self, fs: Any) -> str:
        """A JSON handle another process can ``quelea.attach``."""
        future = fs if isinstance(fs, ResponseFuture) else _listify(fs)[0]
        return self._handle_of(future._job)

    def _handle_of(self, job: Any) -> str:
        return self._engine.job_handle(job)

    def cancel(self, fs: Any = None) -> None:
        """Cancels the jobs of these futures (default: all unfinished)."""
        futures = self.futures if fs is None else _listify(fs)
        seen = set()
        for f in futures:
            if id(f._job) not in seen:
                seen.add(id(f._job))
                f._job.cancel()

    def clean(
        self,
        fs: Any = None,
        cs: Any = None,
        clean_cloudobjects: bool = True,
        clean_fn: bool = False,
        force: bool = False,
        on_exit: bool = False,
    ) -> int:
        """Deletes the storage objects of finished jobs and the cloudobjects
        ``cs`` (one or a list, from ``storage.put_cloudobject``); returns how
        many objects went. The jobs cleaned are added to ``cleaned_jobs``.
        Every finished job of this executor is cleaned, whatever ``fs``."""
        deleted = 0
        if cs is not None:
            from .storage import CloudObject

            objects = [cs] if isinstance(cs, CloudObject) else list(cs)
            for i, co in enumerate(objects):
                if not isinstance(co, CloudObject):
                    raise TypeError(f"cs[{i}] is a {type(co).__name__}, not a CloudObject")
            self.storage.delete_cloudobjects(objects)
            deleted += len(objects)
        finished = self._finished_job_keys()
        deleted += self._engine.clean()
        self.cleaned_jobs.update(finished)
        return deleted

    def _finished_job_keys(self) -> set[str]:
        """The job keys of this executor's finished jobs (without making futures)."""
        keys: set[str] = set()
        for entry in self._lists:
            if isinstance(entry, _ReadList):
                if entry.job is None:  # read, and its list is gone: finished
                    if entry.row and entry.row.get("job_key"):
                        keys.add(entry.row["job_key"])
                    continue
                jobs = [entry.job]
            else:
                lazy = entry._job_source()
                jobs = [lazy[0]] if lazy is not None else list({id(f._job): f._job for f in entry}.values())
            keys.update(f"{j.executor_id}-{j.job_id}" for j in jobs if j.done_count() == j.total)
        return keys

    def runner_pids(self) -> list[int]:
        return self._engine.runner_pids()

    def host_pid(self) -> int | None:
        """The pid of the process running this executor's detached jobs, if any."""
        return self._engine.host_pid()

    def close(self) -> None:
        """Stops the runners (and, with ``data_cleaner``, deletes finished jobs' objects)."""
        self._finalizer()

    def __enter__(self) -> FunctionExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<quelea.FunctionExecutor {self.executor_id}>"


def _lithops_config_layer(config: Any, config_file: Any) -> tuple[Any, Any, str | None]:
    """``(config, config_file, source)``: a Lithops-shaped ``config_file`` is
    read as a ``config`` dict (under the given one); with no config at all,
    the Lithops config file a Lithops program would read (see
    ``_lithops_config.from_files``); ``source`` names where it came from."""
    if config_file is not None and _lithops_config.is_lithops_file(config_file):
        data = _lithops_config.load_file(config_file)
        return _deep_merged(data, config or {}), None, str(config_file)
    if config is None and config_file is None and not _in_worker():
        found = _lithops_config.from_files()
        if found is not None:
            return found[0], None, found[1]
    return config, config_file, None


def _retry_args(retries: Any, retry_user_errors: Any) -> tuple[int | None, bool | None]:
    """A job's ``retries`` and ``retry_user_errors``, checked."""
    if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 0):
        raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
    if retry_user_errors is not None and not isinstance(retry_user_errors, bool):
        raise ValueError(f"retry_user_errors must be True or False, got {retry_user_errors!r}")
    return retries, retry_user_errors


def _close_engine(engine: Any, jobs: list, in_worker: bool) -> None:
    if in_worker and jobs:
        # A nested executor in a worker lets its jobs finish: the caller may be
        # following them through storage (futures a function returned).
        engine_wait([(job, None) for job in jobs], float(ALL_COMPLETED), None)
        engine.flush_statuses()
    engine.close()


def _in_worker() -> bool:
    # A runner imported quelea.worker to serve; a client need not import it
    # to learn that it is not one.
    worker = sys.modules.get("quelea.worker")
    return worker is not None and worker.in_worker


def _listify(fs: Any) -> list[ResponseFuture]:
    if isinstance(fs, ResponseFuture):
        return [fs]
    return list(fs)


def collect_results_after_wait(futures: FuturesList) -> list:
    if _unread_lazy(futures) or futures._job_source() is not None:
        results = lazy_results([futures], None)
        if results is not None:
            return results
    engine_wait(_group(list(futures)), float(ALL_COMPLETED), None)
    return collect_results(list(futures), True, None)


class _ReadList:
    """A read list of futures, held weakly: its results are its owner's to
    keep. When it goes, its job's summary row (a few numbers, read run by
    run, kept as a tuple: a dict costs three times as much) is all the
    executor keeps, so a long session's memory stays nearly flat."""

    __slots__ = ("engine", "job", "name", "ref", "row")

    def __init__(self, engine: Any, futures: FuturesList):
        self.engine = engine
        self.job, name = _job_and_name(futures)
        self.name = sys.intern(name)
        self.row: tuple | None = None
        self.ref = weakref.ref(futures, self._gone)

    def _gone(self, _ref: Any) -> None:
        row = _summary_row(self.engine, self.job, self.name)
        self.row = tuple(row.get(key) for key in _ROW_KEYS)
        self.job = None

    def summary(self) -> dict:
        if self.job is not None:
            return _summary_row(self.engine, self.job, self.name)
        pairs = zip(_ROW_KEYS, self.row, strict=True)
        return {key: value for key, value in pairs if key != "cost" or value is not None}


def _job_and_name(futures: FuturesList) -> tuple[Any, str]:
    lazy = futures._job_source()
    if lazy is not None:
        return lazy[0], lazy[1]
    return futures[0]._job, futures[0].function_name


_ROW_KEYS = (
    "job_key",
    "function",
    "calls",
    "runner_calls",
    "success",
    "error",
    "submitted",
    "wall_time",
    "total_exec_time",
    "cost",
)


def _summary_row(engine: Any, job: Any, name: str) -> dict:
    try:
        cost = engine.job_cost(job)
    except ValueError:  # the executor is closed: no cost estimate
        cost = None
    return {
        "job_key": f"{job.executor_id}-{job.job_id}",
        "function": name,
        **job.summary(),
        **({"cost": cost} if cost else {}),
    }


def _fully_read(fs: FuturesList) -> bool:
    lazy = fs._job_source()
    if lazy is not None:
        return lazy[2]
    return all(f._read for f in fs)


def _unread_lazy(fs: Any) -> bool:
    lazy = fs._job_source() if isinstance(fs, FuturesList) else None
    return lazy is not None and not lazy[2]


def _memory(value: Any, name: str) -> int | None:
    """A memory limit in MiB: a positive integer, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive whole number of MiB, got {value!r}")
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _obj_options(chunk_size: Any, chunk_number: Any, newline: Any, header: Any) -> dict:
    if not isinstance(header, bool):
        raise TypeError(f"obj_header must be a bool, got {header!r}")
    return {"chunk_size": chunk_size, "chunk_number": chunk_number, "newline": newline, "header": header}
