"""What each storage kind is, asked of the storage crate (the one place that
knows): names, Lithops names, address schemes, settings, and how Lithops'
storage config sections map onto quelea's."""

from __future__ import annotations

from functools import cache

from . import _engine
from .exceptions import ConfigError

# Not `from typing import Any`: typing costs a client's start-up ~3 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@cache
def storage_kinds() -> tuple[dict, ...]:
    """``({kind, lithops_name, schemes, section, settings}, ...)`` per kind."""
    return tuple(_engine.storage_kinds())


@cache
def storage_names() -> dict[str, str]:
    """Every name a storage goes by (quelea's, Lithops', its schemes) → its kind."""
    names: dict[str, str] = {}
    for entry in storage_kinds():
        for name in (entry["kind"], entry["lithops_name"], *entry["schemes"]):
            names.setdefault(name, entry["kind"])
    return names


@cache
def _lithops_keys() -> tuple[dict[tuple[str, str], str], frozenset[tuple[str, str]]]:
    keys, ignored = _engine.lithops_storage_keys()
    return {(section, key): path for section, key, path in keys}, frozenset(ignored)


def lithops_storage_sections() -> frozenset[str]:
    """Lithops' storage config sections quelea translates."""
    return frozenset(section for section, _ in _lithops_keys()[0] if section != "localhost")


def translate_lithops_section(section: str, values: Any, out: dict) -> None:
    """Puts Lithops' ``section`` (``aws_s3``, ``gcp_storage``, ``azure_storage``,
    ``ibm_cos``, ``minio``, ``aws``, ``gcp``) into quelea's config ``out``. A key
    with no quelea meaning is an error naming it."""
    if not isinstance(values, dict):
        raise ConfigError(f"config `{section}` must be a dict, got {type(values).__name__}")
    keys, ignored = _lithops_keys()
    own_sections = {entry["section"] for entry in storage_kinds()}
    for key, value in values.items():
        path = keys.get((section, key))
        if path is None and (section, key) in ignored:
            continue
        if path is None and section in own_sections:
            path = f"{section}.{key}"  # the same name in quelea's section; checked by the config
        if path is None:
            raise ConfigError(f"config `{section}.{key}` is not supported by quelea")
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
