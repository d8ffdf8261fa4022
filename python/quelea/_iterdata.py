"""How map iterdata becomes calls, in the forms Lithops accepts.

- The whole iterdata: a list, tuple, range, set or any other iterable gives
  one call per element; a str, bytes or dict is one element (a str names
  data for an ``obj`` function, a dict is one call's keyword arguments).
  Lithops 3.8 takes a tuple as one element, too; quelea maps over it (see
  the README's list of differences).
- Chaining: a list or tuple of futures (a slice of a ``FuturesList``, a
  list built from one) is the previous calls' results, as a ``FuturesList``
  is. Futures mixed with plain data are an error, as in Lithops.
- An element: a tuple is positional arguments, a dict keyword arguments, and
  anything else the single first argument. In a dict, the keys named like
  the function's ``*args`` / ``**kwargs`` parameters carry those (Lithops'
  form for decorated functions: ``{'args': (1, 2), 'kwargs': {'z': 3}}``).
"""

from __future__ import annotations

# Not `from typing import Any`: typing costs a client's start-up ~3 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import inspect
    from typing import Any


def element_types(iterdata: Any) -> set[type] | None:
    """The types of a list's or tuple's elements (one pass in C), which
    decide how its elements become calls; None for other iterdata."""
    if not isinstance(iterdata, list | tuple):
        return None
    from . import _engine

    return _engine.element_types(iterdata)


def chained_futures(iterdata: Any, types: set[type] | None) -> list | None:
    """The futures of a list or tuple made only of futures, else None;
    ``types`` are its elements' (see ``element_types``)."""
    from .future import ResponseFuture

    if not types:
        return None
    # The types first: the elements only when some are futures.
    if not any(issubclass(t, ResponseFuture) for t in types):
        return None
    futures = [e for e in iterdata if isinstance(e, ResponseFuture)]
    if len(futures) != len(iterdata):
        raise ValueError(
            f"map_iterdata mixes {len(futures)} futures of a previous job with "
            f"{len(iterdata) - len(futures)} plain values: chaining takes futures as the whole input "
            "of the next map (get their results first to mix them with other data)"
        )
    return list(iterdata)


def var_parameters(sig: inspect.Signature | None) -> tuple[str | None, str | None]:
    """The names of the ``*args`` and ``**kwargs`` parameters, if any."""
    var_pos = var_kw = None
    if sig is not None:
        for name, param in sig.parameters.items():
            if param.kind is param.VAR_POSITIONAL:
                var_pos = name
            elif param.kind is param.VAR_KEYWORD:
                var_kw = name
    return var_pos, var_kw


def var_signature(func: Any, sig: inspect.Signature | None) -> inspect.Signature | None:
    """The signature whose ``*args`` / ``**kwargs`` dict keys may fill: the
    function's own, or, for a decorated one (``functools.wraps``), its
    wrapper's (what actually runs), when only that has them; else None."""
    if sig is not None and any(var_parameters(sig)):
        return sig
    if getattr(func, "__wrapped__", None) is None:
        return None
    import inspect

    try:
        outer = inspect.signature(func, follow_wrapped=False)
    except (TypeError, ValueError):
        return None
    return outer if any(var_parameters(outer)) else None


def expand_var_keys(sig: inspect.Signature, kwargs: dict, index: int) -> tuple[tuple, dict]:
    """A dict element's call: its ``*args`` / ``**kwargs`` keys expanded (the
    named parameters before ``*args`` then go positionally, so that
    ``{'x': 1, 'args': (2, 3)}`` calls ``f(x, *args)`` as ``f(1, 2, 3)``)."""
    var_pos, var_kw = var_parameters(sig)
    args: tuple = ()
    if var_pos is not None and var_pos in kwargs:
        kwargs = dict(kwargs)
        value = kwargs.pop(var_pos)
        if value is None:
            value = ()
        if not isinstance(value, list | tuple):
            raise TypeError(
                f"map_iterdata[{index}][{var_pos!r}] carries the function's *{var_pos}: "
                f"it must be a tuple or list, got {type(value).__name__}"
            )
        leading = []
        for name, param in sig.parameters.items():
            if param.kind is param.VAR_POSITIONAL or name not in kwargs:
                break
            leading.append(kwargs.pop(name))
        args = (*leading, *value)
    if var_kw is not None and var_kw in kwargs:
        kwargs = dict(kwargs)
        value = kwargs.pop(var_kw)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise TypeError(
                f"map_iterdata[{index}][{var_kw!r}] carries the function's **{var_kw}: "
                f"it must be a dict, got {type(value).__name__}"
            )
        kwargs = {**value, **kwargs}
    return args, kwargs
