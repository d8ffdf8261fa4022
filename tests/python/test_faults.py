"""The fault-injection cases of the hardening issue that are the Python
client's own (the others are mapped to their tests in the README's
"Reliability" section): each runs a real client script against real runner
processes, with a deadline, and checks that no process of it is left (by PID
and by the runners' process groups) afterwards."""

from __future__ import annotations

import pytest
from test_process_hygiene import assert_all_gone

from conftest import pid_alive, run_script

DEADLINE_S = 60


def run_client(tmp_path, storage_root, body: str) -> tuple[str, list[int]]:
    """Runs ``body`` in a client script (as ``__main__``) with an executor
    ``fexec``; the script prints its runner PIDs on its last line. Returns its
    output and those PIDs, once the script and everything it started are gone."""
    source = f"""
import sys
import quelea

config = {{"localdisk": {{"root": {str(storage_root)!r}}}, "local": {{"workers": 2}}}}
fexec = quelea.FunctionExecutor(config=config)
{body}
print(" ".join(map(str, fexec.runner_pids())), flush=True)
fexec.close()
"""
    proc = run_script(tmp_path, source)
    out, err = proc.communicate(timeout=DEADLINE_S)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    lines = out.strip().splitlines()
    pids = [int(p) for p in lines[-1].split()]
    # The runners lead their own process groups: nothing is left in them.
    assert_all_gone(pids, groups=pids)
    assert not pid_alive(proc.pid)
    return "\n".join(lines[:-1]), pids


def test_remote_system_exit_and_keyboard_interrupt_are_errors_here(tmp_path, storage_root):
    """Issue case 10: an uncaught remote ``SystemExit(3)`` or
    ``KeyboardInterrupt`` ends only its call; the client gets a quelea error
    saying it was raised remotely, and carries on."""
    out, _ = run_client(
        tmp_path,
        storage_root,
        """
from quelea.exceptions import QueleaError, RemoteKeyboardInterrupt, RemoteSystemExit

def leave(x):
    if x == 1:
        sys.exit(3)
    if x == 2:
        raise KeyboardInterrupt
    return x

futures = fexec.map(leave, [0, 1, 2, 3])
for f in futures:
    try:
        print("ok", f.result())
    except Exception as e:  # an ordinary `except Exception` catches both
        code = getattr(e, "code", "-")
        print(type(e).__name__, isinstance(e, QueleaError), code, "raised remotely" in str(e), str(e))
try:
    fexec.get_result(futures)
except RemoteSystemExit as e:
    print("get_result:", type(e).__name__, e.code)
print("the client goes on")
""",
    )
    lines = out.splitlines()
    assert lines[0] == "ok 0"
    assert lines[1].startswith("RemoteSystemExit True 3 True the function exited with code 3"), lines[1]
    assert lines[2].startswith("RemoteKeyboardInterrupt True - True"), lines[2]
    assert "not a Ctrl-C" in lines[2]
    assert lines[3] == "ok 3"
    assert lines[4] == "get_result: RemoteSystemExit 3"
    assert lines[5] == "the client goes on"


@pytest.mark.parametrize("chunksize", [1, 3])
def test_instances_of_the_scripts_classes_travel_as_arguments(tmp_path, storage_root, chunksize):
    """Issue case 11: instances of classes defined in the user's script
    (``__main__``) and in a module the workers cannot import travel by value
    as map arguments, nested in containers, and as kwargs, like functions."""
    lib = tmp_path / "not_installed"
    lib.mkdir()
    (lib / "shapes_not_installed.py").write_text(
        "class Box:\n    def __init__(self, w):\n        self.w = w\n"
    )
    out, _ = run_client(
        tmp_path,
        storage_root,
        f"""
sys.path.insert(0, {str(lib)!r})
from shapes_not_installed import Box

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

def norm1(p, scale=1, box=None):
    return (abs(p.x) + abs(p.y)) * scale + (box.w if box is not None else 0)

def total(points, boxes):
    return sum(p.x for p in points) + sum(b.w for b in boxes.values())

def flip(p):
    return Point(p.y, p.x)

def run(func, items, **kw):
    return fexec.get_result(fexec.map(func, items, chunksize={chunksize}, **kw))

print(run(norm1, [Point(1, 2), Point(3, -4), Point(0, 0)]))
print(run(norm1, [{{"p": Point(1, 1), "box": Box(5)}}, {{"p": Point(2, 0), "scale": 3}}]))
print(run(total, [([Point(1, 0), Point(2, 0)], {{"a": Box(3)}}), ([], {{}})]))
print(run(norm1, [Point(i, 0) for i in range(5)], extra_args=(1, Box(10))))
flipped = fexec.get_result(fexec.map(flip, [Point(1, 2)]))
print(type(flipped[0]).__name__, flipped[0].x, flipped[0].y)
""",
    )
    assert out.splitlines() == [
        "[3, 7, 0]",
        "[7, 6]",
        "[6, 0]",
        "[10, 11, 12, 13, 14]",
        "Point 2 1",
    ]
