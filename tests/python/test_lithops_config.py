"""Lithops config files: with no quelea config given, the file a Lithops
program reads (``LITHOPS_CONFIG``, ``LITHOPS_CONFIG_FILE``,
``./.lithops_config``, ``~/.lithops/config``) is translated like a
Lithops-shaped ``config=`` dict; a key quelea cannot honour is an error
naming it and the file. Every test sets HOME and the working directory
itself: the real ~ is never read."""

from __future__ import annotations

import json
import logging

import pytest

import quelea
from quelea.exceptions import ConfigError


def square(x):
    return x * x


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".lithops").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for var in ("LITHOPS_CONFIG", "LITHOPS_CONFIG_FILE", "QUELEA_CONFIG_FILE", "QUELEA_LOG"):
        monkeypatch.delenv(var, raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


LITHOPS_YAML = """\
lithops:
    backend: localhost
    storage: localhost
    log_level: WARNING
    execution_timeout: 120
localhost:
    worker_processes: 1
"""


def test_home_lithops_config_is_read_and_logged(home, caplog):
    (home / ".lithops" / "config").write_text(LITHOPS_YAML)
    with caplog.at_level(logging.INFO, logger="quelea"):
        fexec = quelea.FunctionExecutor()
    with fexec:
        assert fexec.config["local"]["workers"] == 1
        assert fexec.config["execution"]["timeout"] == 120.0
        assert fexec.config["lithops"]["log_level"] == "WARNING"
        assert fexec.get_result(fexec.map(square, [2, 3])) == [4, 9]
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert f"read the Lithops config in {home / '.lithops' / 'config'}" in logged
    assert "lithops.backend" in logged and "localhost.worker_processes" in logged


def test_the_lookup_order_is_lithops(home, tmp_path, monkeypatch):
    (home / ".lithops" / "config").write_text("localhost:\n    worker_processes: 1\n")
    local = tmp_path / "work" / ".lithops_config"
    local.write_text("localhost:\n    worker_processes: 2\n")
    with quelea.FunctionExecutor() as fexec:
        assert fexec.config["local"]["workers"] == 2  # ./.lithops_config before ~/.lithops/config
    named = tmp_path / "named.yaml"
    named.write_text("localhost:\n    worker_processes: 3\n")
    monkeypatch.setenv("LITHOPS_CONFIG_FILE", str(named))
    with quelea.FunctionExecutor() as fexec:
        assert fexec.config["local"]["workers"] == 3
    monkeypatch.setenv("LITHOPS_CONFIG", json.dumps({"localhost": {"worker_processes": 4}}))
    with quelea.FunctionExecutor() as fexec:
        assert fexec.config["local"]["workers"] == 4


def test_a_quelea_config_wins_over_the_lithops_file(home):
    (home / ".lithops" / "config").write_text("localhost:\n    worker_processes: 1\n")
    with quelea.FunctionExecutor(config={"local": {"workers": 2}}) as fexec:
        assert fexec.config["local"]["workers"] == 2
    (home / ".quelea").mkdir(exist_ok=True)  # the storage of the executor above is there
    (home / ".quelea" / "config.yaml").write_text("local:\n  workers: 2\n")
    with quelea.FunctionExecutor() as fexec:
        assert fexec.config["local"]["workers"] == 2


def test_a_key_quelea_cannot_honour_names_itself_and_the_file(home, caplog):
    path = home / ".lithops" / "config"
    path.write_text("lithops:\n    backend: localhost\n    telemetry: true\n")
    with caplog.at_level(logging.ERROR, logger="quelea"), pytest.raises(ConfigError) as info:
        quelea.FunctionExecutor()
    assert "`lithops.telemetry` is not supported by quelea" in str(info.value)
    assert str(path) in str(info.value)
    assert any("refused the Lithops config" in r.getMessage() for r in caplog.records)
    path.write_text("lithops:\n    mode: standalone\n")
    with pytest.raises(ConfigError, match="`lithops.mode` = 'standalone' is not supported"):
        quelea.FunctionExecutor()
    path.write_text("lithops:\n    log_level: LOUD\n")
    with pytest.raises(ConfigError, match="`lithops.log_level` = 'LOUD'"):
        quelea.FunctionExecutor()
    path.write_text("lithops: [not, a, mapping\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        quelea.FunctionExecutor()


def test_a_lithops_file_given_as_config_file(home, tmp_path):
    path = tmp_path / "lithops.yaml"
    path.write_text(LITHOPS_YAML + "rabbitmq:\n    amqp_url: amqp://u:p@127.0.0.1:5672/%2f\n")
    with quelea.FunctionExecutor(config_file=str(path)) as fexec:
        assert fexec.config["local"]["workers"] == 1
        assert fexec.config["rabbitmq"]["url"]  # Lithops' amqp_url, taken (shown redacted)


def test_missing_lithops_config_file_env_is_an_error(home, tmp_path, monkeypatch):
    monkeypatch.setenv("LITHOPS_CONFIG_FILE", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="LITHOPS_CONFIG_FILE=.*nope.yaml is not a file"):
        quelea.FunctionExecutor()
