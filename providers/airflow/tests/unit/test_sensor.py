"""QueleaJobSensor on jobs submitted elsewhere (a plain quelea program)."""

from __future__ import annotations

import pytest

import quelea
from quelea.exceptions import ConfigError
from quelea_airflow.sensors.quelea import QueleaJobSensor, job_from


def half(x):
    if x == 3:
        raise ArithmeticError("three")
    return x / 2


def test_job_from_accepts_handles_and_job_dicts():
    handle = '{"executor_id": "e-0", "job_id": "M000", "total_calls": 1}'
    assert job_from(handle)["handles"] == [handle]
    assert job_from([handle, handle])["executor_id"] == "e-0"
    assert job_from({"handles": [handle], "kind": "map"}) == {"handles": [handle], "kind": "map"}
    with pytest.raises(ValueError, match="not valid JSON"):
        job_from("{nope")
    with pytest.raises(ValueError, match="needs `executor_id` and `job_id`"):
        job_from('{"a": 1}')
    with pytest.raises(TypeError, match="JSON text or a dict"):
        job_from(3)


def test_sensor_waits_for_success(quelea_conn):
    config = {**quelea_conn, "execution": {"data_cleaner": False}}
    with quelea.FunctionExecutor(config=config) as executor:
        futures = executor.map(half, [0, 2, 4])
        handle = executor.job_handle(futures)
        sensor = QueleaJobSensor(task_id="s", job=handle, poke_interval=0.1, timeout=60, deferrable=False)
        executor.get_result(futures)
        assert sensor.poke({}) is True


def test_sensor_fails_with_the_remote_error(quelea_conn):
    config = {**quelea_conn, "execution": {"data_cleaner": False}}
    with quelea.FunctionExecutor(config=config) as executor:
        futures = executor.map(half, [1, 3])
        handle = executor.job_handle(futures)
        executor.wait(futures, throw_except=False)
        sensor = QueleaJobSensor(task_id="s", job=handle, deferrable=False)
        with pytest.raises(ArithmeticError, match="three"):
            sensor.poke({})


def test_sensor_bad_config(monkeypatch, quelea_conn):
    sensor = QueleaJobSensor(
        task_id="s", job='{"executor_id": "e-0", "job_id": "M000"}', quelea_config={"nope": 1}
    )
    with pytest.raises(ConfigError, match="nope"):
        sensor.poke({})
