"""Ready clients in functions: the reserved parameters ``ibm_cos`` (a boto3
S3 client on the configured S3 storage) and ``rabbitmq`` (a
``pika.BlockingConnection`` to the configured broker), filled in by the
worker like ``storage``, with the worker's own settings.

Each test asserts what its run has: on local storage (the plain run) the
clear error naming the missing setting; with ``QTEST_STORAGE=s3`` (the
"python on S3" section, SeaweedFS) a working client; with
``QTEST_RABBITMQ_URL`` (the "push monitoring" section's RabbitMQ) a working
connection.
"""

from __future__ import annotations

import os
import sys
import uuid

import pytest

import quelea
from quelea.exceptions import ConfigError

ON_S3 = os.environ.get("QTEST_STORAGE") == "s3"
AMQP_URL = os.environ.get("QTEST_RABBITMQ_URL")


def put_and_read_back(key, ibm_cos, storage):
    ibm_cos.put_object(Bucket=storage.bucket, Key=key, Body=b"from ibm_cos")
    body = ibm_cos.get_object(Bucket=storage.bucket, Key=key)["Body"].read()
    listed = [o["Key"] for o in ibm_cos.list_objects_v2(Bucket=storage.bucket, Prefix=key)["Contents"]]
    return body, listed, type(ibm_cos).__module__


def publish_and_get(queue, rabbitmq):
    channel = rabbitmq.channel()
    channel.queue_declare(queue=queue, auto_delete=True)
    channel.basic_publish(exchange="", routing_key=queue, body=b"hello " + queue.encode())
    for _ in range(50):
        method, _props, body = channel.basic_get(queue=queue, auto_ack=True)
        if method is not None:
            return body
        rabbitmq.sleep(0.1)
    return None


def uses_ibm_cos(x, ibm_cos):
    return x


def uses_rabbitmq(x, rabbitmq):
    return x


if ON_S3:

    def test_ibm_cos_is_a_boto3_client_on_the_configured_s3(executor):
        key = f"clients/{uuid.uuid4().hex}"
        body, listed, module = executor.get_result(executor.call_async(put_and_read_back, key))
        assert body == b"from ibm_cos" and listed == [key]
        assert module.startswith("botocore")
        # The object is in quelea's own storage too.
        assert executor.storage.get_object(executor.storage.bucket, key) == b"from ibm_cos"
        executor.storage.delete_object(executor.storage.bucket, key)

else:

    def test_ibm_cos_on_non_s3_storage_names_the_setting(executor):
        with pytest.raises(ConfigError, match=r"`ibm_cos` is a client of S3 storage.*storage is `localdisk`"):
            executor.get_result(executor.call_async(uses_ibm_cos, 1))


def test_a_missing_package_is_named(monkeypatch):
    from quelea import _clients

    # `None` in sys.modules makes the import fail, as a missing package does.
    monkeypatch.setitem(sys.modules, "boto3", None)
    monkeypatch.setitem(sys.modules, "pika", None)
    with pytest.raises(ConfigError, match=r"`ibm_cos` .* boto3 is not installed .*quelea\[clients\]"):
        _clients.ibm_cos_client({"storage": "s3"})
    with pytest.raises(ConfigError, match=r"`rabbitmq` .* pika is not installed"):
        _clients.rabbitmq_connection({"rabbitmq": {"url": "amqp://127.0.0.1:1/"}})


def test_reserved_clients_are_not_iterdata(executor):
    # Like `storage` and `id`, they are not bound from the iterdata: one
    # argument per call fits `f(x, ibm_cos)`.
    with pytest.raises(TypeError, match="does not fit"):
        executor.map(uses_rabbitmq, [{"x": 1, "y": 2}])


if AMQP_URL:

    def test_rabbitmq_is_a_pika_connection_to_the_configured_broker(config):
        with quelea.FunctionExecutor(config={**config, "rabbitmq": {"url": AMQP_URL}}) as fexec:
            queues = [f"quelea-test-{uuid.uuid4().hex[:8]}" for _ in range(3)]
            got = fexec.get_result(fexec.map(publish_and_get, queues))
        assert got == [b"hello " + q.encode() for q in queues]

    def test_rabbitmq_from_a_lithops_config(config):
        lithops = {"lithops": {"backend": "localhost"}, "rabbitmq": {"amqp_url": AMQP_URL}}
        with quelea.FunctionExecutor(config={**config, **lithops}) as fexec:
            assert fexec.get_result(fexec.call_async(publish_and_get, "quelea-lithops-q")) == (
                b"hello quelea-lithops-q"
            )

else:

    def test_rabbitmq_without_a_broker_names_the_setting(executor):
        with pytest.raises(ConfigError, match=r"`rabbitmq` needs a broker.*`rabbitmq.url`"):
            executor.get_result(executor.call_async(uses_rabbitmq, 1))
