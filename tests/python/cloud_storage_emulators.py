"""The partitioner over ``gs://`` and ``az://`` inputs, read from the GCS and
Azure Blob emulators that scripts/cloud-emulators.sh starts (their
``QUELEA_GCS_*`` / ``QUELEA_AZURE_*`` variables in the environment), with job
storage in a local directory: an address of another storage is read with that
storage's settings. Then the same on the ``http`` backend: two real ``quelea
worker serve`` processes share job storage in Azurite with the client and read
the inputs from both emulators themselves. Run by
scripts/test-cloud-storage.sh; not a ``test_*`` module, so a plain ``pytest
tests/python`` (no emulators) leaves it out."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest

import quelea

BUCKET = "quelea-test"
TEXT = b"".join(b"line %d of the data\n" % i for i in range(200))


def chunk_text(obj):
    return (obj.backend, obj.bucket, obj.key, obj.data_stream.read())


def count_words(obj):
    return sum(len(line.split()) for line in obj.data_stream)


def total(counts):
    return sum(counts)


@pytest.fixture(scope="module")
def emulators():
    missing = [v for v in ("QUELEA_GCS_ENDPOINT", "QUELEA_AZURE_ENDPOINT") if not os.environ.get(v)]
    assert not missing, f"{missing} not set: start the emulators with scripts/cloud-emulators.sh first"
    return os.environ["QUELEA_GCS_ENDPOINT"]


def seed_gcs(endpoint: str, key: str, body: bytes) -> None:
    # Through the emulator's JSON API: fake-gcs-server takes no XML-API PUT
    # (what object_store writes with), only its reads.
    name = urllib.parse.quote(key, safe="")
    url = f"{endpoint}/upload/storage/v1/b/{BUCKET}/o?uploadType=media&name={name}"
    with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=30) as r:
        assert r.status == 200


@pytest.fixture(scope="module")
def fexec(emulators, storage_root):
    config = {"localdisk": {"root": str(storage_root)}, "local": {"workers": 2}}
    with quelea.FunctionExecutor(config=config) as fexec:
        yield fexec


def rebuild(rows):
    return b"".join(r[3] for r in sorted(rows, key=lambda r: r[2]))


def test_az_inputs_under_every_azure_scheme(fexec):
    prefix = f"py-{uuid.uuid4().hex[:8]}/"
    azure = quelea.Storage(config={"storage": "azure", "bucket": BUCKET})
    assert azure.backend == "azure_storage"
    azure.put_object(BUCKET, f"{prefix}a.txt", TEXT)
    azure.put_object(BUCKET, f"{prefix}b.txt", TEXT[:100])
    for address in (
        f"az://{BUCKET}/{prefix}",
        f"azure_storage://{BUCKET}/{prefix}",
        f"abfss://{BUCKET}@devstoreaccount1.dfs.core.windows.net/{prefix}",
    ):
        rows = fexec.get_result(fexec.map(chunk_text, [address], obj_chunk_size=512))
        assert len(rows) > 2, address
        assert {r[0] for r in rows} == {"azure_storage"} and {r[1] for r in rows} == {BUCKET}
        by_key: dict[str, bytes] = {}
        for _, _, key, data in rows:
            by_key[key] = by_key.get(key, b"") + data
        assert by_key == {f"{prefix}a.txt": TEXT, f"{prefix}b.txt": TEXT[:100]}, address
    futures = fexec.map_reduce(count_words, [f"az://{BUCKET}/{prefix}a.txt"], total, obj_chunk_number=4)
    words = fexec.get_result(futures)
    assert words == len(TEXT.split())


def test_gs_inputs_under_every_gcs_scheme(fexec, emulators):
    prefix = f"py-{uuid.uuid4().hex[:8]}/"
    seed_gcs(emulators, f"{prefix}a.txt", TEXT)
    for address in (
        f"gs://{BUCKET}/{prefix}",
        f"gcs://{BUCKET}/{prefix}a.txt",
        f"gcp_storage://{BUCKET}/{prefix}*.txt",
    ):
        rows = fexec.get_result(fexec.map(chunk_text, [address], obj_chunk_size=700))
        assert len(rows) > 2, address
        assert {r[0] for r in rows} == {"gcp_storage"} and {r[2] for r in rows} == {f"{prefix}a.txt"}
        assert rebuild(rows) == TEXT, address
    futures = fexec.map_reduce(count_words, [f"gs://{BUCKET}/{prefix}a.txt"], total, obj_chunk_number=3)
    words = fexec.get_result(futures)
    assert words == len(TEXT.split())


def test_missing_container_and_bucket_are_clear_errors(fexec):
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    for address in (f"az://{missing}/x/", f"gs://{missing}/x/"):
        with pytest.raises(Exception, match=missing):
            fexec.map(chunk_text, [address])


SECRET = "cloud-emulators-http-secret"


@pytest.fixture(scope="module")
def azure_servers(emulators):
    """Two `quelea worker serve` processes with job storage in Azurite; the
    emulators' settings reach them through the environment."""
    env = {**os.environ, "QUELEA_HTTP_SECRET": SECRET, "QUELEA_STORAGE": "azure", "QUELEA_BUCKET": BUCKET}
    env.pop("PORT", None)
    env.pop("QUELEA_CONFIG_FILE", None)
    cli = str(Path(sys.executable).with_name("quelea"))
    procs, urls = [], []
    try:
        for _ in range(2):
            proc = subprocess.Popen(
                [cli, "worker", "serve", "--port", "0", "--workers", "2", "--python", sys.executable],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            procs.append(proc)
            line = proc.stdout.readline()
            urls.append(next(w for w in line.split() if w.startswith("http://")))
        yield urls
    finally:
        for proc in procs:  # by PID; runners follow through their parent-death signal
            proc.kill()
            proc.wait(timeout=30)


def test_http_backend_with_job_storage_in_azure_reads_gs_and_az_inputs(emulators, azure_servers):
    prefix = f"http-{uuid.uuid4().hex[:8]}/"
    seed_gcs(emulators, f"{prefix}g.txt", TEXT)
    azure = quelea.Storage(config={"storage": "azure", "bucket": BUCKET})
    azure.put_object(BUCKET, f"{prefix}a.txt", TEXT[:300])
    config = {"storage": "azure", "bucket": BUCKET, "http": {"urls": azure_servers, "secret": SECRET}}
    with quelea.FunctionExecutor(backend="http", config=config) as remote:
        inputs = [f"gs://{BUCKET}/{prefix}g.txt", f"az://{BUCKET}/{prefix}a.txt"]
        futures = remote.map(chunk_text, inputs, obj_chunk_size=600)
        # The job's objects are in Azurite, where client and servers meet.
        assert azure.list_keys(BUCKET, prefix=f"quelea/jobs/{remote.executor_id}/")
        rows = remote.get_result(futures)
        assert rebuild([r for r in rows if r[0] == "gcp_storage"]) == TEXT
        assert rebuild([r for r in rows if r[0] == "azure_storage"]) == TEXT[:300]
        futures = remote.map_reduce(count_words, [f"gs://{BUCKET}/{prefix}g.txt"], total, obj_chunk_number=3)
        words = remote.get_result(futures)
        assert words == len(TEXT.split())
