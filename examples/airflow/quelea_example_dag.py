"""Example DAG: word counts with quelea from Airflow.

Put this file in your DAG folder, install ``airflow-provider-quelea`` (see
providers/airflow/README.md), and create the ``quelea_default`` connection,
for example::

    airflow connections add quelea_default --conn-type quelea \\
        --conn-extra '{"storage": "localdisk", "local": {"workers": 4}}'

Functions defined in this file reach quelea's workers by value, so they may
use anything imported here.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

try:  # Airflow 3
    from airflow.sdk import DAG, task
except ImportError:  # Airflow 2.11
    from airflow import DAG
    from airflow.decorators import task

from quelea_airflow.operators.quelea import (
    QueleaCallAsyncOperator,
    QueleaMapOperator,
    QueleaMapReduceOperator,
)

LINES = [
    "the quick brown fox jumps over the lazy dog",
    "the dog barks",
    "a fox is quick",
] * 100


def count_words(line: str) -> dict[str, int]:
    return dict(Counter(line.split()))


def merge_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    total: Counter = Counter()
    for c in counts:
        total.update(c)
    return dict(total.most_common(5))


def line_length(line: str) -> int:
    return len(line)


def describe(lengths: list[int], top: dict[str, int]) -> str:
    return f"{len(lengths)} lines, {sum(lengths)} characters; top words {top}"


with DAG(
    "quelea_example",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["quelea", "example"],
) as dag:

    @task
    def read_lines() -> list[str]:
        return LINES

    lines = read_lines()

    # One call per line; the list of results goes to XCom.
    lengths = QueleaMapOperator(task_id="line_lengths", map_function=line_length, map_iterdata=lines)

    # Map, then reduce; deferrable: the worker slot is freed while the job runs.
    top_words = QueleaMapReduceOperator(
        task_id="top_words",
        map_function=count_words,
        map_iterdata=lines,
        reduce_function=merge_counts,
        deferrable=True,
        poll_interval=1.0,
    )

    # A single call, fed by two upstream results.
    summary = QueleaCallAsyncOperator(
        task_id="summary", func=describe, data=(lengths.output, top_words.output)
    )
