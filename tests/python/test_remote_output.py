"""What remote calls print reaches the client's terminal (its stderr) as
whole lines, led by the call id when the job has more than one call, or is
kept in ``future.logs`` only, as ``log_level=`` / ``QUELEA_LOG`` say (issue
15). Each case runs as a client process of its own, whose stderr is read."""

from __future__ import annotations

import os
import re
import subprocess
import sys

SCRIPT = """
import os, sys, time, quelea

def chatty(x):
    for i in range(20):
        # Pieces of one line, written apart, while another runner does the same.
        print("call", x, end="")
        sys.stdout.flush()
        time.sleep(0.001)
        print(" line", i, "end")
    print("unfinished", x, end="")
    return x

config = {"localdisk": {"root": sys.argv[1]}, "local": {"workers": 2}}
level = {"default": False, "none": None, "warning": "WARNING", "info": "INFO"}[sys.argv[2]]
with quelea.FunctionExecutor(config=config, log_level=level) as fexec:
    fs = fexec.map(chatty, range(4), chunksize=1)
    print(fexec.get_result(fs))
    print(repr(fs[2].logs.splitlines()[0]))
    print(fexec.get_result(fexec.call_async(chatty, 9)))
"""


def run(tmp_path, level: str, env: dict | None = None) -> tuple[list[str], list[str]]:
    script = tmp_path / "chatty.py"
    script.write_text(SCRIPT)
    full_env = {**os.environ, "HOME": str(tmp_path)}
    full_env.pop("QUELEA_LOG", None)
    full_env.update(env or {})
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "storage"), level],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines(), out.stderr.splitlines()


def test_output_arrives_as_whole_lines_prefixed_by_call_id(tmp_path):
    stdout, stderr = run(tmp_path, "default")
    assert stdout == ["[0, 1, 2, 3]", "'call 2 line 0 end'", "9"]
    mapped = [line for line in stderr if line.startswith("[")]
    single = [line for line in stderr if not line.startswith("[")]
    # Every line whole: never two calls' pieces on one line.
    for line in mapped:
        assert re.fullmatch(r"\[0000(\d)\] (call \1 line \d+ end|unfinished \1)", line), line
    for x in range(4):
        lines = [line for line in mapped if line.startswith(f"[0000{x}]")]
        assert lines == [f"[0000{x}] call {x} line {i} end" for i in range(20)] + [
            f"[0000{x}] unfinished {x}"
        ]
    # One call alone: no prefix.
    assert single == [f"call 9 line {i} end" for i in range(20)] + ["unfinished 9"]


def test_info_shows_it_too(tmp_path):
    _, stderr = run(tmp_path, "info")
    assert len([line for line in stderr if "line" in line]) == 100


def test_log_level_none_or_warning_keeps_it_in_logs_only(tmp_path):
    for level in ("none", "warning"):
        stdout, stderr = run(tmp_path, level)
        assert stdout == ["[0, 1, 2, 3]", "'call 2 line 0 end'", "9"]
        assert not [line for line in stderr if "line" in line], stderr


def test_quelea_log_env(tmp_path):
    _, stderr = run(tmp_path, "default", env={"QUELEA_LOG": "off"})
    assert not [line for line in stderr if "line" in line], stderr
    _, stderr = run(tmp_path, "default", env={"QUELEA_LOG": "debug"})
    assert len([line for line in stderr if "line" in line]) == 100
    # An explicit log_level wins over the environment.
    _, stderr = run(tmp_path, "info", env={"QUELEA_LOG": "off"})
    assert len([line for line in stderr if "line" in line]) == 100


BATCHED = """
import sys, quelea

def sometimes(x):
    if x % 100 == 7:
        print("value", x, end="")
        print(" done")
    return x

config = {"localdisk": {"root": sys.argv[1]}, "local": {"workers": 2}}
with quelea.FunctionExecutor(config=config) as fexec:
    fs = fexec.map(sometimes, range(600))  # batched: many elements per runner call
    assert fexec.get_result(fs) == list(range(600))
    assert fs[107].logs == "value 107 done\\n" and fs[108].logs == ""
"""


def test_batched_elements_are_prefixed_by_their_own_call_id(tmp_path):
    script = tmp_path / "batched.py"
    script.write_text(BATCHED)
    env = {**os.environ, "HOME": str(tmp_path)}
    env.pop("QUELEA_LOG", None)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "storage")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = sorted(line for line in out.stderr.splitlines() if "value" in line)
    assert lines == sorted(f"[{x:05d}] value {x} done" for x in range(7, 600, 100))
