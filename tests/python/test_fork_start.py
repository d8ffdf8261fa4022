"""Local runners forked from the client (quelea._fork): when the client forks
them, what they look like (as a spawned runner would), and when it spawns
instead. Every case runs in a client process of its own, so that whether it
may fork depends on the script alone (one thread, or not)."""

from __future__ import annotations

import json
import os

from conftest import run_script

PROBE = """
    import json, os, sys, time, quelea

    def probe(_):
        # (listdir's own descriptor is closed by the time it is checked)
        fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{fd}"))
        with open("/proc/self/status") as f:
            status = dict(line.rstrip("\\n").split(":\\t", 1) for line in f if ":\\t" in line)
        with open("/proc/self/cmdline", "rb") as f:
            cmdline = f.read().split(b"\\0")
        return {
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "pgid": os.getpgrp(),
            "fds": fds,
            "caught": int(status["SigCgt"], 16),
            "blocked": int(status["SigBlk"], 16),
            "spawned": b"quelea.worker" in cmdline,
            "slot": os.environ.get("QUELEA_RUNNER_SLOT"),
            "has_config": "QUELEA_RUNNER_CONFIG" in os.environ,
            "marker": os.environ.get("QTEST_MARKER"),
        }
"""


# Appended to a script: says whether the client has any child process left.
CHILDREN_LEFT = """
    try:
        os.waitpid(-1, os.WNOHANG)
        print("children left")
    except ChildProcessError:
        print("no children")
"""


def run_probe(tmp_path, storage_root, before: str = "", config: dict | None = None, calls: int = 8):
    config = config or {"localdisk": {"root": str(storage_root)}, "local": {"workers": 2}}
    source = (
        PROBE
        + before
        + f"""
    with quelea.FunctionExecutor(config={config!r}) as fexec:
        seen = fexec.get_result(fexec.map(probe, range({calls}), chunksize=1))
    print(json.dumps({{"client": os.getpid(), "seen": seen}}))
    """
    )
    proc = run_script(tmp_path, source, env={"QTEST_MARKER": "from-the-client"})
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1]), out, err


def test_a_single_threaded_client_forks_runners_that_look_spawned(tmp_path, storage_root):
    # The client holds a pipe, a Python SIGTERM handler and SIGUSR1 blocked
    # when it creates the executor: none of it may reach a runner.
    before = """
    import signal
    keep_r, keep_w = os.pipe()
    signal.signal(signal.SIGTERM, lambda *a: None)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
    """
    report, _, _ = run_probe(tmp_path, storage_root, before)
    client, seen = report["client"], report["seen"]
    runners = {s["pid"]: s for s in seen}
    assert 1 <= len(runners) <= 2
    for r in runners.values():
        assert not r["spawned"], r  # a fork: the client's command line
        assert r["ppid"] == client
        assert r["pgid"] == r["pid"]  # leads its own process group
        assert r["fds"] == [0, 1, 2, 3, 4], r
        assert not r["caught"] & (1 << (15 - 1)), "the client's SIGTERM handler reached a runner"
        assert r["blocked"] == 0
        assert r["has_config"] and r["slot"] in ("0", "1")
        assert r["marker"] == "from-the-client"  # the client's own environment


def test_a_client_with_threads_spawns_its_runners(tmp_path, storage_root):
    before = """
    import threading
    stop = threading.Event()
    threading.Thread(target=stop.wait, daemon=True).start()
    """
    report, _, _ = run_probe(tmp_path, storage_root, before)
    for r in report["seen"]:
        assert r["spawned"], r
        assert r["fds"] == [0, 1, 2, 3, 4], r
        assert r["marker"] == "from-the-client"


def test_start_method_spawn_is_honoured(tmp_path, storage_root):
    config = {"localdisk": {"root": str(storage_root)}, "local": {"workers": 2, "start_method": "spawn"}}
    report, _, _ = run_probe(tmp_path, storage_root, config=config)
    assert all(r["spawned"] for r in report["seen"])


