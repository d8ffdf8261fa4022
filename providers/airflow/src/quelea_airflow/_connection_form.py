"""The connection form of the ``quelea`` connection type, without Airflow imports.

``get_provider_info`` (the 3.2+ YAML-first form) and the hook's legacy form
methods both read it, so the two cannot drift apart.
"""

from __future__ import annotations

import json
from typing import Any

CONN_TYPE = "quelea"
DEFAULT_CONN_ID = "quelea_default"
_FORM_PREFIX = f"extra__{CONN_TYPE}__"

# The connection form (both the 3.2+ YAML form and the legacy hook methods
# below show these). Each field is a top-level key of quelea's config, stored
# in the connection's extra; everything else goes in the extra JSON itself.
CONN_FIELDS: dict[str, dict[str, Any]] = {
    "backend": {
        "label": "Backend",
        "description": "Where calls run (quelea `backend`).",
        "schema": {"type": ["string", "null"], "enum": ["local", None]},
    },
    "storage": {
        "label": "Storage",
        "description": "Object storage for jobs (quelea `storage`); deferrable operators need a shared one.",
        "schema": {"type": ["string", "null"], "enum": ["localdisk", "memory", "s3", None]},
    },
    "bucket": {
        "label": "Bucket",
        "description": "Bucket of job objects (quelea `bucket`).",
        "schema": {"type": ["string", "null"]},
    },
}
UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden_fields": ["schema"],
    "relabeling": {
        "host": "S3 endpoint",
        "login": "S3 access key id",
        "password": "S3 secret access key",
        "extra": "quelea config (JSON)",
    },
    "placeholders": {
        "host": "http://127.0.0.1:8333 (only for storage: s3)",
        "extra": json.dumps({"storage": "localdisk", "execution": {"timeout": 600}, "local": {"workers": 2}}),
    },
}
