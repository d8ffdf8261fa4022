"""Jobs that outlive the Airflow task that submitted them, on quelea's public API.

A deferrable task submits its job with ``detach=True``: on the local backend
the job runs in a host process of the engine's that outlives the task's
process; on remote backends it runs remotely anyway. Whoever follows it later
(the trigger, the resumed task, a sensor) attaches by handle, reads
``quelea.progress``, reads results with ``quelea.get_result``, cancels with
``quelea.cancel`` and deletes its objects with ``quelea.clean_job``. The job
is described by a small JSON-able dict (the trigger carries it, XCom holds
it under ``quelea_job``; no secrets in it):

    {"kind": "map", "handles": [<job handle JSON>, ...], "executor_id": "..."}

``handles`` has one handle for ``call_async``/``map`` and two (map, reduce)
for ``map_reduce``; the last one holds the task's result.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

# What remote calls print is kept in ``future.logs`` only (quelea's ``log_level`` above
# INFO): the operators log it themselves, once per call, at info level with the call id.
# Shown by quelea, it would also reach the task's stderr (the local runners' fds 1/2 are
# the task process's), which Airflow logs again at error level.
EXECUTOR_LOG_LEVEL = "WARNING"


def executor_log_settings(overrides: dict) -> dict:
    """``overrides`` with quelea's ``log_level`` set to keep call output in
    ``future.logs`` (see ``EXECUTOR_LOG_LEVEL``) unless the caller gave one. The
    ``quelea`` logger gets a NullHandler first, so that quelea adds no stderr
    handler of its own: its warnings reach the task log through Airflow's root handler."""
    import logging

    logger = logging.getLogger("quelea")
    if not logger.handlers:
        logger.addHandler(logging.NullHandler())
    return {"log_level": EXECUTOR_LOG_LEVEL, **overrides}


KINDS = ("call_async", "map", "map_reduce")
# How long a freshly submitted job is given to finish before the task defers
# (a job done by then is read at once: no deferral, no scheduler race).
CHECK_BEFORE_DEFER_S = 5.0
# How long a fresh attach may take to show calls that are already finished.
FIRST_LISTING_S = 1.0
# How long a cancelled job's calls get to stop before its objects are deleted.
STOP_GRACE_S = 30.0
# quelea.cancel writes the job's cancel marker and returns; the runtime running
# the job looks for it about once a second (quelea_worker CANCEL_POLL) and then
# stops the calls and writes their statuses. Deleting the job's objects (the
# marker with them) before that would let the calls run on and write statuses
# after the clean-up, so a cancelled job is given this long first. The public
# API has no "the runtime has stopped the job" signal to wait on instead.
CANCEL_SETTLE_S = 3.0


@dataclass
class Submitted:
    """What :func:`submit` gives: the job dict, the pid of the local host
    process running it (None on remote backends; for the task log), and whether
    the job was already finished when submit returned."""

    job: dict
    host_pid: int | None
    finished: bool


def check_config(config: dict) -> None:
    if config.get("storage") == "memory":
        raise ValueError(
            "storage `memory` cannot be followed from another process: deferrable quelea operators "
            "need a shared storage (localdisk or s3)"
        )


def submit(
    kind: str,
    args: tuple,
    kwargs: dict,
    config: dict,
    executor_kwargs: dict | None = None,
    check_s: float = CHECK_BEFORE_DEFER_S,
) -> Submitted:
    """``FunctionExecutor(config=config, **executor_kwargs).<kind>(*args, detach=True, **kwargs)``;
    waits up to ``check_s`` seconds for the job, then lets it go on without
    this process. If anything fails after the job was submitted, the job is
    cancelled and its objects deleted before the error propagates."""
    import quelea
    from quelea.exceptions import WaitTimeoutError

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    check_config(config)
    executor = quelea.FunctionExecutor(config=config, **executor_log_settings(executor_kwargs or {}))
    futures: list = []
    handles: list[str] = []
    try:
        submitted = getattr(executor, kind)(*args, detach=True, **kwargs)
        futures = [submitted] if isinstance(submitted, quelea.ResponseFuture) else list(submitted)
        parts: dict[str, list] = {}
        for f in futures:
            parts.setdefault(f.job_key, []).append(f)
        handles = [executor.job_handle(fs) for fs in parts.values()]
        job = {"kind": kind, "handles": handles, "executor_id": executor.executor_id}
        host_pid = executor.host_pid()
        finished = False
        if check_s > 0:
            try:
                quelea.wait(futures, return_when=quelea.ALL_COMPLETED, timeout=check_s, throw_except=False)
                finished = True
            except WaitTimeoutError:
                pass
    except BaseException:
        # Submitted, then interrupted (or a handle failed): leave nothing running or stored.
        if futures:
            try:
                quelea.cancel(futures)
                quelea.wait(futures, timeout=STOP_GRACE_S, throw_except=False)
                time.sleep(CANCEL_SETTLE_S)
            except BaseException:  # noqa: BLE001, S110 - the original error matters more
                pass
        executor.close()
        for handle in handles:
            try:
                quelea.clean_job(handle, config=config)
            except Exception:  # noqa: BLE001, S110
                pass
        raise
    executor.close()  # a detached job is neither cancelled nor cleaned by this
    return Submitted(job=job, host_pid=host_pid, finished=finished)


