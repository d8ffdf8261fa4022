"""The Airflow 2.11/3.x import layer and the provider registration."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from quelea_airflow import _compat
from quelea_airflow.get_provider_info import get_provider_info


def test_first_falls_back_to_the_older_location():
    # The first candidate does not exist (as airflow.sdk on 2.11): the second is used.
    assert _compat._first(("airflow.no_such_module", "X"), ("json", "dumps")) is json.dumps
    assert _compat._first(("json", "no_such_attr"), ("json", "loads")) is json.loads


def test_first_names_every_location_when_none_imports():
    with pytest.raises(ImportError) as e:
        _compat._first(("airflow.no_such_module", "BaseThing"), ("json", "BaseThing"))
    assert "BaseThing" in str(e.value) and "airflow.no_such_module" in str(e.value)


def test_names_resolve_to_this_airflows_locations():
    import airflow

    major_minor = tuple(int(p) for p in airflow.__version__.split(".")[:2])
    assert _compat.AIRFLOW_V_3_0_PLUS == (major_minor >= (3, 0))
    assert _compat.AIRFLOW_V_3_3_PLUS == (major_minor >= (3, 3))
    if _compat.AIRFLOW_V_3_0_PLUS:  # the Task SDK
        assert _compat.BaseOperator.__module__.startswith("airflow.sdk")
        assert _compat.BaseHook.__module__.startswith("airflow.sdk")
        assert _compat.BaseSensorOperator.__module__.startswith("airflow.sdk")
        assert _compat.TaskDeferred.__module__.startswith("airflow.sdk")
    else:  # Airflow 2.11: no airflow.sdk, the 2.x homes
        assert major_minor == (2, 11), airflow.__version__
        assert _compat.BaseOperator.__module__ == "airflow.models.baseoperator"
        assert _compat.BaseHook.__module__ == "airflow.hooks.base"
        assert _compat.BaseSensorOperator.__module__ == "airflow.sensors.base"
        assert _compat.TaskDeferred.__module__ == "airflow.exceptions"
        assert _compat.Context.__module__ == "airflow.utils.context"
    # The trigger base classes stayed in airflow-core on both majors.
    assert _compat.BaseTrigger.__module__ == "airflow.triggers.base"
    assert _compat.TriggerEvent.__module__ == "airflow.triggers.base"


def test_xcom_serialize_rejects_what_xcom_cannot_hold():
    assert _compat.xcom_serialize([1, {"a": 2}]) == [1, {"a": 2}]
    with pytest.raises(TypeError):
        _compat.xcom_serialize(object())


def test_entry_point_registers_the_provider():
    (ep,) = [
        e for e in importlib.metadata.entry_points(group="apache_airflow_provider") if "quelea" in e.value
    ]
    assert ep.load() is get_provider_info
    assert ep.dist.name == "airflow-provider-quelea"


def test_provider_info_matches_airflow_schema():
    import jsonschema
    from airflow import providers_manager

    schema_path = Path(providers_manager.__file__).parent / "provider_info.schema.json"
    jsonschema.validate(get_provider_info(), json.loads(schema_path.read_text()))
    info = get_provider_info()
    for section in ("operators", "hooks", "sensors", "triggers"):
        for module in info[section][0]["python-modules"]:
            __import__(module)


def test_airflow_lists_the_provider_and_its_connection_type():
    out = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "hooks", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    hooks = {
        row["connection_type"]: row
        for row in json.loads(out.stdout[out.stdout.index("[{") :].splitlines()[0])
    }
    assert hooks["quelea"]["class"] == "quelea_airflow.hooks.quelea.QueleaHook"
    assert hooks["quelea"]["package_name"] == "airflow-provider-quelea"
