"""Apache Airflow provider for quelea: run Python functions a thousand at a time from a DAG."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def results(ref: Any, quelea_conn_id: str = "quelea_default", quelea_config: dict | None = None) -> Any:
    """What a quelea operator's XCom refers to: its result kept in quelea storage
    (above ``xcom_threshold``), or the XCom value itself when it is not a reference."""
    from quelea_airflow import _store

    return _store.results(ref, quelea_conn_id=quelea_conn_id, quelea_config=quelea_config)


def clean_results(
    ref: Any, quelea_conn_id: str = "quelea_default", quelea_config: dict | None = None
) -> bool:
    """Deletes the stored result behind a reference once no task needs it."""
    from quelea_airflow import _store

    return _store.clean_results(ref, quelea_conn_id=quelea_conn_id, quelea_config=quelea_config)


__all__ = ["__version__", "clean_results", "results"]
