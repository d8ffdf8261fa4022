"""``@task.quelea_map``: registration, how the call becomes a map, errors, a real run."""

from __future__ import annotations

import datetime

import pytest

from quelea_airflow.decorators.quelea import QueleaMapDecoratedOperator, quelea_map_task
from quelea_airflow.get_provider_info import get_provider_info

try:  # Airflow 3
    from airflow.sdk import DAG, XComArg, task
except ImportError:  # Airflow 2.11
    from airflow import DAG
    from airflow.decorators import task
    from airflow.models.xcom_arg import XComArg

START = datetime.datetime(2026, 1, 1)


def square(x):
    return x * x


def test_registered_as_task_quelea_map():
    (entry,) = get_provider_info()["task-decorators"]
    assert entry == {"name": "quelea_map", "class-name": "quelea_airflow.decorators.quelea.quelea_map_task"}
    # Airflow resolves @task.quelea_map through the provider's entry point.
    assert task.quelea_map is quelea_map_task


def test_the_call_argument_is_the_iterdata_and_the_function_the_map_function():
    with DAG("d", schedule=None, start_date=START) as dag:

        @task
        def numbers():
            return [1, 2, 3]

        @task.quelea_map(chunksize=2, extra_args=(10,), quelea_conn_id="qc", deferrable=False)
        def add(x, y):  # two parameters, one call argument: no signature check on the call
            return x + y

        out = add(numbers())
    op = dag.get_task("add")
    assert isinstance(op, QueleaMapDecoratedOperator) and isinstance(out, XComArg)
    assert op.map_function is add.function and op.python_callable is add.function
    assert isinstance(op.map_iterdata, XComArg) and op.map_iterdata.operator.task_id == "numbers"
    assert "map_iterdata" in op.template_fields
    assert op.upstream_task_ids == {"numbers"}
    assert (op.chunksize, op.extra_args, op.quelea_conn_id, op.deferrable) == (2, (10,), "qc", False)
    assert op.custom_operator_name == "@task.quelea_map"
    args, kwargs = op.executor_call()
    assert args == (add.function, op.map_iterdata) and kwargs["chunksize"] == 2


def test_iterdata_given_to_the_decorator():
    with DAG("d", schedule=None, start_date=START) as dag:
        quelea_map_task(square, map_iterdata=[1, 2], task_id="sq")()
    assert dag.get_task("sq").map_iterdata == [1, 2]


@pytest.mark.parametrize(
    ("decorator_kwargs", "call_args", "call_kwargs", "message"),
    [
        ({}, (), {}, r"square\(\) takes the iterdata as its one argument .*got 0 arguments"),
        ({}, ([1], [2]), {}, r"got 2 arguments"),
        ({}, (), {"x": [1]}, r"not keyword arguments \(x\)"),
        ({"map_iterdata": [1]}, ([2],), {}, r"map_iterdata was given to the decorator, so call square\(\)"),
        ({"multiple_outputs": True}, ([1],), {}, r"multiple_outputs is not supported"),
    ],
)
def test_wrong_calls_are_named(decorator_kwargs, call_args, call_kwargs, message):
    with DAG("d", schedule=None, start_date=START):
        decorated = quelea_map_task(square, **decorator_kwargs)
        with pytest.raises(TypeError, match=message):
            decorated(*call_args, **call_kwargs)


def test_runs_a_map_on_quelea(quelea_conn):
    with DAG("d", schedule=None, start_date=START) as dag:
        quelea_map_task(square)([1, 2, 3, 4])
    assert dag.get_task("square").execute(context={}) == [1, 4, 9, 16]
