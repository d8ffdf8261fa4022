"""Lithops-shaped configuration: translated into quelea's, and back.

- ``translate``: a Lithops config dict (``{'lithops': {...}, 'localhost':
  {...}, 'aws_s3': {...}, 'rabbitmq': {...}}``) into quelea's config layer.
  A key with no quelea meaning is an error naming it, never dropped.
- ``from_files``: with no quelea config given, the Lithops config a Lithops
  program would read, in Lithops' order: env ``LITHOPS_CONFIG`` (JSON), env
  ``LITHOPS_CONFIG_FILE``, ``./.lithops_config``, ``~/.lithops/config``,
  ``/etc/lithops/config``. What was taken is logged (logger ``quelea``).
- ``lithops_sections``: the resolved config's ``lithops`` (and ``localhost``)
  sections, as ``FunctionExecutor.config`` shows them to Lithops code.
"""

from __future__ import annotations

import json
import os

from ._storage_kinds import lithops_storage_sections, storage_kinds, storage_names, translate_lithops_section
from .exceptions import ConfigError

# Not `from typing import Any`: typing costs a client's start-up ~3 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def logger() -> Any:
    # logging is imported when first needed: it costs a client's start-up ~5 ms.
    import logging

    return logging.getLogger("quelea")


# Lithops' names for a platform map to the quelea backend that serves it:
# container platforms speak the `http` front door (`quelea worker serve`).
LITHOPS_BACKENDS = {
    "localhost": "local",
    "local": "local",
    "http": "http",
    "knative": "http",
    "gcp_cloudrun": "http",
    "code_engine": "http",
    "aws_lambda": "aws_lambda",
}
_BACKEND_LITHOPS_NAME = {"local": "localhost", "http": "http", "aws_lambda": "aws_lambda"}
# Not engine settings: carried next to the translated config (see `translate`).
LOG_LEVEL = "__lithops_log_level__"
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def name(value: Any, table: dict[str, str], what: str) -> str:
    if value not in table:
        raise ConfigError(f"`{what}` = {value!r} is not one of {sorted(table)}")
    return table[value]


