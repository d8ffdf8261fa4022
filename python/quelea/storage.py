"""``quelea.Storage``: the Lithops ``Storage`` API over quelea's object stores."""

from __future__ import annotations

import io
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, BinaryIO

from . import _engine
from .exceptions import StorageNoSuchKeyError

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass(frozen=True)
class CloudObject:
    """A reference to an object put with ``put_cloudobject``."""

    backend: str
    bucket: str
    key: str


class Storage:
    """Objects in the configured storage. Methods take a bucket, as Lithops'
    do; the default bucket is the configured one."""

    def __init__(
        self,
        config: dict | None = None,
        backend: str | None = None,
        storage_config: Any = None,
        config_file: str | None = None,
    ):
        from .executor import config_overrides

        self._overrides = config_overrides(config, storage=backend)
        self._config_file = config_file
        self._stores: dict[str | None, Any] = {}
        default = self._store(None)
        self.bucket: str = default.bucket
        self.backend: str = default.backend

    def _store(self, bucket: str | None) -> Any:
        if bucket is not None and bucket == getattr(self, "bucket", None):
            bucket = None
        store = self._stores.get(bucket)
        if store is None:
            text = json.dumps(self._overrides) if self._overrides else None
            store = _engine.Storage(text, self._config_file, bucket)
            self._stores[bucket] = store
        return store

    def get_storage_config(self) -> dict:
        return {"backend": self.backend, "bucket": self.bucket}

    def put_object(self, bucket: str, key: str, body: bytes | str | BinaryIO) -> None:
        if isinstance(body, str):
            data = body.encode()
        elif isinstance(body, bytes | bytearray | memoryview):
            data = bytes(body)
        elif hasattr(body, "read"):
            data = body.read()
            if isinstance(data, str):
                data = data.encode()
        else:
            raise TypeError(f"body must be bytes, str or a file-like object, got {type(body).__name__}")
        self._store(bucket).put(key, data)

    def get_object(self, bucket: str, key: str, stream: bool = False, extra_get_args: dict | None = None):
        start = end = None
        if extra_get_args and "Range" in extra_get_args:
            match = _RANGE.match(str(extra_get_args["Range"]).strip())
            if not match or not (match.group(1) or match.group(2)):
                raise ValueError(f"Range must look like 'bytes=START-END', got {extra_get_args['Range']!r}")
            first, last = match.group(1), match.group(2)
            store = self._store(bucket)
            if first:
                start = int(first)
                end = int(last) + 1 if last else None  # HTTP ranges are inclusive
            else:
                size = store.head(key)
                start, end = max(0, size - int(last)), size
            if end is not None:
                end = min(end, self._store(bucket).head(key))
        data = self._store(bucket).get(key, start, end)
        return io.BytesIO(data) if stream else data

    def head_object(self, bucket: str, key: str) -> dict:
        return {"content-length": str(self._store(bucket).head(key))}

    def list_objects(
        self, bucket: str, prefix: str | None = None, match_pattern: str | None = None
    ) -> list[dict]:
        prefix = prefix or ""
        # Stores list whole path segments: list the parent, then match the rest.
        parent = prefix[: prefix.rfind("/") + 1]
        objects = [{"Key": k, "Size": s} for k, s in self._store(bucket).list(parent) if k.startswith(prefix)]
        if match_pattern:
            import fnmatch

            objects = [o for o in objects if fnmatch.fnmatch(o["Key"], match_pattern)]
        return objects

    def list_keys(self, bucket: str, prefix: str | None = None) -> list[str]:
        return [o["Key"] for o in self.list_objects(bucket, prefix)]

    def delete_object(self, bucket: str, key: str) -> None:
        self._store(bucket).delete(key)

    def delete_objects(self, bucket: str, key_list: list[str]) -> None:
        for key in key_list:
            self._store(bucket).delete(key)

    def head_bucket(self, bucket: str) -> dict:
        self._store(bucket).list("")
        return {"ResponseMetadata": {"HTTPStatusCode": 200}}

    def put_cloudobject(
        self, body: bytes | str | BinaryIO, bucket: str | None = None, key: str | None = None
    ) -> CloudObject:
        bucket = bucket or self.bucket
        key = key or f"quelea/tmp/cloudobject_{uuid.uuid4().hex}"
        self.put_object(bucket, key, body)
        return CloudObject(self.backend, bucket, key)

    def get_cloudobject(self, cloud_object: CloudObject, stream: bool = False):
        if not isinstance(cloud_object, CloudObject):
            raise TypeError(f"expected a CloudObject, got {type(cloud_object).__name__}")
        return self.get_object(cloud_object.bucket, cloud_object.key, stream=stream)

    def delete_cloudobject(self, cloud_object: CloudObject) -> None:
        self.delete_object(cloud_object.bucket, cloud_object.key)

    def delete_cloudobjects(self, cloud_objects: list[CloudObject]) -> None:
        for co in cloud_objects:
            self.delete_cloudobject(co)

    def __repr__(self) -> str:
        return f"<quelea.Storage {self._store(None).describe()}>"


__all__ = ["Storage", "CloudObject", "StorageNoSuchKeyError"]
