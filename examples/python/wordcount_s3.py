"""Word count over a multi-file text dataset on S3, with map_reduce.

Needs an S3 server and its settings in the environment, e.g. the local one:

    eval "$(scripts/s3-server.sh start /tmp/s3)"
    .venv/bin/python examples/python/wordcount_s3.py --bucket quelea-test
    scripts/s3-server.sh stop /tmp/s3

It uploads a generated dataset, counts its words with one call per 256 KiB
chunk, checks the total against a direct count, and deletes the dataset.
"""

import argparse
import random
import uuid

import quelea


def count_words(obj):
    return sum(len(line.split()) for line in obj.data_stream)


def total(counts):
    return sum(counts)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bucket", default="quelea-test")
    parser.add_argument("--files", type=int, default=5)
    args = parser.parse_args()

    rng = random.Random(7)
    words = ["serverless", "map", "reduce", "quelea", "chunk", "line", "data", "bird"]
    storage = quelea.Storage(config={"storage": "s3", "bucket": args.bucket})
    prefix = f"examples/wordcount-{uuid.uuid4().hex[:8]}/"
    expected = 0
    for i in range(args.files):
        lines = [" ".join(rng.choices(words, k=rng.randint(0, 30))) for _ in range(20_000)]
        text = "\n".join(lines) + "\n"
        expected += len(text.split())
        storage.put_object(args.bucket, f"{prefix}part-{i:03}.txt", text)

    with quelea.FunctionExecutor(config={"storage": "s3", "bucket": args.bucket}) as fexec:
        fexec.map_reduce(count_words, [f"s3://{args.bucket}/{prefix}"], total, obj_chunk_size=256 << 10)
        counted = fexec.get_result()
        chunks = len(fexec.futures) - 1
    storage.delete_objects(args.bucket, storage.list_keys(args.bucket, prefix))
    print(f"{counted} words in {args.files} objects, {chunks} chunks (direct count: {expected})")
    assert counted == expected


if __name__ == "__main__":
    main()
