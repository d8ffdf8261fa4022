"""Storage kinds from Python: Lithops' names (``Storage.backend``), Lithops'
storage config sections, and addresses of a storage that is not configured."""

from __future__ import annotations

import uuid

import pytest

import quelea
from quelea.exceptions import ConfigError
from quelea.executor import config_overrides


def chunk_text(obj):
    return (obj.backend, obj.bucket, obj.key, obj.data_stream.read().decode())


def test_storage_backend_is_lithops_name_and_a_scheme(storage_root):
    config = {"localdisk": {"root": str(storage_root)}, "local": {"workers": 2}}
    storage = quelea.Storage(config=config)
    assert storage.backend == "localhost"
    key = f"kinds-{uuid.uuid4().hex[:8]}/a.txt"
    storage.put_object(storage.bucket, key, b"one\ntwo\n")
    with quelea.FunctionExecutor(config=config) as fexec:
        # How Lithops programs build addresses: f"{storage.backend}://{bucket}/{key}".
        address = f"{storage.backend}://{storage.bucket}/{key}"
        rows = fexec.get_result(fexec.map(chunk_text, [address], obj_chunk_number=2))
    assert "".join(r[3] for r in rows) == "one\ntwo\n"
    assert {r[0] for r in rows} == {"localhost"} and {r[2] for r in rows} == {key}


def test_lithops_storage_sections_translate():
    out = config_overrides(
        {
            "lithops": {"storage": "gcp_storage"},
            "gcp_storage": {"storage_bucket": "data-bucket", "region": "europe-west1"},
            "gcp": {"credentials_path": "/keys/sa.json"},
        }
    )
    assert out == {
        "storage": "gcs",
        "bucket": "data-bucket",
        "gcs": {"service_account_path": "/keys/sa.json"},
    }
    out = config_overrides(
        {
            "lithops": {"storage": "azure_storage"},
            "azure_storage": {
                "storage_account_name": "acct",
                "storage_account_key": "k",
                "storage_bucket": "c",
            },
        }
    )
    assert out == {"storage": "azure", "bucket": "c", "azure": {"account": "acct", "access_key": "k"}}
    lithops_cos = {"lithops": {"storage": "ibm_cos"}, "ibm_cos": {"region": "eu-de", "storage_bucket": "b"}}
    out = config_overrides(lithops_cos)
    assert out == {"storage": "ibm_cos", "bucket": "b", "ibm_cos": {"region": "eu-de"}}
    out = config_overrides({"lithops": {"storage": "minio"}, "minio": {"endpoint": "http://127.0.0.1:9000"}})
    assert out == {"storage": "minio", "minio": {"endpoint": "http://127.0.0.1:9000"}}
    with pytest.raises(ConfigError, match=r"`azure_storage\.nonsense`"):
        config_overrides({"azure_storage": {"nonsense": 1}})
    with pytest.raises(ConfigError, match="lithops.storage"):
        config_overrides({"lithops": {"storage": "ceph"}})


def test_lithops_ibm_cos_config_builds_its_endpoint():
    storage = quelea.Storage(
        config={
            "lithops": {"storage": "ibm_cos"},
            "ibm_cos": {
                "region": "us-east",
                "access_key_id": "k",
                "secret_access_key": "s",
                "storage_bucket": "b",
            },
        }
    )
    assert storage.backend == "ibm_cos" and storage.bucket == "b"
    assert "https://s3.us-east.cloud-object-storage.appdomain.cloud" in storage._store(None).describe()


def test_address_of_an_unconfigured_storage_is_a_clear_error(executor):
    for address, section in [("gs://data/x.csv", "gcs"), ("az://data/x.csv", "azure")]:
        with pytest.raises(Exception, match=rf"`data`.*not configured.*`{section}` section"):
            executor.map(chunk_text, [address], obj_chunk_number=2)
