"""What the provider keeps in quelea's storage itself, beside the jobs.

- **Result references.** A result larger than the XCom threshold stays in
  quelea storage (one object under ``quelea/airflow/results/``) and XCom gets
  a small reference, ``{"quelea_results": <key>, "bucket", "count", "bytes"}``.
  Downstream quelea operators resolve references in their templated inputs;
  other tasks call :func:`quelea_airflow.results`.
- **Resume records.** A map, map-reduce or call whose try fails with tries
  left keeps the finished elements' results in a record under
  ``quelea/airflow/resume/``, keyed by DAG, run, task and map index (XCom is
  cleared on a new try; the record is not). A deferrable try also writes the
  record with its detached job's handle when it submits, so a try that dies
  while its job runs on (its worker lost) leaves the job to the next try,
  which takes the finished results from it. The next try maps only the
  elements the record lacks (a map-reduce then reduces over all of them).

Both are pickles written by the task and read by the same deployment's tasks
(the storage is trusted as quelea's own job objects are).
"""

from __future__ import annotations

import hashlib
import pickle
from typing import Any

from quelea_airflow.hooks.quelea import DEFAULT_CONN_ID

REF_KEY = "quelea_results"
RESULTS_PREFIX = "quelea/airflow/results/"
RESUME_PREFIX = "quelea/airflow/resume/"
# Results above this many bytes of XCom JSON stay in quelea storage.
DEFAULT_XCOM_THRESHOLD = 1024 * 1024


def _storage(config: dict) -> Any:
    import quelea

    return quelea.Storage(config=config)


def _task_path(context: Any) -> str:
    ti = context["ti"]
    parts = [ti.dag_id, ti.run_id, ti.task_id, str(getattr(ti, "map_index", -1))]
    # Run ids hold characters (":", "+") some stores dislike: hash the path, keep it readable.
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    safe = "/".join("".join(c if c.isalnum() or c in "-_." else "_" for c in p) for p in parts)
    return f"{safe}-{digest}"


def is_ref(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get(REF_KEY), str) and "bucket" in value


def put_results(config: dict, context: Any, value: Any, count: int | None, size: int) -> dict:
    """Stores ``value`` and returns its reference."""
    storage = _storage(config)
    try_number = getattr(context["ti"], "try_number", 0)
    key = f"{RESULTS_PREFIX}{_task_path(context)}/try-{try_number}.pickle"
    storage.put_object(storage.bucket, key, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    return {REF_KEY: key, "bucket": storage.bucket, "count": count, "bytes": size}


def read_ref(ref: dict, config: dict) -> Any:
    storage = _storage(config)
    try:
        body = storage.get_object(ref["bucket"], ref[REF_KEY])
    except Exception as e:
        raise LookupError(
            f"the quelea result reference {ref[REF_KEY]!r} (bucket {ref['bucket']!r}) cannot be read: {e}"
        ) from e
    return pickle.loads(body)  # noqa: S301 - written by the provider into quelea's own storage


def results(ref: Any, quelea_conn_id: str = DEFAULT_CONN_ID, quelea_config: dict | None = None) -> Any:
    """The value behind a quelea result reference (what a quelea operator pushes
    to XCom when its result is above the threshold), read through the
    connection's storage. Anything that is not a reference is returned as it is,
    so ``results(ti.xcom_pull(task_ids="map"))`` works for both."""
    if not is_ref(ref):
        return ref
    from quelea_airflow.hooks.quelea import QueleaHook

    return read_ref(ref, QueleaHook(quelea_conn_id, config=quelea_config).get_config())


def clean_results(ref: Any, quelea_conn_id: str = DEFAULT_CONN_ID, quelea_config: dict | None = None) -> bool:
    """Deletes the object behind a result reference once nothing needs it; True if it was one."""
    if not is_ref(ref):
        return False
    from quelea_airflow.hooks.quelea import QueleaHook

    storage = _storage(QueleaHook(quelea_conn_id, config=quelea_config).get_config())
    storage.delete_object(ref["bucket"], ref[REF_KEY])
    return True


def resolve(value: Any, config: dict) -> Any:
    """``value`` with a top-level reference replaced by what it refers to."""
    return read_ref(value, config) if is_ref(value) else value


# -- resume records ----------------------------------------------------------------------------------


def _resume_key(context: Any) -> str:
    return f"{RESUME_PREFIX}{_task_path(context)}.pickle"


def read_resume_record(config: dict, context: Any, total: int) -> dict | None:
    """The record a previous try of this task kept: ``{"total", "results": {element
    index: value}, "job": job dict or None, "indices": [...], "final"}`` (``job``: the
    previous try's detached job, still in storage, whose map part ran the elements
    ``indices``; ``final``: its last part holds the task's result);
    None if there is none (or it was of a different iterdata length)."""
    storage = _storage(config)
    try:
        body = storage.get_object(storage.bucket, _resume_key(context))
    except Exception:  # noqa: BLE001 - no record: a first try
        return None
    record = pickle.loads(body)  # noqa: S301 - see the module doc
    if record.get("total") != total:
        return None
    return {
        "total": total,
        "results": dict(record["results"]),
        "job": record.get("job"),
        "indices": list(record.get("indices") or []),
        "final": bool(record.get("final")),
    }


def read_resume(config: dict, context: Any, total: int) -> dict[int, Any] | None:
    """The finished results a previous try of this task kept, by element index;
    None if there is none (or it was of a different iterdata length)."""
    record = read_resume_record(config, context, total)
    return None if record is None else record["results"]


def write_resume(
    config: dict,
    context: Any,
    total: int,
    finished: dict[int, Any],
    job: dict | None = None,
    indices: list[int] | None = None,
    final: bool = False,
) -> None:
    """``final``: the last part of ``job`` holds the task's result (a map-reduce's reduce)."""
    storage = _storage(config)
    record = {"total": total, "results": finished, "job": job, "indices": indices or [], "final": final}
    body = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
    storage.put_object(storage.bucket, _resume_key(context), body)


def delete_resume(config: dict, context: Any) -> None:
    storage = _storage(config)
    try:
        storage.delete_object(storage.bucket, _resume_key(context))
    except Exception:  # noqa: BLE001, S110 - nothing to delete
        pass
