"""A map's inputs sent in parts (the first calls run while the client
pickles the rest) against the same map sent whole, and Pool, interleaved
in one process:

    python bench/input_parts.py [--rounds 7]

200 calls, each argument a list ``[i, 1 MiB of random bytes]`` (pickled,
not raw), each result 1 MiB. "whole" sets the part sizes so that every
input goes in one part, as before the feed (quelea._batch reads them at
each map). Medians of the rounds, never best-of-N.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time

import quelea
from quelea import _batch


def megabyte_of_record(record):
    return bytes(len(record[1]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    first, most = _batch.FIRST_PART_BYTES, _batch.MAX_PART_CALLS
    data = [[i, os.urandom(1 << 20)] for i in range(200)]
    with quelea.FunctionExecutor(config={"localdisk": {"root": tempfile.mkdtemp()}}, max_workers=2) as fexec:
        with multiprocessing.Pool(2) as pool:
            fexec.get_result(fexec.map(megabyte_of_record, data[:4]))
            pool.map(megabyte_of_record, data[:4], 1)
            times: dict[str, list[float]] = {"parts": [], "whole": [], "pool": []}
            for r in range(args.rounds):
                order = list(times)[r % 3 :] + list(times)[: r % 3]
                for mode in order:
                    whole = mode == "whole"
                    _batch.FIRST_PART_BYTES = 1 << 62 if whole else first
                    _batch.MAX_PART_CALLS = 1 << 62 if whole else most
                    t0 = time.perf_counter()
                    if mode == "pool":
                        pool.map(megabyte_of_record, data, 1)
                    else:
                        fexec.get_result(fexec.map(megabyte_of_record, data))
                    times[mode].append(time.perf_counter() - t0)
    print(f"{time.strftime('%Y-%m-%d')}: {args.rounds} rounds, load average {os.getloadavg()[0]:.1f}")
    for mode, runs in times.items():
        print(f"{mode}: median {statistics.median(runs):.3f} s  ({', '.join(f'{t:.3f}' for t in runs)})")


if __name__ == "__main__":
    main()
