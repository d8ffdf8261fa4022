"""The data partitioner from Python: functions with an ``obj`` parameter."""

from __future__ import annotations

import random
import uuid

import pytest

import quelea


def chunk_bytes(obj):
    return (obj.key, obj.part, obj.total_parts, obj.data_stream.read())


def read_in_small_pieces(obj):
    pieces = []
    while piece := obj.data_stream.read(3):
        pieces.append(piece)
    return b"".join(pieces)


def count_lines(obj):
    return sum(1 for _ in obj.data_stream)


def describe(obj, tag):
    return {
        "key": obj.key,
        "bucket": obj.bucket,
        "part": obj.part,
        "total": obj.total_parts,
        "range": obj.data_byte_range,
        "size": obj.chunk_size,
        "tag": tag,
        "header": obj.header,
    }


def total(counts):
    return sum(counts)


def random_text(seed: int) -> bytes:
    rng = random.Random(seed)
    lines = []
    for _ in range(rng.randint(0, 60)):
        length = rng.choice([0, 1, 5, 20, 200])
        lines.append("".join(rng.choice("abc xyz") for _ in range(length)))
    text = "\n".join(lines)
    if rng.random() < 0.5:
        text += "\n"
    return text.replace("z\n", "z\r\n").encode()


@pytest.fixture
def dataset(executor):
    """Objects in the job storage's bucket, under a fresh prefix."""
    storage = executor.storage
    prefix = f"data-{uuid.uuid4().hex[:8]}/"
    texts = {f"{prefix}part-{i}.txt": random_text(i) for i in range(4)}
    texts[f"{prefix}empty.txt"] = b""
    texts[f"{prefix}no-newline.txt"] = b"one\ntwo\nthree"
    for key, body in texts.items():
        storage.put_object(storage.bucket, key, body)
    return storage.bucket, prefix, texts


def test_chunks_concatenate_to_each_object(executor, dataset):
    bucket, prefix, texts = dataset
    for chunk_size in (1, 7, 64, 10_000):
        futures = executor.map(chunk_bytes, [f"{bucket}/{prefix}"], obj_chunk_size=chunk_size)
        rebuilt: dict[str, bytes] = {}
        for key, part, total_parts, data in executor.get_result(futures):
            assert 1 <= part <= total_parts
            rebuilt[key] = rebuilt.get(key, b"") + data
        assert rebuilt == texts, f"chunk size {chunk_size}"


def test_small_reads_match_one_read_and_lines_are_whole(executor, dataset):
    bucket, prefix, texts = dataset
    key = f"{prefix}part-1.txt"
    whole = executor.get_result(executor.map(chunk_bytes, [f"s3://{bucket}/{key}"], obj_chunk_number=5))
    small = executor.get_result(executor.map(read_in_small_pieces, [f"{bucket}/{key}"], obj_chunk_number=5))
    assert [w[3] for w in whole] == small
    for data in small[:-1]:
        assert data == b"" or data.endswith(b"\n")
    lines = executor.get_result(executor.map(count_lines, [f"{bucket}/{key}"], obj_chunk_size=13))
    assert sum(lines) == len(texts[key].splitlines())


def test_exact_ranges_without_newline(executor, dataset):
    bucket, prefix, texts = dataset
    key = f"{prefix}no-newline.txt"
    parts = executor.get_result(
        executor.map(chunk_bytes, [f"{bucket}/{key}"], obj_chunk_size=4, obj_newline=None)
    )
    assert [p[3] for p in parts] == [b"one\n", b"two\n", b"thre", b"e"]


def test_obj_attributes_and_other_keys(executor, dataset):
    bucket, prefix, _ = dataset
    iterdata = [{"obj": f"{bucket}/{prefix}no-newline.txt", "tag": "x"}]
    rows = executor.get_result(executor.map(describe, iterdata, obj_chunk_size=5, obj_header=True))
    assert [r["part"] for r in rows] == [1, 2, 3] and {r["total"] for r in rows} == {3}
    assert rows[0]["key"] == f"{prefix}no-newline.txt" and rows[0]["bucket"] == bucket
    assert rows[1]["range"] == (5, 9) and rows[1]["size"] == 5
    assert {r["tag"] for r in rows} == {"x"}
    assert {r["header"] for r in rows} == {b"one\n"}


def test_header_option_keeps_rows_only(executor):
    storage = executor.storage
    key = f"csv-{uuid.uuid4().hex[:8]}/table.csv"
    storage.put_object(storage.bucket, key, b"id,name\n1,a\n2,b\n3,c\n4,d\n")
    rows = executor.get_result(
        executor.map(chunk_bytes, [f"{storage.bucket}/{key}"], obj_chunk_size=8, obj_header=True)
    )
    assert b"".join(r[3] for r in rows) == b"1,a\n2,b\n3,c\n4,d\n"


def test_local_files_globs_and_reduce_by_key(executor, tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.log").write_bytes(b"1\n2\n3\n")
    (tmp_path / "sub" / "b.log").write_bytes(b"4\n5\n")
    (tmp_path / "c.txt").write_bytes(b"6\n")
    counts = executor.get_result(executor.map(count_lines, [str(tmp_path)], obj_chunk_size=2))
    assert sum(counts) == 6
    futures = executor.map_reduce(
        count_lines, [str(tmp_path / "**" / "*.log")], total, obj_chunk_size=2, obj_reduce_by_key=True
    )
    assert executor.get_result(futures) == [3, 2]
    futures = executor.map_reduce(count_lines, [str(tmp_path)], total, obj_chunk_size=2)
    assert executor.get_result(futures) == 6


def test_names_that_match_nothing_are_clear_errors(executor, tmp_path):
    with pytest.raises(quelea.exceptions.QueleaError, match="nothing-here"):
        executor.map(count_lines, [str(tmp_path / "nothing-here")])
    with pytest.raises(ValueError, match="obj_chunk_size"):
        executor.map(count_lines, [str(tmp_path)], obj_chunk_size=0)
    with pytest.raises(TypeError, match="must name data"):
        executor.map(count_lines, [42])
    with pytest.raises(ValueError, match="obj_reduce_by_key"):
        executor.map_reduce(lambda x: x, [1], total, obj_reduce_by_key=True)