def test_a_second_executor_spawns_and_both_give_every_result(tmp_path, storage_root):
    # The first executor started the engine's threads: no later executor may fork.
    source = f"""
    import os, sys, quelea
    config = {{"localdisk": {{"root": {str(storage_root)!r}}}, "local": {{"workers": 2}}}}
    def where(x):
        with open("/proc/self/cmdline", "rb") as f:
            return x * x, b"quelea.worker" in f.read()
    first = quelea.FunctionExecutor(config=config)
    second = quelea.FunctionExecutor(config=config)
    a = first.get_result(first.map(where, range(50)))
    b = second.get_result(second.map(where, range(50)))
    first.close(); second.close()
    assert [v for v, _ in a] == [x * x for x in range(50)]
    assert [v for v, _ in b] == [x * x for x in range(50)]
    print(sorted({{s for _, s in a}}), sorted({{s for _, s in b}}))
    """
    proc = run_script(tmp_path, source)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.split() == ["[False]", "[True]"]


def test_a_forked_runner_that_crashes_is_replaced_and_only_its_call_fails(tmp_path, storage_root):
    source = f"""
    import os, quelea
    def crash_on_three(x):
        if x == 3:
            os._exit(9)
        with open("/proc/self/cmdline", "rb") as f:
            return x, b"quelea.worker" in f.read()
    config = {{"localdisk": {{"root": {str(storage_root)!r}}}, "local": {{"workers": 1}}}}
    with quelea.FunctionExecutor(config=config) as fexec:
        futures = fexec.map(crash_on_three, range(6), chunksize=1)
        fexec.wait(futures, throw_except=False)
        print([f.error for f in futures])
        print([f.result()[1] for f in futures if not f.error])
    """
    proc = run_script(tmp_path, source)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    errors, spawned = out.strip().splitlines()
    assert errors == "[False, False, False, True, False, False]"
    # Calls before the crash ran on the fork, calls after on its spawned replacement.
    assert spawned == "[False, False, False, True, True]"


def test_buffered_client_output_is_not_printed_twice(tmp_path, storage_root):
    # stdout is a pipe here, so the print sits in the buffer at the fork.
    source = f"""
    import quelea
    print("printed once")
    with quelea.FunctionExecutor(config={{"localdisk": {{"root": {str(storage_root)!r}}}}}) as fexec:
        assert fexec.get_result(fexec.map(abs, [-1, -2])) == [1, 2]
    """
    proc = run_script(tmp_path, source)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.count("printed once") == 1, out


def test_a_refused_executor_leaves_no_forked_runner(tmp_path, storage_root):
    source = (
        f"""
    import os, quelea
    from quelea.exceptions import ConfigError
    try:
        quelea.FunctionExecutor(mode="serverless", config={{"localdisk": {{"root": {str(storage_root)!r}}}}})
    except ConfigError as e:
        print("refused:", "serverless" in str(e))
    """
        + CHILDREN_LEFT
    )
    proc = run_script(tmp_path, source)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.split("\n")[:2] == ["refused: True", "no children"], out


def test_closing_the_executor_ends_forked_runners(tmp_path, storage_root):
    source = (
        f"""
    import os, quelea
    config = {{"localdisk": {{"root": {str(storage_root)!r}}}, "local": {{"workers": 2}}}}
    fexec = quelea.FunctionExecutor(config=config)
    assert fexec.get_result(fexec.map(abs, [-1, -2, -3])) == [1, 2, 3]
    pids = fexec.runner_pids()
    fexec.close()
    print(" ".join(map(str, pids)))
    """
        + CHILDREN_LEFT
    )
    proc = run_script(tmp_path, source)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    pids_line, children = out.strip().splitlines()
    assert len(pids_line.split()) == 2
    assert children == "no children"
    assert not any(os.path.exists(f"/proc/{p}") for p in map(int, pids_line.split()))
