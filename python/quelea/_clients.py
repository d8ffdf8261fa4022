"""Ready clients for the reserved parameters ``ibm_cos`` and ``rabbitmq``.

A function that names one of them gets it filled in by the worker, as
Lithops does (``docs/source/functions.md``):

- ``ibm_cos``: a boto3 S3 client on the configured S3-compatible storage
  (``s3``, ``minio`` or ``ibm_cos``), with its endpoint, region, addressing
  style and credentials; Lithops gives an ``ibm_boto3`` client, which has the
  same API. Needs ``boto3`` (``pip install 'quelea[clients]'``).
- ``rabbitmq``: a ``pika.BlockingConnection`` to ``rabbitmq.url`` (env
  ``QUELEA_RABBITMQ_URL``; Lithops' ``rabbitmq.amqp_url``). Needs ``pika``.

Settings come from the worker's own config: the runner's config (what the
local pool hands its runners) over the worker's environment, so credentials
never travel in a job's payload. A missing package or setting is a clear
error raised in the call, naming it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from .exceptions import ConfigError

RESERVED_CLIENTS = ("ibm_cos", "rabbitmq")
_S3_KINDS = ("s3", "minio", "ibm_cos")
_REDACTED = "<redacted>"


def runner_config() -> dict:
    """The worker's config: the runner's (secrets included), else empty."""
    text = os.environ.get("QUELEA_RUNNER_CONFIG")
    return json.loads(text) if text else {}


def _setting(value: Any) -> Any:
    return None if value in (None, "", _REDACTED) else value


def ibm_cos_client(config: dict) -> Any:
    """A boto3 S3 client on the configured S3 storage."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise ConfigError(
            "the reserved parameter `ibm_cos` is a boto3 S3 client, and boto3 is not installed "
            "where the function runs: pip install 'quelea[clients]' (or boto3)"
        ) from None
    kind = config.get("storage") or os.environ.get("QUELEA_STORAGE") or "localdisk"
    if kind not in _S3_KINDS:
        raise ConfigError(
            f"the reserved parameter `ibm_cos` is a client of S3 storage, and the configured storage "
            f"is `{kind}`: set `storage` to one of {list(_S3_KINDS)} (with its section), or use the "
            "`storage` parameter, which works on every storage"
        )
    section = config.get(kind) or {}
    env = os.environ
    prefix = f"QUELEA_{kind.upper()}_"
    endpoint = _setting(section.get("endpoint")) or env.get(prefix + "ENDPOINT")
    region = _setting(section.get("region")) or env.get(prefix + "REGION") or env.get("AWS_REGION")
    key_id = _setting(section.get("access_key_id")) or env.get(prefix + "ACCESS_KEY_ID")
    secret = _setting(section.get("secret_access_key")) or env.get(prefix + "SECRET_ACCESS_KEY")
    token = _setting(section.get("session_token")) or env.get(prefix + "SESSION_TOKEN")
    path_style = section.get("path_style")
    if path_style is None:
        path_style = env.get(prefix + "PATH_STYLE", "").lower() in ("1", "true", "yes")
    # No key here: boto3's own chain (AWS_ACCESS_KEY_ID, profiles, instance roles).
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region or "us-east-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        aws_session_token=token,
        config=Config(s3={"addressing_style": "path" if path_style else "auto"}),
    )


def rabbitmq_connection(config: dict) -> Any:
    """A ``pika.BlockingConnection`` to the configured broker."""
    try:
        import pika
    except ImportError:
        raise ConfigError(
            "the reserved parameter `rabbitmq` is a pika.BlockingConnection, and pika is not "
            "installed where the function runs: pip install 'quelea[clients]' (or pika)"
        ) from None
    url = _setting((config.get("rabbitmq") or {}).get("url")) or os.environ.get("QUELEA_RABBITMQ_URL")
    if not url:
        raise ConfigError(
            "the reserved parameter `rabbitmq` needs a broker, and none is configured: set "
            "`rabbitmq.url` (amqp://user:password@host:port/vhost) in the config, or "
            "QUELEA_RABBITMQ_URL where the function runs (Lithops' `rabbitmq.amqp_url` is read too)"
        )
    return pika.BlockingConnection(pika.URLParameters(url))


def make(name: str) -> Any:
    config = runner_config()
    if name == "ibm_cos":
        return ibm_cos_client(config)
    return rabbitmq_connection(config)
