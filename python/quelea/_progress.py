"""The progress bar of ``wait`` / ``get_result`` (``show_progressbar``).

Lithops draws a tqdm bar while it waits; so does quelea, on the same terms:
``show_progressbar=True`` (the default) draws it when stderr is a terminal
and never otherwise (a pipe, a file, a CI log, a worker), and tqdm is
imported only when a bar is drawn. The bar counts the calls waited on that
have finished; it is fed by polling the engine's wait every
``POLL_S`` seconds, which changes nothing about when the wait returns.
"""

from __future__ import annotations

import contextvars
import functools
import sys
import time
from collections.abc import Callable

from . import _engine

# Not `from typing import Any`: typing costs a client's start-up ~3 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


POLL_S = 0.1
# Set while a waiting API function runs: whether its waits draw a bar.
_SHOW: contextvars.ContextVar[bool | None] = contextvars.ContextVar("quelea_show_progressbar", default=None)


def option(func: Callable) -> Callable:
    """Makes ``func``'s ``show_progressbar`` argument govern the engine waits
    made while it runs."""
    # From the code, not inspect (a client's start-up would pay ~10 ms for it).
    code = func.__code__
    position = code.co_varnames.index("show_progressbar")
    if position < code.co_argcount:
        default = func.__defaults__[position - code.co_argcount]
    else:
        default = func.__kwdefaults__["show_progressbar"]
        position = sys.maxsize  # keyword-only

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "show_progressbar" in kwargs:
            show = bool(kwargs["show_progressbar"]) and _terminal()
        elif len(args) > position:
            show = bool(args[position]) and _terminal()
        elif _SHOW.get() is not None:
            show = _SHOW.get()  # called by another waiting function: its choice
        else:
            show = bool(default) and _terminal()
        token = _SHOW.set(show)
        try:
            return func(*args, **kwargs)
        finally:
            _SHOW.reset(token)

    return wrapper


def _terminal() -> bool:
    from . import worker

    if worker.in_worker:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _finished(groups: list) -> int:
    done = 0
    for job, indices in groups:
        if indices is None:
            done += job.done_count()
        else:
            states = job.states()
            done += sum(states[i] in ("success", "error") for i in indices)
    return done


def engine_wait(groups: list, return_when: float, timeout: float | None) -> None:
    """The engine's wait, with a bar when one was asked for (see ``option``)."""
    if not _SHOW.get():
        _engine.wait(groups, return_when, timeout)
        return
    from tqdm import tqdm

    total = sum(job.total if indices is None else len(indices) for job, indices in groups)
    deadline = None if timeout is None else time.monotonic() + timeout
    bar = tqdm(total=total, bar_format="  {l_bar}{bar}| {n_fmt}/{total_fmt}  ", file=sys.stderr)
    try:
        while True:
            step = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic()))
            try:
                _engine.wait(groups, return_when, step)
                finished = True
            except TimeoutError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                finished = False
            bar.update(_finished(groups) - bar.n)
            if finished:
                return
    finally:
        bar.close()
