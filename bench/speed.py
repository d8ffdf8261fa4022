"""quelea against multiprocessing.Pool and ProcessPoolExecutor, row by row,
in one interleaved run (issue 14's table).

    python bench/speed.py [--rounds 5] [--rows warm,cold,...] [--workers 2]

Every measurement runs in a fresh process; each round runs every system of
a row once, the start order rotating from round to round, and the report
gives the median of the rounds and each peer's ratio to quelea *in the same
round* (the median of those ratios), so a noisy, shared machine shifts the
systems together. Never best-of-N.

Rows:
  warm      10,000 no-op calls on a list, on a warm executor/pool (default chunking)
  cold      a new process: create the executor/pool, run 1,000 no-op calls
  payload   200 calls, 1 MiB argument in and 1 MiB result out
  pickled   the same with each argument a list [i, 1 MiB of bytes] (pickled, not raw)
  results   2,000 calls returning 100 KB each
  loop      one executor, 1,000 maps of 10,000 no-op calls: RSS after map 100 and map 1,000
  percall   client memory per call at chunksize=1 (200,000 calls)
  storage   the executor's storage after each of four 200 x 1 MiB maps (futures dropped)
  ideal     8 calls sleeping 0.5 s, and 8 calls of 0.25 s of CPU, on 2 workers (ideal 2 s and 1 s)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SYSTEMS = ("quelea", "pool", "ppe")


def noop(x):
    return x


def megabyte(blob):
    return bytes(len(blob))


def megabyte_of_record(record):
    return bytes(len(record[1]))


def hundred_kb(_):
    return b"x" * 100_000


def sleep_half(_):
    time.sleep(0.5)


def spin_quarter(_):
    end = time.process_time() + 0.25
    while time.process_time() < end:
        pass


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Quelea:
    def __init__(self, workers: int):
        import quelea

        self.root = tempfile.mkdtemp(prefix="quelea-bench-")
        self.fexec = quelea.FunctionExecutor(config={"localdisk": {"root": self.root}}, max_workers=workers)

    def map(self, f, data, chunksize=None):
        return self.fexec.get_result(self.fexec.map(f, data, chunksize=chunksize))

    def close(self):
        self.fexec.close()


class Pool:
    def __init__(self, workers: int):
        import multiprocessing

        self.pool = multiprocessing.Pool(workers)

    def map(self, f, data, chunksize=None):
        return self.pool.map(f, data, chunksize)

    def close(self):
        self.pool.close()
        self.pool.join()


class Ppe:
    def __init__(self, workers: int):
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(workers)

    def map(self, f, data, chunksize=None):
        return list(self.pool.map(f, data, chunksize=chunksize or 1))

    def close(self):
        self.pool.shutdown()


def make(system: str, workers: int):
    return {"quelea": Quelea, "pool": Pool, "ppe": Ppe}[system](workers)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def row_warm(system: str, workers: int) -> dict:
    ex = make(system, workers)
    data = list(range(10_000))
    assert ex.map(noop, data) == data
    runs = []
    for _ in range(9):
        runs.append(timed(lambda: ex.map(noop, data)))
    ex.close()
    return {"s": statistics.median(runs)}


def row_cold(system: str, workers: int) -> dict:
    # The process itself is new: the import counts, as a user's script pays it.
    t0 = time.perf_counter()
    ex = make(system, workers)
    assert ex.map(noop, list(range(1000))) == list(range(1000))
    elapsed = time.perf_counter() - t0
    ex.close()
    return {"s": elapsed}


def row_payload(system: str, workers: int) -> dict:
    ex = make(system, workers)
    data = [os.urandom(1 << 20) for _ in range(200)]
    ex.map(noop, [b""] * 4)  # runners up
    t = timed(lambda: ex.map(megabyte, data, 1 if system != "quelea" else None))
    ex.close()
    return {"s": t}


def row_pickled(system: str, workers: int) -> dict:
    ex = make(system, workers)
    data = [[i, os.urandom(1 << 20)] for i in range(200)]
    ex.map(noop, [b""] * 4)  # runners up
    t = timed(lambda: ex.map(megabyte_of_record, data, 1 if system != "quelea" else None))
    ex.close()
    return {"s": t}


def row_results(system: str, workers: int) -> dict:
    ex = make(system, workers)
    ex.map(noop, [0] * 4)
    t = timed(lambda: ex.map(hundred_kb, range(2000)))
    ex.close()
    return {"s": t}


def row_loop(system: str, workers: int) -> dict:
    ex = make(system, workers)
    data = list(range(10_000))
    at = {}
    t0 = time.perf_counter()
    # ProcessPoolExecutor chunks like Pool here (its default, one task per
    # element, would take half an hour for this row).
    chunksize = 1250 if system == "ppe" else None
    for i in range(1, 1001):
        ex.map(noop, data, chunksize)
        if i in (100, 1000):
            at[i] = rss_mb()
    elapsed = time.perf_counter() - t0
    ex.close()
    return {"s": elapsed, "rss100": at[100], "rss1000": at[1000]}


def row_percall(system: str, workers: int) -> dict:
    ex = make(system, workers)
    ex.map(noop, [0] * 4, 1)
    before = rss_mb()
    n = 200_000
    t0 = time.perf_counter()
    # Results held by both: the client's cost of a finished map of n calls.
    out = ex.map(noop, range(n), 1)
    peak = rss_mb()
    assert out == list(range(n))
    elapsed = time.perf_counter() - t0
    ex.close()
    return {"s": elapsed, "bytes_per_call": (peak - before) * (1 << 20) / n}


def row_storage(system: str, workers: int) -> dict:
    if system != "quelea":
        return {"s": 0.0, "mb": [0, 0, 0, 0]}
    ex = make(system, workers)
    data = [os.urandom(1 << 20) for _ in range(200)]
    sizes = []
    t0 = time.perf_counter()
    for _ in range(4):
        ex.map(megabyte, data)
        sizes.append(du_mb(ex.root))
    elapsed = time.perf_counter() - t0
    ex.close()
    return {"s": elapsed, "mb": sizes}


def du_mb(root: str) -> float:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                pass
    return total / (1 << 20)


def row_ideal(system: str, workers: int) -> dict:
    ex = make(system, workers)
    ex.map(noop, [0] * 4)
    sleep = timed(lambda: ex.map(sleep_half, range(8), 1 if system != "quelea" else None))
    cpu = timed(lambda: ex.map(spin_quarter, range(8), 1 if system != "quelea" else None))
    ex.close()
    return {"s": sleep + cpu, "sleep": sleep, "cpu": cpu}


ROWS = {
    "warm": row_warm,
    "cold": row_cold,
    "payload": row_payload,
    "pickled": row_pickled,
    "results": row_results,
    "loop": row_loop,
    "percall": row_percall,
    "storage": row_storage,
    "ideal": row_ideal,
}


def measure(row: str, system: str, workers: int) -> dict | None:
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [sys.executable, __file__, "--one", row, system, "--workers", str(workers)],
        capture_output=True,
        text=True,
        timeout=1800,
        env=env,
    )
    if proc.returncode != 0:
        print(f"{row}/{system}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", nargs=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    if args.one:
        row, system = args.one
        print(json.dumps(ROWS[row](system, args.workers)))
        return
    load = os.getloadavg()[0]
    print(
        f"{time.strftime('%Y-%m-%d')}: {args.workers} workers, {args.rounds} interleaved rounds, "
        f"load average {load:.1f} at the start",
        flush=True,
    )
    print("| row | quelea (median) | Pool (median) | PPE (median) | Pool / quelea | PPE / quelea | notes |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for row in args.rows.split(","):
        results: dict[str, list[dict]] = {s: [] for s in SYSTEMS}
        ratios: dict[str, list[float]] = {"pool": [], "ppe": []}
        rounds = 1 if row in ("loop", "storage", "percall") else args.rounds
        for r in range(rounds):
            order = SYSTEMS[r % len(SYSTEMS) :] + SYSTEMS[: r % len(SYSTEMS)]
            got = {s: measure(row, s, args.workers) for s in order}
            for s, res in got.items():
                if res is not None:
                    results[s].append(res)
            if got.get("quelea") and got["quelea"]["s"] > 0:
                for peer in ratios:
                    if got.get(peer):
                        ratios[peer].append(got[peer]["s"] / got["quelea"]["s"])
        med = {s: statistics.median(x["s"] for x in v) if v else float("nan") for s, v in results.items()}
        ratio = {p: f"{statistics.median(v):.2f}" if v else "" for p, v in ratios.items()}
        notes = notes_for(row, results)
        print(
            f"| {row} | {med['quelea']:.4f} s | {med['pool']:.4f} s | {med['ppe']:.4f} s | "
            f"{ratio['pool']} | {ratio['ppe']} | {notes} |",
            flush=True,
        )


def notes_for(row: str, results: dict[str, list[dict]]) -> str:
    # Each figure's median over the rounds (the storage sizes: the last round's).
    last = {
        s: {k: statistics.median(r[k] for r in v) if k != "mb" else v[-1][k] for k in v[-1]}
        for s, v in results.items()
        if v
    }
    if row == "loop":
        return "; ".join(f"{s} RSS {r['rss100']:.0f} → {r['rss1000']:.0f} MB" for s, r in last.items())
    if row == "percall":
        return "; ".join(f"{s} {r['bytes_per_call']:.0f} B/call" for s, r in last.items())
    if row == "storage" and "quelea" in last:
        return "quelea storage after maps 1-4: " + ", ".join(f"{m:.0f}" for m in last["quelea"]["mb"]) + " MB"
    if row == "ideal":
        return "; ".join(f"{s} sleep {r['sleep']:.2f} s, cpu {r['cpu']:.2f} s" for s, r in last.items())
    return ""


if __name__ == "__main__":
    main()
