"""One Lithops program, run by Lithops and by quelea: only the import changes.

    python examples/python/lithops_side_by_side.py            # import lithops
    python examples/python/lithops_side_by_side.py --quelea   # import quelea as lithops

It prints one line per feature (what a Lithops 3.8 user does on the
localhost backend: map, call_async, map_reduce, chaining, iterdata forms,
extra_args, reserved parameters, storage and object addresses, wait,
exceptions, get_result twice, the executor's attributes). The two outputs
must be identical: ``scripts/test-lithops-side-by-side.sh`` runs both (Lithops
in a venv of its own) and compares them in CI.
"""

import sys

if "--quelea" in sys.argv:
    import quelea as lithops
else:
    import lithops


def add(x, y=0):
    return x + y


def square(x):
    return x * x


def pair(x):
    return (x, x * 10)


def total(results):
    return sum(results)


def count_words(obj):
    return len(obj.data_stream.read().split())


def with_id(id, x):
    return (id, x)


def put_and_get(key, storage):
    storage.put_object(storage.bucket, key, b"written in a call")
    return storage.get_object(storage.bucket, key).decode()


def everything(*args, **kwargs):
    return [list(args), sorted(kwargs.items())]


def fails(x):
    if x == 2:
        raise ValueError(f"no {x}")
    return x


def show(name, value):
    print(f"{name}: {value!r}")


# `--debug`: Lithops' (and quelea's) logs on stderr.
LOG_LEVEL = "DEBUG" if "--debug" in sys.argv else None
# Lithops' localhost backend; its version 1 (one process per job), as its
# default version 2 hangs here after a few jobs (Lithops #1438). quelea
# accepts and ignores `localhost.version`.
CONFIG = {"lithops": {"backend": "localhost", "storage": "localhost"}, "localhost": {"version": 1}}


def main():
    fexec = lithops.FunctionExecutor(config=CONFIG, log_level=LOG_LEVEL)
    show("map", fexec.get_result(fexec.map(square, [1, 2, 3, 4])))
    show("last_call", fexec.last_call)
    show("call_async", fexec.get_result(fexec.call_async(add, (3, 4))))
    show("call_async dict", fexec.get_result(fexec.call_async(add, {"x": 1, "y": 2})))
    show("map tuples", fexec.get_result(fexec.map(add, [(1, 2), (3, 4)])))
    show("map dicts", fexec.get_result(fexec.map(add, [{"x": 1, "y": 0}, {"x": 2, "y": 5}])))
    show("map range", fexec.get_result(fexec.map(square, range(5))))
    show("extra_args", fexec.get_result(fexec.map(add, [1, 2], extra_args=(100,))))
    show("extra_args dict", fexec.get_result(fexec.map(add, [{"x": 1}], extra_args={"y": 9})))
    show("var args", fexec.get_result(fexec.map(everything, [{"args": (1, 2), "kwargs": {"k": 3}}])))
    show("id", fexec.get_result(fexec.map(with_id, [10, 20, 30])))
    futures = fexec.map(pair, [1, 2, 3])
    show("chain", fexec.get_result(fexec.map(add, futures)))
    futures = fexec.map(square, [1, 2, 3])
    show("chain slice", fexec.get_result(fexec.map(add, futures[1:])))
    done, not_done = fexec.wait(fexec.map(square, [5, 6]))
    show("wait", (len(done), len(not_done)))

    storage = fexec.storage
    show("storage backend", storage.backend)
    storage.put_object(storage.bucket, "side-by-side/a.txt", "one two three\nfour five\n")
    storage.put_object(storage.bucket, "side-by-side/b.txt", "six seven\n")
    url = f"{storage.backend}://{storage.bucket}/side-by-side/"
    show("obj", sorted(fexec.get_result(fexec.map(count_words, [url]))))
    show("storage param", fexec.get_result(fexec.call_async(put_and_get, "side-by-side/c.txt")))
    show("list_keys", sorted(storage.list_keys(storage.bucket, prefix="side-by-side/")))
    co = storage.put_cloudobject(b"cloud object body")
    show("cloudobject", storage.get_cloudobject(co))
    fexec.clean(cs=[co])
    for key in storage.list_keys(storage.bucket, prefix="side-by-side/"):
        storage.delete_object(storage.bucket, key)

    show("throw_except=False", fexec.get_result(fexec.map(fails, [1, 2, 3]), throw_except=False))
    try:
        fexec.get_result(fexec.map(fails, [1, 2, 3]))
    except ValueError as e:
        show("exception", str(e))
    show("map_reduce", fexec.get_result(fexec.map_reduce(square, range(10), total)))
    show("last_call", fexec.last_call)
    # A bare get_result(): every result not read yet, then nothing new. (A
    # fresh executor: Lithops 3.8 returns again, here, results already read
    # with get_result(fs), and quelea does not; see the README.)
    fresh = lithops.FunctionExecutor(config=CONFIG, log_level=LOG_LEVEL)
    fresh.map(square, [7])
    fresh.map(square, [8])
    show("get_result unread", fresh.get_result())
    show("get_result again", fresh.get_result())
    fresh.clean()
    show("futures", len(fexec.futures) > 0)
    show("mode", fexec.mode)
    show("backend", fexec.backend)
    show("config lithops.backend", fexec.config["lithops"]["backend"])
    fexec.clean()
    with lithops.FunctionExecutor(config=CONFIG, log_level=LOG_LEVEL) as again:
        show("context manager", again.get_result(again.map(square, [9])))
    show("module get_result", lithops.get_result(fexec.map(square, [11])))


if __name__ == "__main__":
    main()
