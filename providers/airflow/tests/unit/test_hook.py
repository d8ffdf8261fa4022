"""QueleaHook: connection parsing (the real Airflow connection lookup, from
environment variables), validation by quelea's own typed config, test_connection."""

from __future__ import annotations

import json

import pytest

from helpers import set_conn
from quelea.exceptions import ConfigError
from quelea_airflow._compat import AirflowNotFoundException
from quelea_airflow.get_provider_info import get_provider_info
from quelea_airflow.hooks.quelea import QueleaHook


def test_extra_is_the_quelea_config(monkeypatch, local_config):
    set_conn(monkeypatch, "q1", conn_type="quelea", extra={**local_config, "execution": {"timeout": 30}})
    config = QueleaHook("q1").get_config()
    assert config["storage"] == "localdisk"
    assert config["execution"] == {"timeout": 30}
    assert config["local"] == {"workers": 2}


def test_secrets_come_from_login_password_and_host(monkeypatch):
    set_conn(
        monkeypatch,
        "q_s3",
        conn_type="quelea",
        host="127.0.0.1",
        port=8333,
        login="AKIDEXAMPLE",
        password="s3cr3t",
        extra={"storage": "s3", "bucket": "b", "s3": {"region": "us-east-1", "allow_http": True}},
    )
    config = QueleaHook("q_s3").get_config()
    assert config["s3"] == {
        "region": "us-east-1",
        "allow_http": True,
        "endpoint": "https://127.0.0.1:8333",
        "access_key_id": "AKIDEXAMPLE",
        "secret_access_key": "s3cr3t",
    }


def test_form_fields_prefixed_or_empty(monkeypatch, storage_dir):
    extra = {
        "extra__quelea__storage": "localdisk",
        "extra__quelea__bucket": "",
        "backend": None,
        "localdisk": {"root": storage_dir},
    }
    set_conn(monkeypatch, "q_form", conn_type="quelea", extra=extra)
    assert QueleaHook("q_form").get_config() == {"storage": "localdisk", "localdisk": {"root": storage_dir}}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"storage": "localdisk", "bogus": 1}, "`bogus`"),
        ({"execution": {"timeot": 5}}, "execution.timeot"),
        ({"storage": "floppy"}, "floppy"),
        ({"local": {"workers": "many"}}, "local.workers"),
    ],
)
def test_bad_extra_is_a_config_error_naming_the_key(monkeypatch, extra, expected):
    set_conn(monkeypatch, "q_bad", conn_type="quelea", extra=extra)
    with pytest.raises(ConfigError) as e:
        QueleaHook("q_bad").get_config()
    assert "'q_bad'" in str(e.value)
    assert expected in str(e.value)


def test_extra_not_json(monkeypatch):
    set_conn(monkeypatch, "q_text", conn_type="quelea", extra="{storage: localdisk")
    with pytest.raises(ValueError, match="'q_text': extra is not valid JSON"):
        QueleaHook("q_text").get_config()


def test_extra_not_an_object(monkeypatch):
    set_conn(monkeypatch, "q_list", conn_type="quelea", extra=json.dumps(["localdisk"]))
    with pytest.raises(ValueError, match="extra must be a JSON object"):
        QueleaHook("q_list").get_config()


def test_wrong_connection_type(monkeypatch):
    set_conn(monkeypatch, "q_http", conn_type="http", host="example.com")
    with pytest.raises(ValueError, match="has type 'http', expected 'quelea'"):
        QueleaHook("q_http").get_config()


