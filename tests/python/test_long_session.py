"""A long-lived executor: what it keeps of the jobs it ran (issue 14's
bounded memory), on the real local backend."""

from __future__ import annotations

import gc
import os
import sys
import weakref

import quelea
import quelea.executor


def square(x):
    return x * x


def big(x):
    return bytes(100_000)  # over the 64 KiB inline limit


def _job_dirs(root: str, executor_id: str) -> list[str]:
    """The executor's jobs that still have objects (the local store leaves
    empty directories behind)."""
    jobs = os.path.join(root, "quelea", "quelea", "jobs", executor_id)
    assert os.path.isdir(jobs), f"no job objects under {jobs}"

    def has_objects(d: str) -> bool:
        return any(files for _, _, files in os.walk(os.path.join(jobs, d)))

    return [d for d in os.listdir(jobs) if d[0] in "MCR" and has_objects(d)]


def test_read_results_are_not_kept_by_the_executor(tmp_path):
    root = str(tmp_path)
    with quelea.FunctionExecutor(config={"localdisk": {"root": root}}) as fexec:
        fs = fexec.map(square, range(3000))
        assert fexec.get_result(fs) == [x * x for x in range(3000)]
        gone = weakref.ref(fs)
        del fs
        gc.collect()
        # Right after the read, `fexec.futures` still lists it, as in Lithops...
        assert gone() is not None and len(fexec.futures) == 3000
        for _ in range(quelea.executor.KEEP_READ_LISTS):
            fexec.get_result(fexec.map(square, range(2)))
        gc.collect()
        # ...but the executor keeps only the last read lists: it went.
        assert gone() is None
        # ...and its summary row stayed.
        row = fexec.job_summary()[0]
        assert row["calls"] == 3000 and row["success"] == 3000 and row["error"] == 0
        # A list still held is the owner's to read again.
        kept = fexec.map(square, range(10))
        assert fexec.get_result(kept) == [x * x for x in range(10)]
        assert [f.result() for f in kept] == [x * x for x in range(10)]
        assert len(fexec.job_summary()) == 2 + quelea.executor.KEEP_READ_LISTS


def test_a_map_looks_only_at_lists_not_yet_read(tmp_path):
    # A long session's maps cost the same at map 10,000 as at map 1: the
    # executor's bookkeeping (after a read, and to find what get_result()
    # has to read) visits the lists still unread, not every list the session
    # made. Counted in lines run, not in time.
    ex = quelea.FunctionExecutor
    codes = {ex._forget_read.__code__, ex._unread_lists.__code__, ex._live_lists.__code__}
    codes |= {c for c in ex._live_lists.__code__.co_consts if isinstance(c, type(ex._live_lists.__code__))}
    lines = [0]

    def count(frame, event, arg):
        if event == "line":
            lines[0] += 1
        return count

    def tracer(frame, event, arg):
        return count if frame.f_code in codes else None

    with quelea.FunctionExecutor(config={"localdisk": {"root": str(tmp_path)}}) as fexec:
        unread = fexec.map(square, range(3))
        before = sys.gettrace()  # a coverage tool's, say: put back after
        sys.settrace(tracer)
        try:
            for i in range(100):
                assert fexec.get_result(fexec.map(square, [i])) == [i * i]
        finally:
            sys.settrace(before)
        # The unread one is still there, in order, and reads as ever.
        assert fexec.futures[0] is unread[0] and len(fexec.job_summary()) == 101
        assert fexec.get_result(unread) == [0, 1, 4]
        sys.settrace(tracer)
        try:
            for i in range(100):  # Lithops' way: get_result() of what is unread
                fexec.map(square, [i])
                assert fexec.get_result() == [i * i]
        finally:
            sys.settrace(before)
        assert 0 < lines[0] <= 40 * 200, lines[0]
        # Listed: it (still held here) and the last read ones.
        assert len(fexec.futures) == 3 + quelea.executor.KEEP_READ_LISTS


def test_objects_of_forgotten_jobs_go_before_close(tmp_path):
    root = str(tmp_path)
    with quelea.FunctionExecutor(config={"localdisk": {"root": root}}) as fexec:
        maps = quelea.executor.KEEP_READ_LISTS + 40
        for _ in range(maps):
            assert fexec.get_result(fexec.map(square, range(20))) == [x * x for x in range(20)]
        gc.collect()
        fexec.map(square, range(2))  # a submit sweeps the forgotten ones
        left = _job_dirs(root, fexec.executor_id)
        assert 0 < len(left) < maps, f"{len(left)} of {maps + 1} jobs still have objects"
        assert len(fexec.job_summary()) == maps + 1


