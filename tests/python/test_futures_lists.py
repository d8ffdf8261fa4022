"""Lists of futures: every list operation sees every future, so nothing a
map produced is ever dropped silently (Lithops programs add, extend and
slice the lists ``map`` returns)."""

from __future__ import annotations

import quelea


def square(x):
    return x * x


def test_adding_two_fresh_maps_keeps_every_result(executor):
    a = executor.map(square, [1, 2, 3])
    b = executor.map(square, [4, 5, 6])
    assert executor.get_result(a + b) == [1, 4, 9, 16, 25, 36]
    # Nothing is left over for a bare get_result: all were read.
    assert executor.get_result() == []


def test_every_way_of_combining_lists_keeps_every_future(executor):
    expected = [x * x for x in range(6)]
    a, b = executor.map(square, range(3)), executor.map(square, range(3, 6))
    assert quelea.get_result(list(a) + b) == expected
    a, b = executor.map(square, range(3)), executor.map(square, range(3, 6))
    joined = []
    joined.extend(a)
    joined.extend(b)
    assert quelea.get_result(joined) == expected
    a, b = executor.map(square, range(3)), executor.map(square, range(3, 6))
    a.extend(b)
    assert len(a) == 6 and quelea.get_result(a) == expected
    a, b = executor.map(square, range(3)), executor.map(square, range(3, 6))
    a += b
    assert quelea.get_result(a) == expected
    a, b = executor.map(square, range(3)), executor.map(square, range(3, 6))
    assert quelea.get_result([*a, *b]) == expected
    c = executor.map(square, range(6))
    assert quelea.get_result(c[:3]) == expected[:3] and quelea.get_result(c[3:]) == expected[3:]
    d = executor.map(square, range(6))
    assert quelea.get_result(d[::2] + d[1::2]) == expected[::2] + expected[1::2]
