"""``multiprocessing.Pool`` vs ``quelea.multiprocessing.Pool``, in one run.

    python bench/pool_vs_multiprocessing.py [--rounds 5] [--workers 2]

Two workloads: 10,000 no-op calls (``pool.map(noop, range(10000))``) and a
CPU-bound map (``pool.map(burn, [200_000] * 40)``, a pure-Python loop per
call). Both pools are created once, with the same number of worker
processes, and warmed up with one small map; then the rounds interleave the
two pools (stdlib, quelea, stdlib, quelea, ...) so that the load of this
shared machine falls on both alike. Prints each round's times, the medians
and the ratio quelea / stdlib (above 1: quelea is slower), as a Markdown
table for ``bench/RESULTS.md``. Build quelea in release mode for it:
``maturin develop --release``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import time

from quelea.multiprocessing import Pool as QueleaPool


def noop(x):
    return x


def burn(n):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


WORKLOADS = {
    "10k no-op": (noop, list(range(10_000))),
    "CPU-bound 40 x 200k loop": (burn, [200_000] * 40),
}


def timed(pool, func, items) -> float:
    started = time.perf_counter()
    results = pool.map(func, items)
    elapsed = time.perf_counter() - started
    assert len(results) == len(items)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    stdlib = multiprocessing.get_context("fork").Pool(args.workers)
    quelea = QueleaPool(args.workers)
    pools = {"multiprocessing.Pool": stdlib, "quelea.multiprocessing.Pool": quelea}
    for pool in pools.values():
        pool.map(noop, range(100))  # warm: processes started, function shipped
    times: dict[tuple[str, str], list[float]] = {(w, p): [] for w in WORKLOADS for p in pools}
    for round_ in range(args.rounds):
        for workload, (func, items) in WORKLOADS.items():
            for name, pool in pools.items():
                t = timed(pool, func, items)
                times[(workload, name)].append(t)
                print(f"round {round_ + 1} {workload:>26} {name:>28} {t:.4f} s", flush=True)
    stdlib.terminate()
    quelea.terminate()
    print()
    print("| workload | multiprocessing.Pool median (s) | quelea Pool median (s) | ratio quelea/stdlib |")
    print("|---|---:|---:|---:|")
    for workload in WORKLOADS:
        a = statistics.median(times[(workload, "multiprocessing.Pool")])
        b = statistics.median(times[(workload, "quelea.multiprocessing.Pool")])
        print(f"| {workload} | {a:.4f} | {b:.4f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
