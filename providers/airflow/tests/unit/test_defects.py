"""The smaller defects of issue 13: templated inputs, errors that name the right thing,
the connection form's backends, provider metadata, the extra link, executor refusals,
a killed sync task reported as a cancellation."""

from __future__ import annotations

import json
import threading
import time

import pytest

from helpers import objects, set_conn
from quelea_airflow._compat import AirflowException
from quelea_airflow._connection_form import BACKENDS, CONN_FIELDS
from quelea_airflow.get_provider_info import get_provider_info
from quelea_airflow.hooks.quelea import QueleaHook, validate_config
from quelea_airflow.links.quelea import XCOM_LINK_KEY, QueleaJobLink, job_page
from quelea_airflow.operators.quelea import QueleaJobCancelled, QueleaMapOperator, parse_rendered


def inc(x):
    return x + 1


def test_a_jinja_string_iterdata_is_parsed_or_refused():
    assert parse_rendered("[1, 2, 3]", "map_iterdata") == [1, 2, 3]
    assert parse_rendered(" ({'a': 1}, {'a': 2}) ", "map_iterdata") == ({"a": 1}, {"a": 2})
    assert parse_rendered('[{"a": true}]', "map_iterdata") == [{"a": True}]  # JSON, not Python
    assert parse_rendered("s3://bucket/prefix/", "map_iterdata", allow_str=True) == "s3://bucket/prefix/"
    for bad in ("1,2,3", "[1, 2", "hello"):
        with pytest.raises(AirflowException, match="render_template_as_native_obj=True"):
            parse_rendered(bad, "map_iterdata", allow_str=True)
    assert parse_rendered([1], "map_iterdata") == [1]


def test_a_rendered_string_iterdata_runs_as_the_list(quelea_conn):
    op = QueleaMapOperator(task_id="t", map_function=inc, map_iterdata="[1, 2, 3]")
    assert op.execute(context={}) == [2, 3, 4]
    op = QueleaMapOperator(task_id="t", map_function=inc, map_iterdata="1, 2, 3")
    with pytest.raises(AirflowException, match="map_iterdata is the string '1, 2, 3'"):
        op.execute(context={})


def test_a_templated_quelea_config(quelea_conn):
    # A template is kept at parse time, and a JSON object it renders to is used.
    op = QueleaMapOperator(
        task_id="t", map_function=inc, map_iterdata=[1], quelea_config="{{ var.value.cfg }}"
    )
    op.quelea_config = '{"execution": {"timeout": 9}}'  # as rendered
    assert op.hook.get_config()["execution"]["timeout"] == 9
    op = QueleaMapOperator(task_id="t", map_function=inc, map_iterdata=[1], quelea_config="{{ x }}")
    op.quelea_config = "storage: s3"  # rendered to something else
    with pytest.raises(TypeError, match="task 't': quelea_config must be a dict"):
        op.execute(context={})


def test_a_bad_quelea_config_is_not_blamed_on_the_connection(quelea_conn):
    from quelea.exceptions import ConfigError

    op = QueleaMapOperator(
        task_id="t", map_function=inc, map_iterdata=[1], quelea_config={"local": {"workers": "many"}}
    )
    with pytest.raises(ConfigError) as e:
        op.execute(context={})
    assert str(e.value).startswith("quelea_config (merged over Airflow connection 'quelea_default')"), e.value
    # A bad connection is still the connection's.
    with pytest.raises(ConfigError, match="^Airflow connection 'quelea_default'"):
        validate_config({"nope": 1}, "Airflow connection 'quelea_default'")


def test_a_connection_test_does_not_name_the_temporary_connection_id(monkeypatch):
    # Airflow's UI and API test a form under a random connection id.
    set_conn(monkeypatch, "tmp_a1b2c3", conn_type="quelea", extra={"nope": 1})
    ok, message = QueleaHook("tmp_a1b2c3").test_connection()
    assert not ok and "nope" in message
    assert "tmp_a1b2c3" not in message and "this connection" in message, message


def test_the_connection_form_offers_every_backend(storage_dir):
    assert CONN_FIELDS["backend"]["schema"]["enum"] == [*BACKENDS, None]
    assert set(BACKENDS) == {"local", "http", "aws_lambda"}
    from quelea.exceptions import ConfigError

    for backend in BACKENDS:
        # Each is a backend quelea's config knows (an http/aws_lambda config then asks
        # for its own settings, naming them; it does not reject the backend).
        try:
            validate_config({"backend": backend, "storage": "localdisk"}, "form")
        except ConfigError as e:
            assert "unknown variant" not in str(e) and backend in str(e), e


