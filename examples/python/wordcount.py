"""A map-reduce with Python functions on the local backend.

Run it with the project's venv: ``.venv/bin/python examples/python/wordcount.py``.
"""

import quelea


def count_words(line):
    return len(line.split())


def total(counts):
    return sum(counts)


if __name__ == "__main__":
    lines = [f"line {i} has {'more ' * (i % 7)}words" for i in range(1000)]
    expected = sum(len(line.split()) for line in lines)
    with quelea.FunctionExecutor() as fexec:
        fexec.map_reduce(count_words, lines, total)
        words = fexec.get_result()
    print(f"{words} words in 1000 lines (expected {expected})")
    assert words == expected
