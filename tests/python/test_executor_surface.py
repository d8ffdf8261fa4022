"""The attributes Lithops code reads from a FunctionExecutor, with Lithops
3.8's values on its localhost backend: ``last_call``, ``mode``, ``backend``,
``executor_id``, ``futures``, ``cleaned_jobs``, ``config['lithops']``, and
``clean(cs=...)`` deleting the cloudobjects it is given."""

from __future__ import annotations

import os
import re

import pytest

import quelea
from quelea.exceptions import StorageNoSuchKeyError


def square(x):
    return x * x


def total(results):
    return sum(results)


def test_attributes_follow_the_submissions(fresh_executor):
    fexec = fresh_executor
    assert re.fullmatch(r"[0-9a-f]{6}-\d+", fexec.executor_id)
    assert fexec.mode == "localhost" and fexec.backend == "localhost"
    assert fexec.last_call is None and fexec.futures == [] and fexec.cleaned_jobs == set()
    a = fexec.call_async(square, 3)
    assert fexec.last_call == "call_async"
    fs = fexec.map(square, [1, 2])
    assert fexec.last_call == "map"
    fexec.map_reduce(square, [1, 2], total)
    assert fexec.last_call == "map_reduce"
    assert fexec.futures[:3] == [a, *fs] and len(fexec.futures) == 6
    assert fexec.get_result() == [9, 1, 4, 5]


def test_config_has_its_lithops_sections(fresh_executor):
    lithops = fresh_executor.config["lithops"]
    on_s3 = os.environ.get("QTEST_STORAGE") == "s3"
    assert lithops["backend"] == "localhost"
    assert lithops["storage"] == ("aws_s3" if on_s3 else "localhost")
    assert lithops["mode"] == "localhost" and lithops["monitoring"] == "storage"
    assert lithops["data_cleaner"] is True and lithops["execution_timeout"] == 600.0
    assert fresh_executor.config["localhost"]["worker_processes"] == 2
    # quelea's own sections are still there.
    assert fresh_executor.config["local"]["workers"] == 2


def test_clean_deletes_the_cloudobjects_it_is_given(fresh_executor):
    storage = fresh_executor.storage
    kept, gone, also_gone = (storage.put_cloudobject(b"x%d" % i) for i in range(3))
    fs = fresh_executor.map(square, [1, 2])
    assert fresh_executor.get_result(fs) == [1, 4]
    fresh_executor.clean(cs=[gone, also_gone])
    for co in (gone, also_gone):
        with pytest.raises(StorageNoSuchKeyError):
            storage.get_cloudobject(co)
    assert storage.get_cloudobject(kept) == b"x0"
    assert fresh_executor.cleaned_jobs == {fs[0].job_key}
    fresh_executor.clean(cs=kept)  # one cloudobject on its own
    with pytest.raises(StorageNoSuchKeyError):
        storage.get_cloudobject(kept)
    with pytest.raises(TypeError, match=r"cs\[0\] is a str, not a CloudObject"):
        fresh_executor.clean(cs=["key"])


def test_log_level_values(config):
    with quelea.FunctionExecutor(config=config, log_level="DEBUG") as fexec:
        assert fexec.config["lithops"]["log_level"] == "DEBUG"
    with quelea.FunctionExecutor(config=config, log_level=None) as fexec:
        assert fexec.config["lithops"]["log_level"] is None
    with pytest.raises(quelea.exceptions.ConfigError, match="`log_level` = 'LOUD'"):
        quelea.FunctionExecutor(config=config, log_level="LOUD")
