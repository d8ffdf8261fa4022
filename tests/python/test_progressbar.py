"""``show_progressbar``: a real tqdm bar on a terminal (a pseudo-terminal
here), by default, as Lithops draws one; nothing when stderr is not a
terminal or when it is turned off."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time

SCRIPT = """
import sys, time, quelea

def slow(x):
    time.sleep(0.3)
    return x

with quelea.FunctionExecutor(config={"localdisk": {"root": sys.argv[1]}, "local": {"workers": 2}}) as fexec:
    how = sys.argv[2]
    if how == "off":
        print(fexec.get_result(fexec.map(slow, range(4)), show_progressbar=False))
    elif how == "wait":
        done, _ = fexec.wait(fexec.map(slow, range(4)))
        print(len(done))
    else:
        print(fexec.get_result(fexec.map(slow, range(4))))
"""


def run(tmp_path, how: str, terminal: bool) -> tuple[str, str]:
    """Runs SCRIPT with stderr on a pseudo-terminal (or a pipe); returns (stdout, stderr)."""
    script = tmp_path / "bar.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "HOME": str(tmp_path), "COLUMNS": "100"}
    args = [sys.executable, str(script), str(tmp_path / "storage"), how]
    if not terminal:
        out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        return out.stdout, out.stderr
    leader, follower = pty.openpty()
    # A real terminal has a size (tqdm draws to its width); a fresh pty has 0x0.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=follower, text=True)
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 4096)
            except OSError:  # the other end closed: all was read
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    stdout = proc.communicate(timeout=30)[0]
    return stdout, b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_a_bar_by_default(tmp_path):
    stdout, stderr = run(tmp_path, "default", terminal=True)
    assert stdout.strip() == "[0, 1, 2, 3]"
    assert "100%|" in stderr and "4/4" in stderr
    assert "0/4" in stderr  # drawn while it waited, not only at the end


def test_wait_draws_it_too(tmp_path):
    stdout, stderr = run(tmp_path, "wait", terminal=True)
    assert stdout.strip() == "4" and "4/4" in stderr


def test_no_bar_when_turned_off_or_not_a_terminal(tmp_path):
    stdout, stderr = run(tmp_path, "off", terminal=True)
    assert stdout.strip() == "[0, 1, 2, 3]" and "%|" not in stderr
    stdout, stderr = run(tmp_path, "default", terminal=False)
    assert stdout.strip() == "[0, 1, 2, 3]" and "%|" not in stderr
