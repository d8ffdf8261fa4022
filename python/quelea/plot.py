"""``fexec.plot()``: Lithops' two pictures of a job, drawn from the futures' stats.

- ``<dst>_timeline.png``: one line per call, from the time it started to the
  time it ended (seconds since the first submit), with a dot where it was
  submitted; failed calls in red (Lithops leaves them out).
- ``<dst>_histogram.png``: how many calls were running, second by second.

The default ``dst`` is ``./plots/<unix time>``, as in Lithops. matplotlib is
an optional extra: ``pip install quelea[plot]``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

__all__ = ["plot"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - exercised without the extra
        raise ImportError("fexec.plot() needs matplotlib: pip install 'quelea[plot]'") from e
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _rows(futures: Iterable[Any]) -> list[tuple[int, float, float | None, float | None, bool]]:
    """(index, submitted, started, ended, failed) for each future."""
    rows = []
    for index, future in enumerate(futures):
        stats = future.stats
        rows.append(
            (
                index,
                stats["host_submit_tstamp"],
                stats.get("worker_start_tstamp"),
                stats.get("worker_end_tstamp"),
                bool(future.error),
            )
        )
    return rows


def plot(
    futures: Iterable[Any], dst: str | os.PathLike | None = None, figsize: tuple = (10, 6)
) -> tuple[str, str]:
    """Writes ``<dst>_timeline.png`` and ``<dst>_histogram.png`` for these
    futures; returns both paths."""
    futures = list(futures)
    if not futures:
        raise ValueError("there is nothing to plot: no futures")
    rows = _rows(futures)
    if dst is None:
        dst = os.path.join("plots", str(int(time.time())))
    dst = os.fspath(dst)
    parent = os.path.dirname(dst)
    if parent:
        os.makedirs(parent, exist_ok=True)
    t0 = min(r[1] for r in rows)
    plt = _pyplot()
    timeline = f"{dst}_timeline.png"
    histogram = f"{dst}_histogram.png"

    fig, ax = plt.subplots(figsize=figsize)
    for ok, colour, label in ((False, "#2b7bba", "call"), (True, "#d62728", "failed call")):
        segments = [(i, s - t0, e - t0) for i, _, s, e, failed in rows if failed == ok and s and e]
        if segments:
            ax.hlines(
                [y for y, _, _ in segments],
                [s for _, s, _ in segments],
                [e for _, _, e in segments],
                colors=colour,
                linewidth=1,
                label=label,
            )
    ax.scatter(
        [r[1] - t0 for r in rows],
        [r[0] for r in rows],
        s=2,
        color="#7f7f7f",
        label="submitted",
    )
    ax.set_xlabel("seconds since the first submit")
    ax.set_ylabel("call")
    ax.set_title(f"timeline of {len(rows)} calls")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(timeline, dpi=100)
    plt.close(fig)

    runs = [(s - t0, e - t0) for _, _, s, e, _ in rows if s and e]
    end = max((e for _, e in runs), default=0.0)
    bins = max(1, min(200, int(end) + 1)) if end >= 1 else 50
    width = (end or 1.0) / bins
    running = [0] * bins
    for s, e in runs:
        first = min(bins - 1, int(s / width))
        last = min(bins - 1, int(e / width))
        for b in range(first, last + 1):
            running[b] += 1
    fig, ax = plt.subplots(figsize=figsize)
    ax.bar([b * width for b in range(bins)], running, width=width, align="edge", color="#2b7bba")
    ax.set_xlabel("seconds since the first submit")
    ax.set_ylabel("calls running")
    ax.set_title(f"calls running over time ({len(runs)} ran)")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(histogram, dpi=100)
    plt.close(fig)
    return timeline, histogram
