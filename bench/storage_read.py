"""Word count read from the GCS and Azure Blob emulators, next to one plain
client GET of the same object, as a ratio of throughputs.

    eval "$(scripts/cloud-emulators.sh start /tmp/emu)"
    python bench/storage_read.py [--size-mb 1024] [--chunk-mb 64] [--workers 2] [--repeat 2]
    scripts/cloud-emulators.sh stop /tmp/emu

The object is generated as in bench/wordcount.py (random words, 1 MiB blocks)
and uploaded once per emulator (not timed): to Azurite through quelea's own
Storage, to fake-gcs-server through its JSON upload API (it takes no XML-API
writes). quelea's figure is end to end: executor creation, discovery,
`map_reduce(count_words, ["az://…" | "gs://…"], obj_chunk_size=…)` with job
storage on local disk. The plain GET is one urllib request for the whole
object (Azure: signed with the emulator's public Shared Key), body read and
dropped. Best of --repeat.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import random
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from email.utils import formatdate

import quelea

BUCKET = "quelea-test"
AZ_ACCOUNT = "devstoreaccount1"
AZ_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def count_words(obj):
    return len(obj.data_stream.read().split())


def total(counts):
    return sum(counts)


def generate(size_mb: int) -> tuple[bytes, int]:
    rng = random.Random(7)
    words = [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(1, 9)))
        for _ in range(5000)
    ]
    block = bytearray()
    while len(block) < (1 << 20):
        block += (" ".join(rng.choices(words, k=12)) + "\n").encode()
    block = bytes(block[: 1 << 20].rsplit(b"\n", 1)[0] + b"\n")
    data = block * size_mb
    return data, len(data.split())


def azure_get(endpoint: str, key: str) -> int:
    date, version = formatdate(usegmt=True), "2021-08-06"
    resource = f"/{AZ_ACCOUNT}/{AZ_ACCOUNT}/{BUCKET}/{key}"
    to_sign = "GET\n" + "\n" * 11 + f"x-ms-date:{date}\nx-ms-version:{version}\n" + resource
    sig = base64.b64encode(hmac.new(base64.b64decode(AZ_KEY), to_sign.encode(), hashlib.sha256).digest())
    headers = {
        "x-ms-date": date,
        "x-ms-version": version,
        "Authorization": f"SharedKey {AZ_ACCOUNT}:{sig.decode()}",
    }
    request = urllib.request.Request(f"{endpoint}/{AZ_ACCOUNT}/{BUCKET}/{key}", headers=headers)
    return drain(request)


def gcs_get(endpoint: str, key: str) -> int:
    return drain(urllib.request.Request(f"{endpoint}/{BUCKET}/{urllib.parse.quote(key)}"))


def drain(request) -> int:
    n = 0
    with urllib.request.urlopen(request, timeout=600) as response:
        while chunk := response.read(8 << 20):
            n += len(chunk)
    return n


def best(repeat: int, run) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--chunk-mb", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    gcs, azure = os.environ.get("QUELEA_GCS_ENDPOINT"), os.environ.get("QUELEA_AZURE_ENDPOINT")
    if not gcs or not azure:
        sys.exit('start the emulators first: eval "$(scripts/cloud-emulators.sh start /tmp/emu)"')
    data, words = generate(args.size_mb)
    key = f"bench/words-{args.size_mb}mb.txt"
    quelea.Storage(config={"storage": "azure", "bucket": BUCKET}).put_object(BUCKET, key, data)
    upload = f"{gcs}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={urllib.parse.quote(key, safe='')}"
    drain(urllib.request.Request(upload, data=data, method="POST"))
    size = len(data)
    del data

    root = tempfile.mkdtemp(prefix="quelea-storage-bench-")
    config = {"localdisk": {"root": root}, "local": {"workers": args.workers}}

    def quelea_count(address: str) -> None:
        with quelea.FunctionExecutor(config=config) as fexec:
            futures = fexec.map_reduce(count_words, [address], total, obj_chunk_size=args.chunk_mb << 20)
            got = fexec.get_result(futures)
        assert got == words, (got, words)

    print(f"## {time.strftime('%Y-%m-%d')}: word count of {size >> 20} MiB from each emulator")
    print(f"chunks of {args.chunk_mb} MiB, {args.workers} workers, best of {args.repeat}\n")
    print("| storage | plain GET s | quelea word count s | GET MB/s | quelea MB/s | quelea / GET |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, address, get in (
        ("azure (Azurite)", f"az://{BUCKET}/{key}", lambda: azure_get(azure, key)),
        ("gcs (fake-gcs-server)", f"gs://{BUCKET}/{key}", lambda: gcs_get(gcs, key)),
    ):
        assert get() == size
        t_get = best(args.repeat, get)
        t_quelea = best(args.repeat, lambda a=address: quelea_count(a))
        mb = size / 1e6
        print(
            f"| {name} | {t_get:.2f} | {t_quelea:.2f} | {mb / t_get:.0f} | {mb / t_quelea:.0f} "
            f"| {t_get / t_quelea:.2f}x |"
        )


if __name__ == "__main__":
    main()
