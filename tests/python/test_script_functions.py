"""Functions of the user's script (``__main__``) travel by value: the plain
ones without cloudpickle (quelea._funcpickle, so that a client's start-up
does not pay its import), everything else with it. Each case runs as a real
script in a client process of its own, with real runners, and is compared
with what cloudpickle gives for the same script."""

from __future__ import annotations

import json
import types

import cloudpickle
import pytest
from cloudpickle import cloudpickle as cloudpickle_impl

from conftest import run_script
from quelea import _funcpickle

# The modules a client must not have imported after mapping plain script
# functions: each costs its start-up milliseconds (see _funcpickle, _serialize).
HEAVY = ("cloudpickle", "inspect", "dataclasses", "logging", "typing")

PLAIN = """
    import functools, json, math, os, sys, xml.etree.ElementTree
    import quelea

    K = 10
    counter = 0

    def helper(x):
        return x * K

    def f(x, y=3, *, z=4):
        "f's doc"
        return helper(x) + y + z + math.floor(1.5)

    f.tag = "tagged"

    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    def bump(_):
        global counter
        counter += 1
        return counter

    def uses_submodule(_):
        return xml.etree.ElementTree.fromstring("<a>5</a>").text

    def shares(_):
        # writes a global that another script function reads: one globals dict
        set_shared(7)
        return read_shared()

    def set_shared(v):
        global shared
        shared = v

    def read_shared():
        return shared

    def about(_):
        return [f.__doc__, f.tag, f.__qualname__, f.__module__, f.__defaults__, f.__kwdefaults__]

    def boom(x):
        return 1 / (x - x)

    add_k = lambda x: x + K  # noqa: E731

    config = json.loads(sys.argv[1])
    out = {}
    with quelea.FunctionExecutor(config=config) as fexec:
        run = lambda fn, data, **kw: fexec.get_result(fexec.map(fn, data, **kw))  # noqa: E731
        out["f"] = run(f, [1, 2])
        out["fib"] = run(fib, [15])
        out["lambda"] = run(add_k, [1, 2])
        out["bump"] = run(bump, [0, 0, 0], chunksize=3)
        out["submodule"] = run(uses_submodule, [0])
        out["shares"] = run(shares, [0])
        out["about"] = run(about, [0])
        K = 100  # the globals travel as they are when the map is made
        out["f_after"] = run(f, [1])
        try:
            run(boom, [1])
        except ZeroDivisionError as e:
            out["boom"] = "".join(__import__("traceback").format_exception(e))
        out["heavy"] = [m for m in HEAVY if m in sys.modules]
        # Not a plain function: its signature comes from inspect.
        out["partial"] = run(functools.partial(f, y=0, z=0), [1])
    print(json.dumps(out))
"""

EXPECTED = {
    "f": [18, 28],
    "fib": [610],
    "lambda": [11, 12],
    "partial": [101],
    "bump": [1, 2, 3],
    "submodule": ["5"],
    "shares": [7],
    "about": [["f's doc", "tagged", "f", "__main__", [3], {"z": 4}]],
    "f_after": [108],
}


def run(tmp_path, storage_root, source: str, *, force_cloudpickle: bool = False) -> dict:
    config = {"localdisk": {"root": str(storage_root)}, "local": {"workers": 2}}
    prelude = f"HEAVY = {HEAVY!r}\n"
    if force_cloudpickle:
        # The reference: the same script with every function through cloudpickle.
        prelude += (
            "import quelea._funcpickle as _fp\n"
            "def _refuse(*a, **k):\n"
            "    raise _fp.NeedsCloudpickle('forced')\n"
            "_fp.dumps = _refuse\n"
        )
    proc = run_script(tmp_path, prelude + __import__("textwrap").dedent(source), json.dumps(config))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_plain_script_functions_travel_without_cloudpickle(tmp_path, storage_root):
    out = run(tmp_path, storage_root, PLAIN)
    for key, value in EXPECTED.items():
        assert out[key] == value, key
    # The remote traceback names the script and the failing line.
    assert "script.py" in out["boom"] and "return 1 / (x - x)" in out["boom"], out["boom"]
    assert out["heavy"] == [], f"the client imported {out['heavy']}"