def _total(handle: str) -> int:
    return int(json.loads(handle)["total_calls"])


def _job_id(handle: str) -> str:
    h = json.loads(handle)
    return f"{h['executor_id']}-{h['job_id']}"


class Job:
    """Follows a job's parts (see the module doc) through storage, by handle."""

    def __init__(self, job: dict, config: dict):
        self.job = job
        self.config = config
        self.handles: list[str] = list(job["handles"])
        self.totals = [_total(h) for h in self.handles]
        self._parts: list[Any] = [None] * len(self.handles)

    @property
    def name(self) -> str:
        return str(self.job.get("executor_id") or _job_id(self.handles[0]))

    def _part(self, i: int) -> Any:
        if self._parts[i] is None:
            import quelea
            from quelea.exceptions import WaitTimeoutError

            futures = quelea.attach(self.handles[i], config=self.config)
            # An attached job's states fill in from storage a moment after attach():
            # wait (briefly) for them so that one-shot checks are not stale.
            try:
                quelea.wait(
                    futures, return_when=quelea.ALL_COMPLETED, timeout=FIRST_LISTING_S, throw_except=False
                )
            except WaitTimeoutError:
                pass
            self._parts[i] = futures
        return self._parts[i]

    def parts(self) -> list:
        return [self._part(i) for i in range(len(self.handles))]

    def progress(self) -> dict:
        """``{"total", "done", "failed", "first_failed", "abandoned"}`` in elements
        over every part; ``first_failed`` is ``[part, index]`` of the first failed
        call; ``abandoned`` says why the job can never finish (the host running an
        unfinished part is gone: ``quelea.host_lease``), else None."""
        import quelea

        done = failed = 0
        first_failed = abandoned = None
        for i, futures in enumerate(self.parts()):
            p = quelea.progress(futures)
            done += p["done"]
            failed += p["failed"]
            if p["failed"] and first_failed is None:
                first_failed = next(([i, n] for n, f in enumerate(futures) if f.error), None)
            if p["done"] < p["total"] and abandoned is None:
                abandoned = self._abandoned(i, p)
        return {
            "total": sum(self.totals),
            "done": done,
            "failed": failed,
            "first_failed": first_failed,
            "abandoned": abandoned,
        }

    def leases(self, i: int) -> list[dict]:
        """The leases of part ``i`` (``quelea.job_leases``: its host's, its worker
        servers'); ``quelea.host_lease`` where the engine has no ``job_leases``."""
        import quelea

        if hasattr(quelea, "job_leases"):
            return quelea.job_leases(self.handles[i], config=self.config)
        lease = quelea.host_lease(self.handles[i], config=self.config)
        return [] if lease is None else [lease]

    def _abandoned(self, i: int, p: dict) -> str | None:
        """Why unfinished part ``i`` can never finish (a lease's writer is gone), or None."""
        gone = [lease for lease in self.leases(i) if lease["gone"]]
        if not gone:
            return None
        lease = gone[0]
        where = f"pid {lease['pid']} on {lease['machine'] or 'an unnamed machine'}"
        if lease.get("role") == "server":
            what = (
                f"the worker server running some of its calls ({where}) is gone (its lease was "
                f"last renewed {lease['age_s']:.0f} s ago)"
            )
        elif lease.get("taken", True):
            what = (
                f"the process running it ({where}) is gone (its lease was last renewed "
                f"{lease['age_s']:.0f} s ago)"
            )
        else:  # the submitter's first lease: the host never took the job
            what = (
                f"the process running it ({where}) is gone: it died before it took the job "
                f"({lease['age_s']:.0f} s after the job was handed to it)"
            )
        return (
            f"quelea job {_job_id(self.handles[i])} is abandoned: {what}; "
            f"{p['total'] - p['done']} of its {p['total']} calls will never finish"
        )

    def log_outputs(self, log: Any, seen: OutputSeen | None = None) -> None:
        """Copies what finished calls printed to ``log`` (see :func:`log_outputs`)."""
        seen = OutputSeen() if seen is None else seen
        for i, futures in enumerate(self.parts()):
            log_outputs(log, _job_id(self.handles[i]), futures, seen, part=i)

    def results(self, timeout: float) -> Any:
        """The task's result: a list for ``map``, the value for the others."""
        import quelea

        values = quelea.get_result(self._part(len(self.handles) - 1), timeout=timeout)
        return values if self.job.get("kind") == "map" else values[0]

    def raise_failed_call(self, first_failed: list, timeout: float) -> None:
        """Raises the failed call's exception (original type, remote traceback as ``__cause__``)."""
        import quelea

        part, index = first_failed
        quelea.get_result([self._part(part)[index]], timeout=timeout)
        raise RuntimeError(
            f"call {index} of job {_job_id(self.handles[part])} was reported failed but has no error"
        )

    def cancel(self, grace: float = STOP_GRACE_S) -> None:
        """Cancels every part (the cancel marker stops the calls wherever they
        run) and waits up to ``grace`` seconds for the calls to stop."""
        import quelea
        from quelea.exceptions import WaitTimeoutError

        parts = self.parts()
        for futures in parts:
            quelea.cancel(futures)
        if grace <= 0:  # nobody is left to stop the calls (an abandoned job)
            return
        every = [f for fs in parts for f in fs]
        deadline = time.monotonic() + grace
        while (left := deadline - time.monotonic()) > 0:
            try:
                quelea.wait(every, timeout=min(1.0, left), throw_except=False)
                break
            except WaitTimeoutError:
                pass
            # Calls whose runtime is gone never stop: once only dead leases are left,
            # nobody writes any more.
            leases = [lease for i in range(len(parts)) for lease in self.leases(i)]
            if leases and all(lease["gone"] for lease in leases):
                break
        time.sleep(CANCEL_SETTLE_S)

    def clean(self) -> int:
        """Deletes every object of every part; returns how many."""
        import quelea

        return sum(quelea.clean_job(h, config=self.config) for h in self.handles)

    def finish(self, log: Any = None, cancel: bool = False, grace: float = STOP_GRACE_S) -> None:
        """After the results are read (or the job failed): cancel it if asked
        (or if it is not finished), then delete its objects. Never raises."""
        try:
            if cancel or self.progress()["done"] < sum(self.totals):
                if log:
                    log.info("Cancelling quelea job %s", self.name)
                self.cancel(grace)
        except Exception as e:  # noqa: BLE001
            if log:
                log.warning("could not cancel quelea job %s: %s", self.name, e)
        try:
            n = self.clean()
            if log:
                log.info("Deleted %d storage object(s) of quelea job %s", n, self.name)
        except Exception as e:  # noqa: BLE001
            if log:
                log.warning("could not delete the objects of quelea job %s: %s", self.name, e)


