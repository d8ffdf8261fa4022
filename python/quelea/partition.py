"""What a function with an ``obj`` parameter receives: one chunk of one object.

``map(f, ["s3://bucket/logs/", "/data/file.csv"], obj_chunk_size=64 << 20)``
runs ``f`` once per chunk. Every line belongs to exactly one chunk, the one
holding its first byte, so the chunks of an object concatenate to the object.
"""

from __future__ import annotations

import io
import json
from functools import cached_property
from typing import Any

from . import _engine
from ._storage_kinds import storage_kinds


def _lithops_name(kind: str) -> str:
    return next((k["lithops_name"] for k in storage_kinds() if k["kind"] == kind), kind)


class _RawChunk(io.RawIOBase):
    def __init__(self, stream: Any):
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._stream.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        return n

    def readall(self) -> bytes:
        # One call into the engine for the whole chunk, not one per 8 KiB.
        return self._stream.read(-1)


class ChunkObject:
    """One chunk: ``key``, ``bucket``, ``part`` (1-based, as in Lithops),
    ``total_parts``, ``data_byte_range`` (nominal, inclusive), ``chunk_size``,
    ``header`` (the object's first line, with ``obj_header=True``) and
    ``data_stream``, a file-like object that streams the chunk's lines."""

    def __init__(self, descriptor: str, extra: dict | None = None):
        self._descriptor = descriptor
        d = json.loads(descriptor)
        location = d["location"]
        kind = location["type"]
        if kind == "storage":
            # Lithops' name of the storage holding it (``aws_s3``, ``gcp_storage``, ...).
            self.backend = _lithops_name(location.get("storage", "localdisk"))
            self.bucket, self.key = location["bucket"], location["key"]
        elif kind == "local":
            path = location["path"]
            self.backend, self.path = "local", path
            self.bucket, _, self.key = path.rpartition("/")
        else:
            self.backend, self.url = "http", location["url"]
            self.bucket, self.key = location["url"].rsplit("/", 1)[0], location["url"]
        self.part = d["part"] + 1
        self.total_parts = d["total_parts"]
        self.chunk_size = d["end"] - d["start"]
        self.data_byte_range = (d["start"], max(d["start"], d["end"] - 1))
        self.object_size = d["object_size"]
        newline = d.get("newline")
        self.newline = bytes(newline) if newline is not None else None

    @cached_property
    def _stream(self) -> Any:
        return _engine.ChunkStream(self._descriptor)

    @cached_property
    def data_stream(self) -> io.BufferedReader:
        return io.BufferedReader(_RawChunk(self._stream), buffer_size=1 << 20)

    @property
    def header(self) -> bytes | None:
        return self._stream.header()

    def __reduce__(self):
        return (ChunkObject, (self._descriptor,))

    def __repr__(self) -> str:
        return f"<ChunkObject {self.bucket}/{self.key} part {self.part}/{self.total_parts}>"


__all__ = ["ChunkObject"]
