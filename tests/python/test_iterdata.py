"""Iterdata and chaining in the forms Lithops 3.8 accepts (each expected value
below is what Lithops 3.8's localhost backend returns for the same call, run
side by side when this was written; the tuple-as-iterdata one is quelea's
deliberate difference, listed in the README)."""

from __future__ import annotations

import functools

import pytest


def add(x, y=0):
    return x + y


def pack(*args, **kwargs):
    return (args, kwargs)


def head_and_rest(x, *rest, **kw):
    return (x, rest, kw)


def pair(x):
    return (x, x * 10)


def total(lst):
    return sum(lst)


def traced(func):
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return ("traced", func(*args, **kwargs))

    return wrapper


@traced
def decorated(a, b=1):
    return a * b


def test_a_slice_or_list_of_futures_chains_on_their_results(executor):
    fs = executor.map(add, [1, 2, 3])
    assert executor.get_result(executor.map(add, fs[1:])) == [2, 3]
    fs = executor.map(add, [1, 2, 3])
    assert executor.get_result(executor.map(add, list(fs), extra_args=(100,))) == [101, 102, 103]
    fs = executor.map(add, [5, 6])
    assert executor.get_result(executor.map(add, tuple(fs))) == [5, 6]
    # A tuple result spreads into the next function's positional arguments.
    fs = executor.map(pair, [1, 2])
    assert executor.get_result(executor.map(add, fs[:])) == [11, 22]
    # FuturesList.map chains too.
    assert executor.map(pair, [3]).map(add).get_result() == [33]


def test_futures_mixed_with_plain_data_are_refused(executor):
    fs = executor.map(add, [1])
    with pytest.raises(ValueError, match="mixes 1 futures of a previous job with 1 plain values"):
        executor.map(add, [fs[0], 5])


def test_dict_elements_carry_args_and_kwargs_of_var_parameters(executor):
    got = executor.get_result(executor.map(pack, [{"args": (1, 2), "kwargs": {"z": 3}}, {"q": 1}]))
    assert got == [((1, 2), {"z": 3}), ((), {"q": 1})]
    # Named like the function's own var parameters, with named ones before *rest.
    got = executor.get_result(executor.map(head_and_rest, [{"x": 1, "rest": (2, 3), "kw": {"a": 1}}]))
    assert got == [(1, (2, 3), {"a": 1})]
    # The decorator-friendly form: a wrapper's *args/**kwargs.
    got = executor.get_result(executor.map(decorated, [{"args": (3,), "kwargs": {"b": 4}}, {"a": 2}]))
    assert got == [("traced", 12), ("traced", 2)]
    future = executor.call_async(pack, {"args": [7], "kwargs": {"k": 8}})
    assert executor.get_result(future) == ((7,), {"k": 8})


def test_a_var_key_of_the_wrong_type_names_it(executor):
    with pytest.raises(TypeError, match=r"map_iterdata\[0\]\['args'\].*tuple or list, got int"):
        executor.map(pack, [{"args": 5}])
    with pytest.raises(TypeError, match=r"map_iterdata\[1\]\['kwargs'\].*must be a dict, got list"):
        executor.map(pack, [{"a": 1}, {"kwargs": [1]}])


def test_a_tuple_as_the_whole_iterdata_is_iterdata(executor):
    assert executor.get_result(executor.map(add, (1, 2))) == [1, 2]


def test_element_forms(executor):
    # Tuples are positional, dicts keyword arguments, anything else (a list, a str) one argument.
    assert executor.get_result(executor.map(add, [(1, 2), (3, 4)])) == [3, 7]
    assert executor.get_result(executor.map(add, [{"x": 1, "y": 5}, {"y": 1, "x": 2}])) == [6, 3]
    assert executor.get_result(executor.map(total, [[1, 2], [3, 4]])) == [3, 7]
    assert executor.get_result(executor.map(len, ["ab", "abc"])) == [2, 3]
    # The whole iterdata: a dict is one call's kwargs; range and set are lists.
    assert executor.get_result(executor.map(add, {"x": 4, "y": 1})) == [5]
    assert executor.get_result(executor.map(add, range(3))) == [0, 1, 2]
    assert sorted(executor.get_result(executor.map(add, {3, 4}))) == [3, 4]
    # call_async: a list is the single argument, a tuple positional arguments.
    assert executor.get_result(executor.call_async(total, [1, 2, 3])) == 6
    assert executor.get_result(executor.call_async(add, (1, 2))) == 3


def test_extra_args_in_every_form(executor):
    assert executor.get_result(executor.map(add, [1, 2], extra_args=(10,))) == [11, 12]
    # A list spreads like a tuple (Lithops appends `*extra_args`).
    assert executor.get_result(executor.map(add, [1, 2], extra_args=[10])) == [11, 12]
    assert executor.get_result(executor.map(add, [(1,), (2,)], extra_args=(5,))) == [6, 7]
    assert executor.get_result(executor.map(add, [{"x": 1}], extra_args={"y": 5})) == [6]
    with pytest.raises(TypeError, match="extra_args must be a tuple"):
        executor.map(add, [(1,)], extra_args={"y": 1})
    with pytest.raises(TypeError, match="extra_args must be a dict"):
        executor.map(add, [{"x": 1}], extra_args=(1,))


def count_words(obj):
    return len(obj.data_stream.read().split())


def test_a_single_object_address_is_the_whole_iterdata(executor):
    storage = executor.storage
    storage.put_object(storage.bucket, "iterdata-url/a.txt", "one two three\n")
    storage.put_object(storage.bucket, "iterdata-url/b.txt", "four five\n")
    url = f"{storage.backend}://{storage.bucket}/iterdata-url/"
    try:
        # A str (not a list of them): one element, naming every object under the prefix.
        assert sorted(executor.get_result(executor.map(count_words, url))) == [2, 3]
        assert sorted(executor.get_result(executor.map(count_words, {"obj": url}))) == [2, 3]
    finally:
        for key in storage.list_keys(storage.bucket, prefix="iterdata-url/"):
            storage.delete_object(storage.bucket, key)


def test_element_types_are_those_of_set_map_type():
    from quelea import _engine

    class Local:
        pass

    many = [type(f"T{i}", (), {})() for i in range(40)]  # past the engine's few-types path
    mixed = [1, "a", 1.0, None, True, b"", Local(), Local()]
    for seq in ([], [1, 2, 3], mixed, many, tuple(many), (1, (2,), {})):
        assert _engine.element_types(seq) == set(map(type, seq))
    with pytest.raises(TypeError, match="list or tuple, not set"):
        _engine.element_types({1})


def test_big_maps_of_mixed_elements_expand_each_as_given(executor):
    # Over the size checked element by element in the client: the runners
    # expand tuples and dicts; plain ints stay single arguments.
    data = [(i, 1) if i % 3 == 0 else {"x": i, "y": 2} if i % 3 == 1 else i for i in range(3000)]
    expected = [i + 1 if i % 3 == 0 else i + 2 if i % 3 == 1 else i + 10 for i in range(3000)]
    assert executor.get_result(executor.map(add_or_ten, data)) == expected


def add_or_ten(x, y=10):
    return x + y