def test_plain_script_functions_behave_as_with_cloudpickle(tmp_path, storage_root):
    ours = run(tmp_path, storage_root, PLAIN)
    reference = run(tmp_path, storage_root, PLAIN, force_cloudpickle=True)
    for key in EXPECTED:
        assert ours[key] == reference[key], key
    assert "cloudpickle" in reference["heavy"]


OTHERS = """
    import json, sys
    import quelea
    from neighbour import twice

    class Point:
        def __init__(self, x):
            self.x = x

    def make_adder(k):
        def add(x):
            return x + k
        return add

    def uses_class(x):
        return Point(x).x * 2

    def takes_point(p):
        return p.x + 1

    def via_neighbour(x):
        return twice(x)

    config = json.loads(sys.argv[1])
    out = {}
    with quelea.FunctionExecutor(config=config) as fexec:
        run = lambda fn, data: fexec.get_result(fexec.map(fn, data))  # noqa: E731
        out["closure"] = run(make_adder(5), [1, 2])
        out["class"] = run(uses_class, [3])
        out["point_args"] = run(takes_point, [Point(1), Point(2)])
        out["neighbour"] = run(via_neighbour, [4])
        out["neighbour_itself"] = run(twice, [5])
        out["heavy"] = [m for m in HEAVY if m in sys.modules]
    print(json.dumps(out))
"""


def test_what_only_cloudpickle_ships_still_travels(tmp_path, storage_root):
    # Closures, the script's classes, a script neighbour's functions (not
    # installed: a worker could not import it) go with cloudpickle, whole.
    (tmp_path / "neighbour.py").write_text("def twice(x):\n    return 2 * x\n")
    out = run(tmp_path, storage_root, OTHERS)
    assert out["closure"] == [6, 7]
    assert out["class"] == [6]
    assert out["point_args"] == [2, 3]
    assert out["neighbour"] == [8]
    assert out["neighbour_itself"] == [10]
    assert "cloudpickle" in out["heavy"]


def _codes() -> list[types.CodeType]:
    many = "\n".join(f"g{i} = {i}" for i in range(300))
    body = " + ".join(f"g{i}" for i in range(0, 300, 7))
    source = f"""
{many}
def wide():
    return {body}
def writes():
    global g1, g299
    g1 = 2
    del g299
    return obj.attr + len(obj.other)
def nested():
    def inner():
        return g5 + [g6 for _ in range(1)][0]
    return inner() + (lambda: g7)()
"""
    namespace: dict = {}
    exec(compile(source, "<codes>", "exec"), namespace)
    return [namespace[n].__code__ for n in ("wide", "writes", "nested")]


@pytest.mark.parametrize("code", _codes(), ids=["wide", "writes", "nested"])
def test_global_names_are_cloudpickle_s(code):
    # Over 256 names (EXTENDED_ARG), writes and deletes, attribute names that
    # are not globals, nested functions, comprehensions and lambdas.
    assert list(_funcpickle.global_names(code)) == list(cloudpickle_impl._extract_code_globals(code))


def test_a_payload_from_the_fast_path_needs_no_cloudpickle_to_load():
    # What the worker loads: quelea._funcpickle's two functions and the C
    # unpickler, nothing of cloudpickle's.
    source = "import math\nK = 3\ndef f(x):\n    return math.floor(x) + K\n"
    namespace = {"__name__": "__main__"}
    exec(compile(source, "<script>", "exec"), namespace)
    blob = _funcpickle.dumps(namespace["f"], 5, lambda name: name == "__main__")
    assert b"cloudpickle" not in blob
    loaded = cloudpickle.loads(blob)
    assert loaded(2.5) == 5 and loaded.__globals__ is not namespace


