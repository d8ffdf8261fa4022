"""``@task.quelea_map``: a plain function becomes the map function of a quelea map.

    @task.quelea_map(chunksize=10)
    def square(x):
        return x * x

    squares = square(numbers())  # the call's one argument is the iterdata

The call argument is the iterdata (a list, or an upstream task's output), not
an argument of the function: each element becomes one call of the function on
quelea, and the task's XCom is the list of results. The iterdata may also be
given to the decorator, ``@task.quelea_map(map_iterdata=[...])``, and the
function then called with no argument. Every other decorator argument is one
of ``QueleaMapOperator`` (``chunksize``, ``extra_args``, ``deferrable``,
``quelea_conn_id``, ...) or of ``BaseOperator``.

Airflow's own ``DecoratedOperator`` binds the call's arguments to the
function's signature when the DAG is parsed, which is wrong here (``square``
takes one element, the call gives the whole iterdata), so the operator below
is a ``QueleaMapOperator`` that takes what ``task_decorator_factory`` passes
(``python_callable``, ``op_args``, ``op_kwargs``, ``multiple_outputs``) instead.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from quelea_airflow._compat import get_unique_task_id, task_decorator_factory
from quelea_airflow.operators.quelea import QueleaMapOperator

_UNSET: Any = object()


class QueleaMapDecoratedOperator(QueleaMapOperator):
    """The operator behind ``@task.quelea_map``: ``map_function`` is the decorated function,
    ``map_iterdata`` the decorated function's call argument (or the decorator's ``map_iterdata``)."""

    custom_operator_name = "@task.quelea_map"

    def __init__(
        self,
        *,
        python_callable: Callable,
        task_id: str,
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        multiple_outputs: bool = False,
        map_iterdata: Any = _UNSET,
        **kwargs: Any,
    ):
        name = getattr(python_callable, "__name__", "the function")
        op_args = list(op_args or ())
        if op_kwargs:
            raise TypeError(
                f"@task.quelea_map {name}(): give the iterdata as the only positional argument, "
                f"not keyword arguments ({', '.join(sorted(op_kwargs))}); map arguments such as "
                f"extra_args go to the decorator"
            )
        if multiple_outputs is True:
            raise TypeError(
                f"@task.quelea_map {name}: a map returns one list; multiple_outputs is not supported"
            )
        if map_iterdata is _UNSET:
            if len(op_args) != 1:
                raise TypeError(
                    f"@task.quelea_map {name}() takes the iterdata as its one argument "
                    f"(e.g. {name}([1, 2, 3]) or {name}(upstream())), got {len(op_args)} arguments"
                )
            map_iterdata = op_args[0]
        elif op_args:
            raise TypeError(
                f"@task.quelea_map {name}: map_iterdata was given to the decorator, so call {name}() "
                f"with no argument"
            )
        if not getattr(self, "_BaseOperator__from_mapped", False):
            task_id = get_unique_task_id(task_id, kwargs.get("dag"), kwargs.get("task_group"))
        self.python_callable = python_callable
        super().__init__(task_id=task_id, map_function=python_callable, map_iterdata=map_iterdata, **kwargs)


def quelea_map_task(python_callable: Callable | None = None, **kwargs: Any) -> Any:
    """``@task.quelea_map``: maps the decorated function over the iterdata it is called with,
    on quelea; the list of results goes to XCom. See the module docstring."""
    return task_decorator_factory(
        python_callable=python_callable,
        decorated_operator_class=QueleaMapDecoratedOperator,
        **kwargs,
    )
