"""Runs every code block of a Markdown file that is marked runnable, as written.

    python tests/readme/run_blocks.py README.md --venv VENV --work DIR

A block is marked by a second word in its info string: ```` ```python runnable ````,
```` ```sh runnable ```` or ```` ```yaml runnable ````. Python blocks run with the
venv's interpreter; sh blocks with bash (``set -euo pipefail``) with the venv's
``bin`` first on PATH, as after ``source .venv/bin/activate``; a YAML block is a
config file that ``quelea config show --config`` must accept. Each block runs
in a directory and a HOME of its own, with no QUELEA_* or AWS_* variables of
the caller's. Each block runs in a session of its own, and whatever it leaves
running (a server started with ``&``) is stopped through that session's
process group, whose id is the PID of the process this script started.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

FENCE = re.compile(r"^```(\w+)[ \t]+runnable[ \t]*$")
DEADLINE_S = 300


def blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number, language, source) of every runnable block."""
    found = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match:
            start = i + 1
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                i += 1
            if i == len(lines):
                raise SystemExit(f"README line {start}: a runnable block is never closed")
            found.append((start, match.group(1), "\n".join(lines[start:i]) + "\n"))
        i += 1
    return found


def stop_group(proc: subprocess.Popen) -> None:
    """Stops what the block left running: its process group (id = proc.pid)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def run(line: int, language: str, source: str, venv: Path, work: Path) -> tuple[bool, str]:
    here = work / f"block-{line}"
    home = here / "home"
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUELEA_", "AWS_", "QTEST_", "CARGO_"))}
    env.update(
        HOME=str(home),
        VIRTUAL_ENV=str(venv),
        PATH=f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        QUELEA_WORKERS="2",
    )
    env.pop("PYTHONPATH", None)
    if language == "python":
        (here / "block.py").write_text(source)
        command = [str(venv / "bin" / "python"), "block.py"]
    elif language in ("sh", "bash"):
        (here / "block.sh").write_text(source)
        command = ["bash", "-euo", "pipefail", "block.sh"]
    elif language == "yaml":
        (here / "config.yaml").write_text(source)
        command = [str(venv / "bin" / "quelea"), "config", "show", "--config", "config.yaml"]
    else:
        return False, f"no way to run a `{language}` block"
    proc = subprocess.Popen(
        command,
        cwd=here,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=DEADLINE_S)
        ok = proc.returncode == 0
        if not ok:
            output += f"\n(exit status {proc.returncode})"
    except subprocess.TimeoutExpired:
        stop_group(proc)
        output, _ = proc.communicate()
        ok = False
        output += f"\n(still running after {DEADLINE_S} s)"
    finally:
        stop_group(proc)
    return ok, output


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("markdown", type=Path)
    parser.add_argument("--venv", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    found = blocks(args.markdown.read_text())
    if not found:
        print(f"{args.markdown}: no runnable blocks", file=sys.stderr)
        return 1
    failed = []
    for line, language, source in found:
        started = time.time()
        ok, output = run(line, language, source, args.venv.resolve(), args.work.resolve())
        took = time.time() - started
        print(f"{'ok  ' if ok else 'FAIL'}  {args.markdown}:{line} ({language}, {took:.1f} s)")
        if not ok:
            failed.append(line)
            print("      | " + "\n      | ".join(output.rstrip().splitlines()))
    print(f"{len(found) - len(failed)} of {len(found)} runnable blocks of {args.markdown} ran as written")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
