"""Local runners forked from the client, where that is safe.

A fresh ``python -m quelea.worker`` takes about a hundred milliseconds to
start and import what it needs; a fork of the client is ready in one, with
the client's modules already loaded (as ``multiprocessing``'s fork start
does). Forking is safe only while the process has a single thread: a thread
holding a lock at the fork would leave the child's copy locked for ever.
So the executor forks its first runners before the engine starts any
thread, only if the process has none but its main one and a small heap (a
child's resident memory counts the pages it shares with the client, and a
runner's memory limit is checked against it). Later runners (a
replacement after a crash, a second executor's) are spawned as before.

The child is made to look like a spawned runner: its own process group,
``/dev/null`` as stdin, fd 1 on the client's stderr, the protocol on fds 3
and 4 and no other descriptor, default signal handlers, no blocked
signals, and the environment the pool sends it as its first frame (see
``quelea_worker::runner_protocol``). It never returns into the client's
code: it serves calls and leaves with ``os._exit``.
"""

from __future__ import annotations

import os
import signal
import sys

# The client's resident memory above which runners are spawned instead.
MAX_CLIENT_RSS = 256 << 20
_CALLS_FD, _ANSWERS_FD = 3, 4
_HIGH_FD = 10


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0  # unknown: do not fork


def _rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return MAX_CLIENT_RSS + 1


def safe_to_fork() -> bool:
    """True while this process may fork runners (one thread, a small heap)."""
    return hasattr(os, "fork") and _threads() == 1 and _rss() <= MAX_CLIENT_RSS


def fork_runners(count: int) -> list[tuple[int, int, int]]:
    """Forks up to ``count`` runners: ``(pid, calls fd, answers fd)`` each,
    for the engine to adopt (``Executor.prestart``). None when it is not
    safe to fork; fewer if a fork fails."""
    if count <= 0 or not safe_to_fork():
        return []
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # or the child would print the buffer again
        except (AttributeError, OSError, ValueError):
            pass
    forked: list[tuple[int, int, int]] = []
    for _ in range(count):
        calls_r, calls_w = os.pipe()
        answers_r, answers_w = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            for fd in (calls_r, calls_w, answers_r, answers_w):
                os.close(fd)
            break
        if pid == 0:
            _runner_child(calls_r, answers_w)  # never returns
        os.close(calls_r)
        os.close(answers_w)
        try:
            # Also here, so that the group exists before the engine signals it.
            os.setpgid(pid, pid)
        except OSError:
            pass
        forked.append((pid, calls_w, answers_r))
    return forked


def discard(forked: list[tuple[int, int, int]]) -> None:
    """Ends runners that were forked but will not be adopted."""
    for pid, calls, answers in forked:
        for fd in (calls, answers):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.waitpid(pid, 0)
        except OSError:
            pass


def _runner_child(calls: int, answers: int) -> None:
    code = 1
    try:
        os.setpgid(0, 0)
        _own_descriptors(calls, answers)
        _default_signals()
        # Imported while the client starts its engine, which then sends the
        # environment (the import reads none of it).
        from . import worker

        os.environ.update(_read_environment(_CALLS_FD))

        worker.in_worker = True
        code = worker.serve()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - a child must never return into the client
        try:
            import traceback

            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
    finally:
        os._exit(code)


def _own_descriptors(calls: int, answers: int) -> None:
    """0 on /dev/null, 1 on stderr, the protocol on 3 and 4, nothing else."""
    import fcntl
    import gc

    # Objects of the client are never freed here, so that no finalizer
    # closes a descriptor number this process reuses (and none of their
    # pages are written, so they stay shared with the client).
    gc.freeze()
    high_calls = fcntl.fcntl(calls, fcntl.F_DUPFD, _HIGH_FD)
    high_answers = fcntl.fcntl(answers, fcntl.F_DUPFD, _HIGH_FD)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(2, 1)
    os.dup2(high_calls, _CALLS_FD)
    os.dup2(high_answers, _ANSWERS_FD)
    os.closerange(_ANSWERS_FD + 1, os.sysconf("SC_OPEN_MAX"))


def _default_signals() -> None:
    """The dispositions a fresh interpreter would have: the client's Python
    handlers gone, SIGINT raising KeyboardInterrupt unless it was ignored,
    SIGPIPE ignored (Python's own), nothing blocked."""
    for sig in signal.valid_signals():
        try:
            handler = signal.getsignal(sig)
        except (OSError, ValueError):
            continue
        if callable(handler) and handler is not signal.default_int_handler:
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _read_environment(fd: int) -> dict[str, str]:
    """The pool's first frame: ``u32 length | b"E" | key=value\\0 ...``."""
    head = _read_exactly(fd, 5)
    length, tag = int.from_bytes(head[:4], "little"), head[4]
    if tag != ord("E"):
        raise RuntimeError(f"a forked runner's first frame has tag {tag}, not E")
    body = _read_exactly(fd, length - 1)
    env = {}
    for entry in body.split(b"\0"):
        if entry:
            key, _, value = entry.partition(b"=")
            env[os.fsdecode(key)] = os.fsdecode(value)
    return env


def _read_exactly(fd: int, n: int) -> bytes:
    parts = []
    while n > 0:
        part = os.read(fd, n)
        if not part:
            raise SystemExit(0)  # the client went away before adopting us
        parts.append(part)
        n -= len(part)
    return b"".join(parts)
