"""What Airflow's ProvidersManager reads (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    # Imported lazily so that listing providers does not import Airflow's hook machinery.
    from quelea_airflow import __version__
    from quelea_airflow._connection_form import CONN_FIELDS, CONN_TYPE, UI_FIELD_BEHAVIOUR

    integration = "Quelea"
    return {
        "package-name": "airflow-provider-quelea",
        "name": "Quelea",
        "description": "Run Python functions as quelea map, map-reduce and single calls "
        "(the Lithops/PyWren API on a Rust engine).",
        "versions": [__version__],
        # No documentation-url / external-doc-url: the project has no public home yet (its
        # README ships in the wheel); a placeholder would be a dead link in the UI.
        "integrations": [{"integration-name": integration}],
        "extra-links": ["quelea_airflow.links.quelea.QueleaJobLink"],
        "config": {
            "quelea": {
                "description": "The quelea provider's settings.",
                "options": {
                    "xcom_threshold_bytes": {
                        "description": "Results of a quelea operator whose XCom JSON is larger than this "
                        "many bytes stay in quelea storage; XCom gets a small reference "
                        "(quelea_airflow.results resolves it). -1: always XCom.",
                        "version_added": "0.1.0",
                        "type": "integer",
                        "example": "1048576",
                        "default": "1048576",
                    },
                    "min_deferral_s": {
                        "description": "The least time (seconds) a deferred quelea task stays "
                        "deferred, so that the scheduler has handled the exit of the task process "
                        "that deferred before the trigger fires (Airflow's race: 'finished with "
                        "state success, but the task instance's state attribute is queued'). "
                        "0 under dag.test(), which has no such race.",
                        "version_added": "0.1.0",
                        "type": "float",
                        "example": "10",
                        "default": "10",
                    },
                    "dashboard_url": {
                        "description": "Base URL of a running `quelea dashboard`: the operators' "
                        "'quelea job' link points to the job's page there. Empty: "
                        "QUELEA_DASHBOARD_URL, else no link.",
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": "http://127.0.0.1:8265",
                        "default": "",
                    },
                },
            }
        },
        "operators": [
            {"integration-name": integration, "python-modules": ["quelea_airflow.operators.quelea"]}
        ],
        "hooks": [{"integration-name": integration, "python-modules": ["quelea_airflow.hooks.quelea"]}],
        "sensors": [{"integration-name": integration, "python-modules": ["quelea_airflow.sensors.quelea"]}],
        "triggers": [{"integration-name": integration, "python-modules": ["quelea_airflow.triggers.quelea"]}],
        "task-decorators": [
            {"name": "quelea_map", "class-name": "quelea_airflow.decorators.quelea.quelea_map_task"}
        ],
        "connection-types": [
            {
                "connection-type": CONN_TYPE,
                "hook-class-name": "quelea_airflow.hooks.quelea.QueleaHook",
                "hook-name": "Quelea",
                "conn-fields": {name: dict(field) for name, field in CONN_FIELDS.items()},
                "ui-field-behaviour": {
                    "hidden-fields": list(UI_FIELD_BEHAVIOUR["hidden_fields"]),
                    "relabeling": dict(UI_FIELD_BEHAVIOUR["relabeling"]),
                    "placeholders": dict(UI_FIELD_BEHAVIOUR["placeholders"]),
                },
            }
        ],
    }
