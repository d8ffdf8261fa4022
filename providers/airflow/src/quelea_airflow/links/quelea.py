"""``QueleaJobLink``: the operator's extra link to its job's page in ``quelea dashboard``."""

from __future__ import annotations

import os
from typing import Any

from quelea_airflow._compat import BaseOperatorLink, conf, xcom_get_value

XCOM_LINK_KEY = "quelea_dashboard_url"


def dashboard_url() -> str | None:
    """The dashboard's base URL: ``[quelea] dashboard_url`` (``AIRFLOW__QUELEA__DASHBOARD_URL``),
    else ``QUELEA_DASHBOARD_URL`` (what the quelea executor reads); None if neither is set."""
    url = conf.get("quelea", "dashboard_url", fallback="") or os.environ.get("QUELEA_DASHBOARD_URL", "")
    url = url.strip().rstrip("/")
    return url or None


def job_page(job: dict) -> str | None:
    """The dashboard page of a job dict's last part (the one holding the task's result)."""
    import json

    url = dashboard_url()
    if url is None or not job.get("handles"):
        return None
    handle = json.loads(job["handles"][-1])
    return f"{url}/job/{handle['executor_id']}-{handle['job_id']}"


class QueleaJobLink(BaseOperatorLink):
    """ "quelea job": the dashboard page of the task's job, when a dashboard URL was configured
    on the worker that ran the task (the page URL is kept in XCom ``quelea_dashboard_url``)."""

    name = "quelea job"

    @staticmethod
    def persist(context: Any, job: dict) -> str | None:
        page = job_page(job)
        ti = context.get("ti") if hasattr(context, "get") else None
        if ti is not None:
            # Pushed even without a dashboard ("": no link), so the UI finds the key.
            ti.xcom_push(key=XCOM_LINK_KEY, value=page or "")
        return page

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return xcom_get_value(ti_key, XCOM_LINK_KEY) or ""
