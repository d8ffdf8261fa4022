"""Word count over a generated text file, side by side: quelea (data in local
storage, and in S3), Lithops 3.8 localhost (version 1, its faster mode), and
`wc -w` as the single-process reference.

    cargo build --release -p quelea-bench --bin wordcount_rust
    python bench/wordcount.py [--size-mb 1024] [--chunk-mb 64] [--workers 2] [--repeat 2]

quelea runs the job twice: with the same Python map function as Lithops
(`quelea-local`, `quelea-s3`), and with a Rust one (`quelea-rust-*`,
bench/wordcount_rust.rs), where the user's code no longer bounds what the
engine and partitioner carry.

S3 runs when `QUELEA_S3_ENDPOINT` and friends are set (scripts/s3-server.sh).
Each system runs in its own process; the figure is MB/s end to end, executor
creation included, best of --repeat. Upload time is not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

WORK = os.path.join(tempfile.gettempdir(), "quelea-wordcount-bench")
DATA = os.path.join(WORK, "data.txt")


def count_words(obj):
    return len(obj.data_stream.read().split())


def total(counts):
    return sum(counts)


def generate(size_mb: int) -> int:
    """Writes the dataset once (a 1 MiB block of random words, repeated with
    a rotating first line so blocks differ); returns its word count."""
    meta = DATA + ".json"
    if os.path.exists(meta):
        saved = json.load(open(meta))
        if saved["size_mb"] == size_mb:
            return saved["words"]
    os.makedirs(WORK, exist_ok=True)
    rng = random.Random(1)
    vocabulary = ["serverless", "map", "reduce", "quelea", "chunk", "line", "data", "bird", "a", "of"]
    lines, size = [], 0
    while size < (1 << 20) - 200:
        line = " ".join(rng.choices(vocabulary, k=rng.randint(0, 18)))
        lines.append(line)
        size += len(line) + 1
    block = ("\n".join(lines) + "\n").encode()
    words = 0
    with open(DATA, "wb") as f:
        for i in range(size_mb):
            head = f"block {i}\n".encode()
            f.write(head + block)
            words += 2 + len(block.split())
    json.dump({"size_mb": size_mb, "words": words}, open(meta, "w"))
    return words


def local_store() -> str:
    """A local-storage root whose bucket `bench` holds the dataset (a hard link)."""
    root = os.path.join(WORK, "quelea-store")
    os.makedirs(os.path.join(root, "bench"), exist_ok=True)
    target = os.path.join(root, "bench", "data.txt")
    if not os.path.exists(target):
        os.link(DATA, target)
    return root


def rust_binary() -> str:
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(os.path.dirname(__file__), "..", "target")
    path = os.path.join(target, "release", "wordcount_rust")
    if not os.path.exists(path):
        raise SystemExit(f"{path} is missing: cargo build --release -p quelea-bench --bin wordcount_rust")
    return path


def rust_command(storage: str, chunk: int, workers: int) -> list[str]:
    if storage == "s3":
        where = ["s3", "s3://quelea-test/bench/data.txt"]
    else:
        where = ["local", local_store(), "bench/data.txt"]
    return [rust_binary(), *where, str(chunk), str(workers)]


def run_quelea(storage: str, chunk: int, workers: int) -> int:
    import quelea

    if storage == "s3":
        config = {"storage": "s3", "bucket": "quelea-test"}
        name = "s3://quelea-test/bench/data.txt"
    else:
        config = {"localdisk": {"root": local_store()}, "bucket": "bench"}
        name = "bench/data.txt"
    with quelea.FunctionExecutor(config=config, max_workers=workers) as fexec:
        fexec.map_reduce(count_words, [name], total, obj_chunk_size=chunk)
        return fexec.get_result()


def run_lithops(chunk: int, workers: int) -> int:
    import lithops
    from lithops.constants import LITHOPS_TEMP_DIR

    target = os.path.join(LITHOPS_TEMP_DIR, "bench", "data.txt")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if not os.path.exists(target):
        os.link(DATA, target)
    config = {
        "lithops": {"backend": "localhost", "storage": "localhost", "log_level": None},
        "localhost": {"version": 1, "worker_processes": workers},
    }
    fexec = lithops.FunctionExecutor(config=config, log_level=None)
    fexec.map_reduce(count_words, ["bench/data.txt"], total, obj_chunk_size=chunk)
    result = fexec.get_result(show_progressbar=False)
    fexec.clean()
    return result


def run_wc() -> int:
    out = subprocess.run(["wc", "-w", DATA], capture_output=True, text=True, check=True, env={"LC_ALL": "C"})
    return int(out.stdout.split()[0])


def one(system: str, chunk: int, workers: int) -> int:
    if system == "wc":
        return run_wc()
    if system == "lithops-v1":
        return run_lithops(chunk, workers)
    return run_quelea(system.split("-", 1)[1], chunk, workers)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one")
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--chunk-mb", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    chunk = args.chunk_mb << 20
    if args.one:
        started = time.perf_counter()
        words = one(args.one, chunk, args.workers)
        print(json.dumps({"words": words, "seconds": time.perf_counter() - started}))
        return

    words = generate(args.size_mb)
    size = os.path.getsize(DATA)
    systems = ["wc", "quelea-local", "quelea-rust-local", "lithops-v1"]
    if os.environ.get("QUELEA_S3_ENDPOINT"):
        import quelea

        storage = quelea.Storage(config={"storage": "s3", "bucket": "quelea-test"})
        with open(DATA, "rb") as f:
            storage.put_object("quelea-test", "bench/data.txt", f.read())
        systems[3:3] = ["quelea-s3", "quelea-rust-s3"]
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    print(
        f"{time.strftime('%Y-%m-%d')}: {size / 1e6:.0f} MB, {words} words, {args.chunk_mb} MiB chunks, "
        f"{args.workers} workers, best of {args.repeat}",
        flush=True,
    )
    rows = {}
    for system in systems:
        best = None
        for _ in range(args.repeat):
            if system.startswith("quelea-rust-"):
                command = rust_command(system.rsplit("-", 1)[1], chunk, args.workers)
            else:
                command = [
                    sys.executable,
                    __file__,
                    "--one",
                    system,
                    "--chunk-mb",
                    str(args.chunk_mb),
                    "--workers",
                    str(args.workers),
                ]
            proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
            if proc.returncode != 0:
                print(f"{system} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                break
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            assert result["words"] == words, f"{system} counted {result['words']}, expected {words}"
            best = result["seconds"] if best is None else min(best, result["seconds"])
        if best is not None:
            rows[system] = best
            print(f"  {system}: {best:.2f} s, {size / best / 1e6:.0f} MB/s", flush=True)
    print("\n| system | seconds | MB/s | throughput vs Lithops v1 |")
    print("|---|---:|---:|---:|")
    for system, seconds in rows.items():
        ratio = f"{rows['lithops-v1'] / seconds:.2f}x" if "lithops-v1" in rows else ""
        print(f"| {system} | {seconds:.2f} | {size / seconds / 1e6:.0f} | {ratio} |")
    shutil.rmtree(os.path.join(WORK, "quelea-store"), ignore_errors=True)


if __name__ == "__main__":
    main()