def test_provider_metadata_has_no_placeholder_and_registers_the_link_and_config():
    info = get_provider_info()
    assert "example.invalid" not in json.dumps(info)
    # The project has no public home: no documentation link rather than a dead one.
    assert "documentation-url" not in info
    assert info["extra-links"] == ["quelea_airflow.links.quelea.QueleaJobLink"]
    options = info["config"]["quelea"]["options"]
    assert options["xcom_threshold_bytes"]["default"] == "1048576"
    assert options["dashboard_url"]["default"] == ""


def test_the_operators_template_fields_have_renderers():
    op = QueleaMapOperator(task_id="t", map_function=inc, map_iterdata=[1])
    assert set(op.template_fields) <= set(op.template_fields_renderers)
    assert op.template_fields_renderers["quelea_config"] == "json"


class _TI:
    def __init__(self):
        self.pushed = {}

    def xcom_push(self, key, value):
        self.pushed[key] = value


def test_the_extra_link_points_to_the_dashboard_page(monkeypatch):
    handle = json.dumps({"executor_id": "ab12cd-3", "job_id": "M000"})
    monkeypatch.delenv("QUELEA_DASHBOARD_URL", raising=False)
    assert job_page({"handles": [handle]}) is None
    ti = _TI()
    QueleaJobLink.persist({"ti": ti}, {"handles": [handle]})
    assert ti.pushed == {XCOM_LINK_KEY: ""}
    monkeypatch.setenv("QUELEA_DASHBOARD_URL", "http://127.0.0.1:8265/")
    assert job_page({"handles": [handle]}) == "http://127.0.0.1:8265/job/ab12cd-3-M000"
    monkeypatch.setenv("AIRFLOW__QUELEA__DASHBOARD_URL", "http://dash.example:9000")
    QueleaJobLink.persist({"ti": ti}, {"handles": [handle]})
    assert ti.pushed == {XCOM_LINK_KEY: "http://dash.example:9000/job/ab12cd-3-M000"}
    assert QueleaMapOperator(task_id="t", map_function=inc, map_iterdata=[1]).operator_extra_links


def test_the_local_backend_cannot_defer_under_kubernetes(quelea_conn, monkeypatch, storage_dir):
    op = QueleaMapOperator(task_id="k", map_function=inc, map_iterdata=[1], deferrable=True)
    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "KubernetesExecutor")
    with pytest.raises(AirflowException, match="use a remote backend|Use a remote backend") as e:
        op.execute(context={})
    assert "KubernetesExecutor" in str(e.value) and "`http`" in str(e.value)
    assert objects(storage_dir) == []  # refused before anything was submitted


def _sleeps(x):
    time.sleep(60)
    return x


def test_a_killed_sync_task_reports_a_cancellation(quelea_conn, storage_dir):
    """on_kill (Airflow calls it from the task's SIGTERM handler; a thread here) while
    execute waits in the task's main thread: a cancellation, and nothing left."""
    op = QueleaMapOperator(task_id="killed", map_function=_sleeps, map_iterdata=[1, 2], poll_interval=0.2)

    def kill_once_running():
        deadline = time.monotonic() + 30
        while op._executor is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        op.on_kill()

    killer = threading.Thread(target=kill_once_running)
    killer.start()
    with pytest.raises(QueleaJobCancelled, match="was killed: quelea job .* was cancelled"):
        op.execute(context={})
    killer.join(60)
    # Nothing left: no runner process of this process's pool, no storage object.
    deadline = time.monotonic() + 30
    while (left := _runner_children()) or objects(storage_dir):
        assert time.monotonic() < deadline, (left, objects(storage_dir))
        time.sleep(0.2)


def _runner_children() -> list[int]:
    import os
    from pathlib import Path

    pids = []
    for task in Path(f"/proc/{os.getpid()}/task").glob("*"):
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            pass
    running = []
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X") and b"quelea" in cmd:
            running.append(pid)
    return running


def test_a_deferral_timeout_is_a_timeout_error(quelea_conn, storage_dir):
    import datetime

    from quelea_airflow import _job
    from quelea_airflow._compat import AirflowTaskTimeout, TaskDeferred

    op = QueleaMapOperator(
        task_id="slow",
        map_function=_sleeps,
        map_iterdata=[1],
        deferrable=True,
        defer_after=0,
        execution_timeout=datetime.timedelta(seconds=20),
    )
    with pytest.raises(TaskDeferred) as e:
        op.execute(context={})
    trigger = e.value.trigger
    # The trigger gives up (cancelling the job) before Airflow's own deferral timeout.
    assert trigger.end_time < time.time() + 20
    job = e.value.kwargs["job"]
    _job.Job(job, quelea_conn).finish(cancel=True)
    with pytest.raises(AirflowTaskTimeout, match="did not finish within the task's execution_timeout"):
        op.execute_complete({}, event={"status": "timeout", "job": job, "done": 0, "total": 1})
    assert objects(storage_dir) == []
