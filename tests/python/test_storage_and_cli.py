"""quelea.Storage and the console script."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

import quelea
from quelea.exceptions import StorageNoSuchKeyError


@pytest.fixture
def storage(storage_root):
    return quelea.Storage(config={"localdisk": {"root": str(storage_root)}})


def test_put_get_ranges_head_list_delete(storage):
    bucket = storage.bucket
    storage.put_object(bucket, "t/a.txt", "hello world")
    storage.put_object(bucket, "t/b.bin", io.BytesIO(b"\x00\x01\x02"))
    assert storage.get_object(bucket, "t/a.txt") == b"hello world"
    assert storage.get_object(bucket, "t/a.txt", extra_get_args={"Range": "bytes=6-10"}) == b"world"
    assert storage.get_object(bucket, "t/a.txt", extra_get_args={"Range": "bytes=6-"}) == b"world"
    assert storage.get_object(bucket, "t/a.txt", extra_get_args={"Range": "bytes=-5"}) == b"world"
    assert storage.get_object(bucket, "t/a.txt", stream=True).read() == b"hello world"
    assert storage.head_object(bucket, "t/a.txt")["content-length"] == "11"
    assert storage.list_keys(bucket, "t/") == ["t/a.txt", "t/b.bin"]
    assert storage.list_objects(bucket, "t/a")[0] == {"Key": "t/a.txt", "Size": 11}
    storage.delete_objects(bucket, ["t/a.txt", "t/b.bin"])
    assert storage.list_keys(bucket, "t/") == []
    with pytest.raises(StorageNoSuchKeyError, match="t/a.txt") as err:
        storage.get_object(bucket, "t/a.txt")
    assert isinstance(err.value, KeyError)
    with pytest.raises(ValueError, match="Range"):
        storage.get_object(bucket, "t/a.txt", extra_get_args={"Range": "lines=1-2"})


def test_cloudobjects_and_other_buckets(storage):
    co = storage.put_cloudobject(b"payload")
    assert storage.get_cloudobject(co) == b"payload"
    storage.delete_cloudobject(co)
    with pytest.raises(StorageNoSuchKeyError):
        storage.get_cloudobject(co)
    storage.put_object("other-bucket", "k", b"v")
    assert storage.get_object("other-bucket", "k") == b"v"
    with pytest.raises(TypeError, match="body must be"):
        storage.put_object(storage.bucket, "k", 42)


def test_console_script_runs_the_cli(storage_root):
    # The console script sits next to this interpreter (the venv's bin).
    exe = str(Path(sys.executable).parent / "quelea")
    assert Path(exe).exists(), f"the quelea console script is installed at {exe}"
    out = subprocess.run([exe, "version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("quelea ")
    env = {"QUELEA_STORAGE_DIR": str(storage_root), "PATH": "/usr/bin:/bin"}
    hello = [exe, "hello", "--calls", "50"]
    out = subprocess.run(hello, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "sum of squares = 40425 (checked)" in out.stdout
    out = subprocess.run(
        [exe, "config", "show"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**env, "QUELEA_WORKERS": "nope"},
    )
    assert out.returncode == 1 and "QUELEA_WORKERS=nope" in out.stderr


def test_console_script_exits_quietly_into_a_closed_pipe(tmp_path):
    """`quelea ... | head -1` through the Python console script: exit 0, no
    traceback (no PanicException). Outputs are far larger than a pipe's 64 KiB,
    so the console script is still writing when `head` has gone."""
    exe = str(Path(sys.executable).parent / "quelea")
    root = tmp_path / "storage"
    many = root / "quelea" / "many"
    many.mkdir(parents=True)
    for i in range(3000):
        (many / f"object-{i:05}").write_bytes(b"x")
    config = {"localdisk": {"root": str(root)}, "execution": {"data_cleaner": False}}
    with quelea.FunctionExecutor(config=config) as fexec:
        futures = fexec.map(abs, range(3000))
        fexec.get_result(futures)
        job = f"{fexec.executor_id}-M000"
    env = {"QUELEA_STORAGE_DIR": str(root), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "Q": exe}
    for args in (["logs", job], ["storage", "ls"], ["jobs"], ["version"], ["hello", "--calls", "20"]):
        out = subprocess.run(
            ["bash", "-c", 'set -o pipefail; "$Q" "$@" | head -1', "bash", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert out.returncode == 0, (args, out.stderr)
        assert len(out.stdout.splitlines()) == 1, (args, out.stdout)
        for bad in ("Traceback", "PanicException", "panicked", "Broken pipe"):
            assert bad not in out.stderr, (args, out.stderr)
