"""The few Airflow imports that moved between 2.11 and 3.x, in one place.

Every other module of the provider imports Airflow through here. Each name is
looked up at its Airflow 3 location first (the Task SDK, ``airflow.sdk``) and
falls back to its Airflow 2.11 location.
"""

from __future__ import annotations

import importlib
from typing import Any

from packaging.version import Version


def _first(*candidates: tuple[str, str]) -> Any:
    """The first ``(module, attribute)`` that imports; an ImportError naming all otherwise."""
    errors = []
    for module_name, attr in candidates:
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            errors.append(f"{module_name}: {e}")
            continue
        if hasattr(module, attr):
            return getattr(module, attr)
        errors.append(f"{module_name} has no {attr}")
    raise ImportError(f"cannot import {candidates[0][1]} from Airflow ({'; '.join(errors)})")


def _airflow_version() -> Version:
    from airflow import __version__

    return Version(Version(__version__).base_version)


AIRFLOW_VERSION = _airflow_version()
AIRFLOW_V_3_0_PLUS = AIRFLOW_VERSION >= Version("3.0.0")
AIRFLOW_V_3_3_PLUS = AIRFLOW_VERSION >= Version("3.3.0")

BaseOperator = _first(("airflow.sdk", "BaseOperator"), ("airflow.models.baseoperator", "BaseOperator"))
BaseHook = _first(("airflow.sdk", "BaseHook"), ("airflow.hooks.base", "BaseHook"))
BaseSensorOperator = _first(
    ("airflow.sdk", "BaseSensorOperator"), ("airflow.sensors.base", "BaseSensorOperator")
)
conf = _first(("airflow.sdk.configuration", "conf"), ("airflow.configuration", "conf"))
AirflowException = _first(
    ("airflow.sdk.exceptions", "AirflowException"), ("airflow.exceptions", "AirflowException")
)
AirflowTaskTimeout = _first(
    ("airflow.sdk.exceptions", "AirflowTaskTimeout"), ("airflow.exceptions", "AirflowTaskTimeout")
)
BaseOperatorLink = _first(
    ("airflow.sdk", "BaseOperatorLink"), ("airflow.models.baseoperatorlink", "BaseOperatorLink")
)
TaskDeferred = _first(("airflow.sdk.exceptions", "TaskDeferred"), ("airflow.exceptions", "TaskDeferred"))
# The trigger base classes stayed in airflow-core on both majors.
BaseTrigger = _first(("airflow.triggers.base", "BaseTrigger"))
TriggerEvent = _first(("airflow.triggers.base", "TriggerEvent"))

try:  # Airflow 3
    from airflow.sdk import Context
except ImportError:  # Airflow 2.11
    from airflow.utils.context import Context  # type: ignore[no-redef]


def xcom_get_value(ti_key: Any, key: str) -> Any:
    """An XCom of the task instance ``ti_key`` (what an extra link reads)."""
    xcom = _first(("airflow.sdk.execution_time.xcom", "XCom"), ("airflow.models.xcom", "XCom"))
    return xcom.get_value(ti_key=ti_key, key=key)


def default_deferrable() -> bool:
    """``[operators] default_deferrable``, as community operators read it."""
    return conf.getboolean("operators", "default_deferrable", fallback=False)


def xcom_serialize(value: Any) -> Any:
    """Encodes a value the way the XCom backend stores it; raises if it cannot."""
    serialize = _first(("airflow.sdk.serde", "serialize"), ("airflow.serialization.serde", "serialize"))
    return serialize(value)


def task_decorator_factory(*args: Any, **kwargs: Any) -> Any:
    factory = _first(
        ("airflow.sdk.bases.decorator", "task_decorator_factory"),
        ("airflow.decorators.base", "task_decorator_factory"),
    )
    return factory(*args, **kwargs)


def get_unique_task_id(task_id: str, dag: Any = None, task_group: Any = None) -> str:
    """``task_id``, or ``task_id__<n>`` when the DAG has it already (as ``@task`` names tasks)."""
    unique = _first(
        ("airflow.sdk.bases.decorator", "get_unique_task_id"),
        ("airflow.decorators.base", "get_unique_task_id"),
    )
    return unique(task_id, dag, task_group)


def decorated_operator_class() -> type:
    return _first(
        ("airflow.sdk.bases.decorator", "DecoratedOperator"),
        ("airflow.decorators.base", "DecoratedOperator"),
    )


__all__ = [
    "AIRFLOW_V_3_0_PLUS",
    "AIRFLOW_V_3_3_PLUS",
    "AirflowException",
    "AirflowTaskTimeout",
    "BaseOperatorLink",
    "BaseHook",
    "BaseOperator",
    "BaseSensorOperator",
    "BaseTrigger",
    "Context",
    "TaskDeferred",
    "TriggerEvent",
    "conf",
    "default_deferrable",
    "get_unique_task_id",
    "task_decorator_factory",
    "xcom_get_value",
    "xcom_serialize",
]

AirflowNotFoundException = _first(
    ("airflow.sdk.exceptions", "AirflowNotFoundException"), ("airflow.exceptions", "AirflowNotFoundException")
)
