"""The connection form of the ``quelea`` connection type, without Airflow imports.

``get_provider_info`` (the 3.2+ YAML-first form) and the hook's legacy form
methods both read it, so the two cannot drift apart.
"""

from __future__ import annotations

import json
from typing import Any

from quelea._storage_kinds import storage_kinds

CONN_TYPE = "quelea"
DEFAULT_CONN_ID = "quelea_default"
_FORM_PREFIX = f"extra__{CONN_TYPE}__"

# quelea's backends (each checked against quelea's config by the unit tests).
BACKENDS = ("local", "http", "aws_lambda")

# The connection form (both the 3.2+ YAML form and the legacy hook methods
# below show these). Each field is a top-level key of quelea's config, stored
# in the connection's extra; everything else goes in the extra JSON itself.
CONN_FIELDS: dict[str, dict[str, Any]] = {
    "backend": {
        "label": "Backend",
        "description": "Where calls run (quelea `backend`): `local` processes on the worker, "
        "`http` servers (`quelea worker serve`, container platforms), `aws_lambda`.",
        "schema": {"type": ["string", "null"], "enum": [*BACKENDS, None]},
    },
    "storage": {
        "label": "Storage",
        "description": "Object storage for jobs (quelea `storage`); deferrable operators need a shared one.",
        "schema": {"type": ["string", "null"], "enum": [*(k["kind"] for k in storage_kinds()), None]},
    },
    "bucket": {
        "label": "Bucket",
        "description": "Bucket of job objects (quelea `bucket`; Azure: the container).",
        "schema": {"type": ["string", "null"]},
    },
}
# Each storage kind's settings, from the storage crate, as `<section>__<key>`
# fields (credentials excepted: the password field, or the extra JSON).
SECTION_SEP = "__"
for _kind in storage_kinds():
    for _setting in _kind["settings"]:
        if _setting["secret"] or _kind["section"] is None:
            continue
        CONN_FIELDS[f"{_kind['section']}{SECTION_SEP}{_setting['key']}"] = {
            "label": f"{_kind['kind']}: {_setting['key']}",
            "description": f"{_setting['help']} (quelea `{_kind['section']}.{_setting['key']}`).",
            "schema": {"type": ["boolean", "null"]} if _setting["flag"] else {"type": ["string", "null"]},
        }


def connection_fields(storage: str | None) -> dict[str, str | None]:
    """Which settings of ``storage``'s section the connection's host, login and
    password fill (S3 when the storage has none of its own, as before kinds)."""
    names = {name: k for k in storage_kinds() for name in (k["kind"], k["lithops_name"])}
    kind = names.get(storage or "")
    if kind is None or not any(kind["connection"].values()):
        kind = names["s3"]
    return {"section": kind["section"], **kind["connection"]}


UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden_fields": ["schema"],
    "relabeling": {
        "host": "Storage endpoint",
        "login": "Access key id (S3, MinIO, IBM COS) / account (Azure)",
        "password": "Secret key / account key (Azure) / service-account JSON (GCS)",
        "extra": "quelea config (JSON)",
    },
    "placeholders": {
        "host": "http://127.0.0.1:8333 (S3 flavours, emulators)",
        "extra": json.dumps({"storage": "localdisk", "execution": {"timeout": 600}, "local": {"workers": 2}}),
    },
}