def log_level_name(value: Any, what: str) -> str | None:
    """A Lithops log level (``'INFO'``, ``logging.DEBUG``, ``None``) as a level name."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        import logging

        value = logging.getLevelName(value)
    if isinstance(value, str) and value.upper() in _LEVELS:
        return value.upper()
    raise ConfigError(f"`{what}` = {value!r} is not one of {list(_LEVELS)} or None")


def translate(config: dict) -> dict:
    """Accepts a Lithops-shaped config; returns quelea's config layer, with
    ``lithops.log_level`` (if set) under the key ``LOG_LEVEL``."""
    config = dict(config)
    out: dict[str, Any] = {}
    lithops = config.pop("lithops", None)
    if lithops is not None:
        if not isinstance(lithops, dict):
            raise ConfigError(f"config `lithops` must be a dict, got {type(lithops).__name__}")
        for key, value in lithops.items():
            if key == "backend":
                out["backend"] = name(value, LITHOPS_BACKENDS, "lithops.backend")
            elif key == "storage":
                out["storage"] = name(value, storage_names(), "lithops.storage")
            elif key == "execution_timeout":
                out.setdefault("execution", {})["timeout"] = value
            elif key in ("chunksize", "data_cleaner", "retries"):
                out.setdefault("execution", {})[key] = value
            elif key == "monitoring":
                if value not in ("storage", "rabbitmq"):
                    raise ConfigError(
                        f"`lithops.monitoring` = {value!r} is not one of ['rabbitmq', 'storage']"
                    )
                out["monitoring"] = value
            elif key == "log_level":
                out[LOG_LEVEL] = log_level_name(value, "lithops.log_level")
            elif key == "mode":
                if value not in ("localhost", "serverless"):
                    raise ConfigError(
                        f"`lithops.mode` = {value!r} is not supported by quelea: "
                        "it runs 'localhost' or 'serverless' (standalone VMs are not a quelea backend)"
                    )
            else:
                raise ConfigError(f"config `lithops.{key}` is not supported by quelea")
    localhost = config.pop("localhost", None)
    if localhost is not None:
        for key, value in localhost.items():
            if key == "worker_processes":
                out.setdefault("local", {})["workers"] = value
            elif key in ("version", "runtime"):
                continue  # how Lithops starts its processes; quelea's pool has one way
            else:
                raise ConfigError(f"config `localhost.{key}` is not supported by quelea")
    rabbitmq = config.get("rabbitmq")
    if isinstance(rabbitmq, dict) and "amqp_url" in rabbitmq:
        rabbitmq = dict(rabbitmq)
        url = rabbitmq.pop("amqp_url")
        if "url" in rabbitmq and rabbitmq["url"] != url:
            raise ConfigError("config `rabbitmq` has both `url` and Lithops' `amqp_url`: keep one")
        rabbitmq["url"] = url
        config["rabbitmq"] = rabbitmq
    for section in lithops_storage_sections() & config.keys():
        translate_lithops_section(section, config.pop(section), out)
    for key, value in config.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key].update(value)
        else:
            out[key] = value
    return out


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _load_yaml(path: str) -> Any:
    try:
        import yaml
    except ImportError:
        raise ConfigError(
            f"reading the Lithops config file {path} needs PyYAML, which is not installed: "
            "pip install 'quelea[lithops]' (or pyyaml)"
        ) from None
    try:
        return yaml.safe_load(_read(path))
    except OSError as e:
        raise ConfigError(f"cannot read the Lithops config file {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"the Lithops config file {path} is not valid YAML: {e}") from None


def _default_file() -> str | None:
    # os.path, not pathlib: importing pathlib costs every client's start-up.
    if "LITHOPS_CONFIG_FILE" in os.environ:
        path = os.path.expanduser(os.environ["LITHOPS_CONFIG_FILE"])
        if not os.path.isfile(path):
            raise ConfigError(f"LITHOPS_CONFIG_FILE={os.environ['LITHOPS_CONFIG_FILE']} is not a file")
        return path
    home = os.environ.get("HOME")
    for path in (
        ".lithops_config",
        os.path.join(home, ".lithops", "config") if home else None,
        "/etc/lithops/config",
    ):
        if path is not None and os.path.isfile(path):
            return os.path.abspath(path)
    return None


def _quelea_file_exists() -> bool:
    if os.environ.get("QUELEA_CONFIG_FILE"):
        return True
    home = os.environ.get("HOME")
    return bool(home) and os.path.isfile(os.path.join(home, ".quelea", "config.yaml"))


def from_files() -> tuple[dict, str] | None:
    """The Lithops config a Lithops program would read, and where it came
    from; None when there is none, or a quelea config file exists (it wins)."""
    if _quelea_file_exists():
        return None
    if os.environ.get("LITHOPS_CONFIG"):
        source = "env LITHOPS_CONFIG"
        try:
            data = json.loads(os.environ["LITHOPS_CONFIG"])
        except json.JSONDecodeError as e:
            raise ConfigError(f"env LITHOPS_CONFIG is not valid JSON: {e}") from None
    else:
        path = _default_file()
        if path is None:
            return None
        source = path
        data = _load_yaml(path)
    if data is None:
        return None  # an empty file: Lithops' localhost defaults, which are quelea's
    if not isinstance(data, dict):
        raise ConfigError(f"the Lithops config in {source} must be a mapping, got {type(data).__name__}")
    return data, source


def keys_of(data: dict) -> str:
    """The settings of a Lithops config, for the log: ``lithops.backend, ...``."""
    keys = sorted(
        f"{section}.{key}" if isinstance(values, dict) else section
        for section, values in data.items()
        for key in (values if isinstance(values, dict) else [None])
    )
    return ", ".join(keys) or "nothing"


def is_lithops_file(path: Any) -> bool:
    """Whether a config file given as ``config_file`` is Lithops-shaped (a
    top-level ``lithops:`` section) rather than quelea's."""
    try:
        text = _read(os.path.expanduser(os.fspath(path)))
    except (OSError, UnicodeDecodeError):
        return False  # the engine reports it
    return any(line.rstrip().startswith("lithops:") for line in text.splitlines())


def load_file(path: Any) -> dict:
    path = os.path.expanduser(os.fspath(path))
    data = _load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"the Lithops config file {path} must be a mapping, got {type(data).__name__}")
    return data


def lithops_sections(resolved: dict, log_level: str | None) -> dict:
    """The resolved config's Lithops view: ``{'lithops': {...}, 'localhost': {...}}``."""
    backend = resolved.get("backend", "local")
    storage = resolved.get("storage", "localdisk")
    lithops_storage = next((k["lithops_name"] for k in storage_kinds() if k["kind"] == storage), storage)
    execution = resolved.get("execution") or {}
    lithops = {
        "backend": _BACKEND_LITHOPS_NAME.get(backend, backend),
        "storage": lithops_storage,
        "mode": "localhost" if backend == "local" else "serverless",
        "monitoring": resolved.get("monitoring", "storage"),
        "execution_timeout": execution.get("timeout"),
        "chunksize": execution.get("chunksize"),
        "data_cleaner": execution.get("data_cleaner"),
        "storage_bucket": resolved.get("bucket"),
        "log_level": log_level,
    }
    out = {"lithops": lithops}
    if backend == "local":
        out["localhost"] = {"worker_processes": (resolved.get("local") or {}).get("workers")}
    return out
