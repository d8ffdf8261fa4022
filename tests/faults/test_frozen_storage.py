"""Issue case 7: a frozen S3 server (SIGSTOP: it accepts connections and
answers nothing). ``map()`` fails within an interactive deadline with an
error naming the storage, a blocking call answers Ctrl-C within a second,
``close()`` is bounded, and no process is left behind (by PID and by the
runners' process groups)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path


def _alive(pid: int, pgid: int | None = None) -> bool:
    """Whether `pid` is a live (not zombie) process, in group `pgid` if given."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and (pgid is None or int(fields[2]) == pgid)


def assert_all_gone(pids: list[int], groups: list[int], within: float = 10.0) -> None:
    """No process of `pids`, nor any in the process groups `groups`, is left."""
    deadline = time.time() + within
    while True:
        procs = [int(e) for e in os.listdir("/proc") if e.isdigit()]
        left = [p for p in pids if _alive(p)] + [p for g in groups for p in procs if _alive(p, g)]
        if not left:
            return
        assert time.time() < deadline, f"still running: {left}"
        time.sleep(0.02)


# storage_client defaults: read_timeout 10 s, retry_timeout 15 s.
MAP_DEADLINE_S = 30
CTRL_C_DEADLINE_S = 1.0
CLOSE_DEADLINE_S = 15


def test_a_frozen_s3_server_fails_fast_answers_ctrl_c_and_closes(tmp_path, own_s3_server):
    pid, endpoint = own_s3_server
    script = tmp_path / "client.py"
    script.write_text(
        textwrap.dedent(f"""
        import signal, sys, time
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import quelea
        from quelea.exceptions import StorageError

        config = {{
            "storage": "s3", "bucket": "quelea-test", "local": {{"workers": 2}},
            "s3": {{"endpoint": {endpoint!r}, "access_key_id": "testkey", "secret_access_key": "testsecret",
                    "path_style": True, "allow_http": True, "region": "us-east-1"}},
        }}
        fexec = quelea.FunctionExecutor(config=config)

        def square(x):
            return x * x

        assert fexec.get_result(fexec.map(square, [1, 2, 3])) == [1, 4, 9]
        print("pids", *fexec.runner_pids(), flush=True)
        sys.stdin.readline()  # the server is frozen now
        started = time.time()
        try:
            fexec.map(square, [4, 5])
            print("map returned", flush=True)
        except StorageError as e:
            print(f"map failed {{time.time() - started:.2f}} {{e}}", flush=True)
        print("blocking again", flush=True)
        try:
            fexec.map(square, [6])
            print("map returned", flush=True)
        except KeyboardInterrupt:
            print("ctrl-c", flush=True)
        started = time.time()
        fexec.close()
        print(f"closed {{time.time() - started:.2f}}", flush=True)
        """)
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        first = proc.stdout.readline().split()
        assert first[:1] == ["pids"], first + [proc.stderr.read()]
        runners = [int(p) for p in first[1:]]
        os.kill(pid, signal.SIGSTOP)
        stopped_by = time.time() + 5
        while Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert time.time() < stopped_by, "the S3 server did not stop"
            time.sleep(0.01)
        proc.stdin.write("\n")
        proc.stdin.flush()

        failed = proc.stdout.readline()
        assert failed.startswith("map failed"), failed
        waited = float(failed.split()[2])
        assert waited < MAP_DEADLINE_S, failed
        assert "storage" in failed and endpoint in failed and "s3 bucket `quelea-test`" in failed, failed

        assert proc.stdout.readline().strip() == "blocking again"
        time.sleep(1.0)  # the map is waiting on the frozen server now
        interrupted_at = time.time()
        proc.send_signal(signal.SIGINT)
        answer = proc.stdout.readline().strip()
        assert answer == "ctrl-c", answer
        answered = time.time() - interrupted_at
        assert answered < CTRL_C_DEADLINE_S, answered

        closed = proc.stdout.readline().split()
        assert closed[:1] == ["closed"], closed
        assert float(closed[1]) < CLOSE_DEADLINE_S, closed
        print(
            f"frozen S3: map failed after {waited:.1f} s, "
            f"Ctrl-C answered in {answered:.2f} s, close {closed[1]} s"
        )
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "storage did not answer" in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert_all_gone(runners, groups=runners)