def test_a_handed_out_job_keeps_its_objects_and_large_results(tmp_path):
    root = str(tmp_path)
    with quelea.FunctionExecutor(config={"localdisk": {"root": root}}) as fexec:
        fs = fexec.map(big, range(6))
        assert fexec.get_result(fs) == [bytes(100_000)] * 6
        # Handed out after it ran: its large results are stored now.
        handle = fexec.job_handle(fs)
        job = fs[0].job_key.split("-")[-1]
        del fs
        maps = quelea.executor.KEEP_READ_LISTS + 40
        for _ in range(maps):
            fexec.get_result(fexec.map(square, range(5)))
        gc.collect()
        fexec.map(square, range(2))
        left = _job_dirs(root, fexec.executor_id)
        assert len(left) < maps, "forgotten jobs were swept"
        assert job in left, "a handed-out job is not swept"
        attached = quelea.attach(handle, config={"localdisk": {"root": root}})
        assert quelea.get_result(attached) == [bytes(100_000)] * 6


def _thread_names() -> list[str]:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass  # ended meanwhile
    return names


def test_maps_start_no_thread_each(tmp_path):
    # Each map's blocking submission runs on a kept thread: a thread started
    # per map cost more than a small map's whole submission.
    with quelea.FunctionExecutor(config={"localdisk": {"root": str(tmp_path)}}) as fexec:
        fexec.get_result(fexec.map(square, range(3)))
        before = _thread_names()
        for _ in range(20):
            assert fexec.get_result(fexec.map(square, range(3))) == [0, 1, 4]
        after = _thread_names()
        assert after.count("quelea-blocking") == before.count("quelea-blocking") >= 1
        assert len(after) <= len(before) + 2, (before, after)


def test_inputs_are_let_go_once_sent(tmp_path):
    # The engine holds each input's own `bytes` object (no copy) until its
    # runner has it, then lets it go: no reference is left behind.
    import pickle
    import sys

    with quelea.FunctionExecutor(config={"localdisk": {"root": str(tmp_path)}}) as fexec:
        inputs = [pickle.dumps(((os.urandom(100_000),), {})) for _ in range(20)]
        base = [sys.getrefcount(b) for b in inputs]
        payload = fexec._payload(len, None, calls=len(inputs))
        n = len(inputs)
        job = fexec._engine.submit("map", "len", payload, inputs, 1, None, None, n, False, None, None)
        assert fexec.get_result(fexec._futures(job, len)) == [100_000] * 20
        fexec.get_result(fexec.map(len, [b""]))  # a later call drops what threads let go of
        assert [sys.getrefcount(b) for b in inputs] == base


def test_two_threads_share_one_executor(tmp_path):
    # Each blocking operation locks the executor on a thread that never takes
    # the GIL: a second Python thread waiting for that lock (holding the GIL)
    # cannot deadlock with the first, which waits for the GIL to return.
    import threading

    with quelea.FunctionExecutor(config={"localdisk": {"root": str(tmp_path)}}) as fexec:
        results: dict[int, list] = {}
        errors: list[BaseException] = []

        def loop(k: int) -> None:
            try:
                results[k] = [fexec.get_result(fexec.map(square, range(k, k + 50))) for _ in range(40)]
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=loop, args=(k,), daemon=True) for k in (0, 1000)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "a thread is stuck"
        assert not errors, errors
        for k in (0, 1000):
            assert results[k] == [[x * x for x in range(k, k + 50)]] * 40


def minor_faults_of_big_buffers(_):
    """This runner's page faults over 50 rounds of what a 1 MiB call holds at
    once (its input, its result, the result pickled), written and freed."""

    def faults() -> int:
        with open("/proc/self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[7])  # minflt

    def round_of_buffers() -> None:
        held = [b"x" * (1 << 20) for _ in range(3)]
        del held

    round_of_buffers()  # the first may grow the heap
    before = faults()
    for _ in range(50):
        round_of_buffers()
    return faults() - before


def test_runners_reuse_freed_memory_for_the_next_big_buffer(tmp_path):
    # glibc's defaults map and unmap each 1 MiB buffer: 256 page faults and a
    # zeroing by the kernel each time (38,400 here). Forked and spawned runners alike.
    for start_method in ("fork", "spawn"):
        config = {"localdisk": {"root": str(tmp_path)}, "local": {"workers": 1, "start_method": start_method}}
        with quelea.FunctionExecutor(config=config) as fexec:
            (faults,) = fexec.get_result(fexec.map(minor_faults_of_big_buffers, [0]))
        assert faults < 1000, f"{start_method}: {faults} page faults for 150 reused 1 MiB buffers"
