"""Apache Airflow provider for quelea: run Python functions a thousand at a time from a DAG."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