GONE = """
    import json, os, sys, traceback
    import quelea

    def fails_where_its_file_is_gone(x):
        os.rename(__file__, __file__ + ".gone")  # as on a remote runner
        return 1 / (x - x)

    config = json.loads(sys.argv[1])
    with quelea.FunctionExecutor(config=config) as fexec:
        try:
            fexec.get_result(fexec.map(fails_where_its_file_is_gone, [1]))
        except ZeroDivisionError as e:
            print(json.dumps({"tb": "".join(traceback.format_exception(e)), "heavy": []}))
"""


def test_a_remote_traceback_shows_the_shipped_source_line(tmp_path, storage_root):
    # The runner cannot read the script (gone by then, as on a remote
    # runner): the line comes from the source shipped with the function.
    out = run(tmp_path, storage_root, GONE)
    assert "script.py" in out["tb"] and "return 1 / (x - x)" in out["tb"], out["tb"]


MANY_MODULES = """
    import json, sys, types, xml.etree.ElementTree
    import quelea
    import quelea._funcpickle as fp

    def uses_submodule(x):
        return xml.etree.ElementTree.fromstring(json.dumps(x).join(["<a>", "</a>"])).text

    def lines_to_pickle(fexec, fn):
        # Lines of quelea._funcpickle run while the map's function is pickled.
        lines = [0]
        def count(frame, event, arg):
            if event == "line":
                lines[0] += 1
            return count
        def tracer(frame, event, arg):
            return count if frame.f_code.co_filename == fp.__file__ else None
        sys.settrace(tracer)
        try:
            fexec._payload(fn, None)
        finally:
            sys.settrace(None)
        return lines[0]

    config = json.loads(sys.argv[1])
    out = {}
    with quelea.FunctionExecutor(config=config) as fexec:
        out["first"] = fexec.get_result(fexec.map(uses_submodule, [5]))
        out["few"] = lines_to_pickle(fexec, uses_submodule)
        for i in range(5000):  # a program that imported numpy, pandas and their kin
            sys.modules[f"xml.fake{i}"] = types.ModuleType(f"xml.fake{i}")
        out["many"] = lines_to_pickle(fexec, uses_submodule)
        out["again"] = fexec.get_result(fexec.map(uses_submodule, [6]))
    print(json.dumps(out))
"""


def test_pickling_a_function_does_not_walk_every_loaded_module(tmp_path, storage_root):
    """The submodules a function reaches through a package are looked up by
    the names it uses, and what its code says of itself is kept: the work
    of pickling it per map does not grow with ``sys.modules``. Counted in
    lines run, not time."""
    out = run(tmp_path, storage_root, MANY_MODULES)
    assert out["first"] == ["5"] and out["again"] == ["6"]
    assert 0 < out["many"] <= out["few"] + 10 and out["many"] < 500, out


EDITED = """
    import json, os, sys, time, traceback
    import quelea

    def boom(x):
        return 1 / (x - x)  # the first version

    config = json.loads(sys.argv[1])
    out = []
    with quelea.FunctionExecutor(config=config) as fexec:
        for round in range(2):
            try:
                fexec.get_result(fexec.map(boom, [1]))
            except ZeroDivisionError as e:
                out.append("".join(traceback.format_exception(e)))
            with open(__file__) as f:
                source = f.read()
            # The script changes (an editor saved it) and then goes away.
            with open(__file__, "w") as f:
                f.write(source.replace("the first version", "an edited version, longer"))
            os.utime(__file__, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    print(json.dumps(out))
"""


def test_a_traceback_shows_the_script_as_it_was_at_the_map(tmp_path, storage_root):
    # The script's source travels for tracebacks; it is read again once the
    # file changed (kept by path, modification time and size).
    proc = run_script(
        tmp_path,
        __import__("textwrap").dedent(EDITED),
        json.dumps({"localdisk": {"root": str(storage_root)}, "local": {"workers": 2}}),
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    first, second = json.loads(out.strip().splitlines()[-1])
    assert "the first version" in first, first
    assert "an edited version, longer" in second, second
