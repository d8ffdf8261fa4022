"""No-op Python calls, side by side: quelea vs multiprocessing.Pool, Dask
LocalCluster and Lithops 3.8 in local mode (its version 1 and version 2).

    python bench/python_calls.py [--calls 10000] [--small 1000] [--workers 2] [--lithops-v2-calls 200]

Every system runs in its own fresh process, one after another, in one go.
"cold" includes creating the executor/pool/cluster; "warm" is a second run on
the same one. "quelea" is the default (large maps are batched, as Pool.map
chunks them); "quelea-chunksize-1" dispatches one runner call per element.
Each figure is the best of --repeat runs. The output is a Markdown table with
ratios against quelea.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# Warm runs per process for quelea and Pool, whose warm times are a few
# milliseconds (one run is at the mercy of the scheduler); Dask and Lithops
# take seconds, so one warm run each.
WARM_RUNS = 5


def noop(x):
    return x


def run_quelea(calls: int, workers: int, chunksize: int | None) -> dict:
    import quelea

    root = tempfile.mkdtemp(prefix="quelea-bench-")
    t0 = time.perf_counter()
    fexec = quelea.FunctionExecutor(config={"localdisk": {"root": root}}, max_workers=workers)
    assert fexec.get_result(fexec.map(noop, range(calls), chunksize=chunksize)) == list(range(calls))
    cold = time.perf_counter() - t0
    warm = float("inf")
    for _ in range(WARM_RUNS):
        t0 = time.perf_counter()
        assert fexec.get_result(fexec.map(noop, range(calls), chunksize=chunksize)) == list(range(calls))
        warm = min(warm, time.perf_counter() - t0)
    fexec.close()
    return {"cold": cold, "warm": warm}


def run_pool(calls: int, workers: int, chunksize: int | None) -> dict:
    import multiprocessing

    t0 = time.perf_counter()
    with multiprocessing.Pool(workers) as pool:
        assert pool.map(noop, range(calls), chunksize) == list(range(calls))
        cold = time.perf_counter() - t0
        warm = float("inf")
        for _ in range(WARM_RUNS):
            t0 = time.perf_counter()
            assert pool.map(noop, range(calls), chunksize) == list(range(calls))
            warm = min(warm, time.perf_counter() - t0)
    return {"cold": cold, "warm": warm}


def run_dask(calls: int, workers: int) -> dict:
    os.environ.setdefault("DASK_TEMPORARY_DIRECTORY", tempfile.mkdtemp(prefix="dask-bench-"))
    from dask.distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(
        n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
    )
    client = Client(cluster)
    assert client.gather(client.map(noop, range(calls), pure=False)) == list(range(calls))
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert client.gather(client.map(noop, range(calls), pure=False)) == list(range(calls))
    warm = time.perf_counter() - t0
    client.close()
    cluster.close()
    return {"cold": cold, "warm": warm}


def run_lithops(calls: int, workers: int, version: int) -> dict:
    import lithops

    config = {
        "lithops": {"backend": "localhost", "storage": "localhost", "log_level": None},
        "localhost": {"version": version, "worker_processes": workers},
    }
    t0 = time.perf_counter()
    fexec = lithops.FunctionExecutor(config=config, log_level=None)
    fexec.map(noop, range(calls))
    assert fexec.get_result(show_progressbar=False) == list(range(calls))
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    fexec.map(noop, range(calls))
    assert fexec.get_result(show_progressbar=False) == list(range(calls))
    warm = time.perf_counter() - t0
    fexec.clean()
    return {"cold": cold, "warm": warm}


def one(system: str, calls: int, workers: int) -> dict:
    if system == "quelea":
        return run_quelea(calls, workers, None)
    if system == "quelea-chunksize-1":
        return run_quelea(calls, workers, 1)
    if system == "pool":
        return run_pool(calls, workers, None)
    if system == "pool-chunksize-1":
        return run_pool(calls, workers, 1)
    if system == "dask":
        return run_dask(calls, workers)
    if system.startswith("lithops-v"):
        return run_lithops(calls, workers, int(system[-1]))
    raise SystemExit(f"unknown system {system}")


def measure(system: str, calls: int, workers: int, repeat: int) -> dict | None:
    best = None
    for _ in range(repeat):
        proc = subprocess.run(
            [sys.executable, __file__, "--one", system, "--calls", str(calls), "--workers", str(workers)],
            capture_output=True,
            text=True,
            timeout=1800,
            env={**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"},
        )
        if proc.returncode != 0:
            print(f"{system}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return None
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        if best is None or result["warm"] < best["warm"]:
            best = {**result, "cold": min(result["cold"], best["cold"]) if best else result["cold"]}
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one")
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--lithops-v2-calls", type=int, default=200)
    parser.add_argument(
        "--systems", default="quelea,quelea-chunksize-1,pool,pool-chunksize-1,dask,lithops-v1,lithops-v2"
    )
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.calls, args.workers)))
        return

    systems = args.systems.split(",")
    rows = []
    print(f"{time.strftime('%Y-%m-%d')}: {args.workers} worker processes, best of {args.repeat}", flush=True)
    small = measure("quelea", args.small, args.workers, args.repeat)
    for system in systems:
        calls = args.lithops_v2_calls if system == "lithops-v2" else args.calls
        repeat = 1 if system.startswith("lithops") else args.repeat
        result = measure(system, calls, args.workers, repeat)
        if result:
            rows.append((system, calls, result))
            print(
                f"  {system}: {calls} calls, cold {result['cold']:.3f} s, warm {result['warm']:.3f} s",
                flush=True,
            )
    base = {r[0]: r for r in rows}.get("quelea")
    print()
    print("| system | calls | cold (s) | warm (s) | warm µs/call | warm time vs quelea |")
    print("|---|---:|---:|---:|---:|---:|")
    for system, calls, r in rows:
        per_call = r["warm"] / calls * 1e6
        ratio = ""
        if base:
            quelea_per_call = base[2]["warm"] / base[1]
            ratio = f"{per_call / (quelea_per_call * 1e6):.2f}x"
        print(f"| {system} | {calls} | {r['cold']:.3f} | {r['warm']:.4f} | {per_call:.2f} | {ratio} |")
    if small:
        print(f"\nquelea, {args.small} calls end to end including executor creation: {small['cold']:.3f} s")


if __name__ == "__main__":
    main()