def test_missing_connection(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_QUELEA_DEFAULT", raising=False)
    with pytest.raises(AirflowNotFoundException):
        QueleaHook("no_such_quelea_conn").get_config()
    # The default connection may be absent: quelea's own configuration applies.
    assert QueleaHook().get_config() == {}


def test_overrides_merge_over_the_connection(quelea_conn):
    hook = QueleaHook(config={"execution": {"timeout": 7}})
    with hook.get_executor(max_workers=1) as executor:
        resolved = executor.config
    assert resolved["execution"]["timeout"] == 7.0
    assert resolved["local"]["workers"] == 1
    assert resolved["localdisk"]["root"] == quelea_conn["localdisk"]["root"]
    with pytest.raises(TypeError, match="config must be a dict"):
        QueleaHook(config="storage: s3")


def test_get_executor_runs_calls(quelea_conn):
    with QueleaHook().get_executor() as executor:
        assert executor.map(lambda x: x + 1, [1, 2, 3]) and executor.get_result() == [2, 3, 4]


def test_test_connection(quelea_conn, monkeypatch):
    assert QueleaHook().test_connection() == (True, "quelea ran a test call")
    set_conn(monkeypatch, "q_bad2", conn_type="quelea", extra={"nope": 1})
    ok, message = QueleaHook("q_bad2").test_connection()
    assert not ok and "ConfigError" in message and "nope" in message


def test_connection_form_yaml_and_legacy_agree():
    info = get_provider_info()
    (conn_type,) = info["connection-types"]
    assert conn_type["connection-type"] == QueleaHook.conn_type == "quelea"
    assert conn_type["hook-class-name"] == "quelea_airflow.hooks.quelea.QueleaHook"
    widgets = QueleaHook.get_connection_form_widgets()
    assert set(widgets) == set(conn_type["conn-fields"])
    for name, widget in widgets.items():
        assert widget.args[0] == conn_type["conn-fields"][name]["label"]
    behaviour = QueleaHook.get_ui_field_behaviour()
    assert behaviour == {
        "hidden_fields": conn_type["ui-field-behaviour"]["hidden-fields"],
        "relabeling": conn_type["ui-field-behaviour"]["relabeling"],
        "placeholders": conn_type["ui-field-behaviour"]["placeholders"],
    }
    # The extra placeholder is itself a valid quelea config.
    from quelea_airflow.hooks.quelea import validate_config

    validate_config(json.loads(behaviour["placeholders"]["extra"]), "placeholder")


def test_storage_kinds_and_their_fields_fill_their_sections(monkeypatch):
    set_conn(
        monkeypatch,
        "q_azure",
        conn_type="quelea",
        host="http://127.0.0.1:10000/acct",
        login="acct",
        password="a2V5",
        extra={"storage": "azure", "bucket": "c", "extra__quelea__azure__use_emulator": False},
    )
    assert QueleaHook("q_azure").get_config()["azure"] == {
        "use_emulator": False,
        "endpoint": "http://127.0.0.1:10000/acct",
        "account": "acct",
        "access_key": "a2V5",
    }
    set_conn(
        monkeypatch,
        "q_gcs",
        conn_type="quelea",
        # object_store's credential file for emulators: no OAuth, no key.
        password='{"client_email": "", "private_key": "", "private_key_id": "", "disable_oauth": true}',
        extra={"storage": "gcs", "gcs__endpoint": "http://127.0.0.1:4443", "gcs__anonymous": None},
    )
    config = QueleaHook("q_gcs").get_config()
    key = '{"client_email": "", "private_key": "", "private_key_id": "", "disable_oauth": true}'
    assert config["gcs"] == {"endpoint": "http://127.0.0.1:4443", "service_account_key": key}
    set_conn(
        monkeypatch,
        "q_minio",
        conn_type="quelea",
        host="http://127.0.0.1:9000",
        login="minio",
        password="minio123",
        extra={"storage": "minio"},
    )
    assert QueleaHook("q_minio").get_config()["minio"] == {
        "endpoint": "http://127.0.0.1:9000",
        "access_key_id": "minio",
        "secret_access_key": "minio123",
    }


def test_connection_form_lists_every_storage_kind_and_its_settings():
    fields = get_provider_info()["connection-types"][0]["conn-fields"]
    kinds = fields["storage"]["schema"]["enum"]
    assert {"localdisk", "memory", "s3", "gcs", "azure", "ibm_cos", "minio"} <= set(kinds)
    for name in (
        "gcs__endpoint",
        "azure__account",
        "azure__use_emulator",
        "ibm_cos__region",
        "minio__endpoint",
    ):
        assert name in fields, name
    assert fields["azure__use_emulator"]["schema"]["type"] == ["boolean", "null"]
    # Credentials are never plain form fields.
    assert not any(name.endswith(("secret_access_key", "access_key", "sas_token")) for name in fields)