def progress_line(job: Job, progress: dict) -> str:
    """``job <id>: done/total (failed)``, the progress line of the task log."""
    return f"job {job.name}: {progress['done']}/{progress['total']} ({progress['failed']} failed)"


# What one call's printed output may put in the task log, and how many calls' outputs.
MAX_OUTPUT_CHARS = 4000
MAX_OUTPUT_CALLS = 1000


class OutputSeen:
    """Which calls' output :func:`log_outputs` has handled, and how many it logged."""

    def __init__(self) -> None:
        self.seen: set = set()
        self.logged = 0


def log_outputs(log: Any, job_id: str, futures: Any, seen: OutputSeen, part: int = 0) -> None:
    """Logs (info) what each finished call of ``futures`` printed, once per call,
    with the call id, each bounded to ``MAX_OUTPUT_CHARS``, for at most
    ``MAX_OUTPUT_CALLS`` calls."""
    for n, f in enumerate(futures):
        if (part, n) in seen.seen or not f.done:
            continue
        seen.seen.add((part, n))
        try:
            text = f.logs
        except Exception:  # noqa: BLE001 - output is best effort; the result path reports errors
            continue
        if not text:
            continue
        seen.logged += 1
        if seen.logged == MAX_OUTPUT_CALLS + 1:
            log.info(
                "job %s: more calls printed output; only the first %d calls' output is in this log "
                "(`quelea logs` shows every call's)",
                job_id,
                MAX_OUTPUT_CALLS,
            )
        if seen.logged > MAX_OUTPUT_CALLS:
            continue
        text = text.rstrip("\n")
        if len(text) > MAX_OUTPUT_CHARS:
            text = f"{text[:MAX_OUTPUT_CHARS]}\n... ({len(text) - MAX_OUTPUT_CHARS} more characters)"
        log.info("job %s call %s printed:\n%s", job_id, f.call_id, text)
