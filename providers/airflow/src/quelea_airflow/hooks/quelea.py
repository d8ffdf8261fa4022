"""``QueleaHook``: an Airflow connection that yields a ready ``quelea.FunctionExecutor``."""

from __future__ import annotations

import copy
import json
from typing import Any

from quelea_airflow._compat import AirflowNotFoundException, BaseHook
from quelea_airflow._connection_form import (
    CONN_FIELDS,
    CONN_TYPE,
    DEFAULT_CONN_ID,
    SECTION_SEP,
    UI_FIELD_BEHAVIOUR,
    connection_fields,
)
from quelea_airflow._job import executor_log_settings

_FORM_PREFIX = f"extra__{CONN_TYPE}__"


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def validate_config(config: dict, where: str) -> dict:
    """Checks ``config`` with quelea's own typed config (the same one ``FunctionExecutor``
    uses): an unknown key or a bad value raises ``quelea.exceptions.ConfigError``
    naming the key, prefixed with ``where``. Returns the resolved config, secrets redacted."""
    import quelea
    from quelea.exceptions import ConfigError

    try:
        executor = quelea.FunctionExecutor(config=config)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from e
    try:
        return executor.config
    finally:
        executor.close()


def config_from_connection(conn: Any) -> dict:
    """The quelea config an Airflow connection describes (secrets included).

    The extra is quelea's config as JSON. Form fields may arrive prefixed
    (``extra__quelea__storage``, the 2.x form) and empty form fields are
    dropped; ``<section>__<key>`` form fields give that storage setting.
    ``host``/``port``, ``login`` and ``password`` fill the settings the
    storage crate names for the connection's storage kind (S3 flavours:
    ``endpoint``, ``access_key_id``, ``secret_access_key``; Azure: ``endpoint``,
    ``account``, ``access_key``; GCS: ``endpoint``, ``service_account_key``).
    """
    where = f"Airflow connection {conn.conn_id!r}"
    raw = conn.extra
    if raw in (None, ""):
        extra: Any = {}
    elif isinstance(raw, dict):
        extra = raw
    else:
        try:
            extra = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: extra is not valid JSON: {e}") from None
    if not isinstance(extra, dict):
        raise ValueError(
            f"{where}: extra must be a JSON object (quelea's config), got {type(extra).__name__}"
        )
    config: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in extra.items():
        name = key[len(_FORM_PREFIX) :] if key.startswith(_FORM_PREFIX) else key
        if name in CONN_FIELDS and value in (None, ""):
            continue  # an empty form field
        if name in CONN_FIELDS and SECTION_SEP in name:
            section, setting = name.split(SECTION_SEP, 1)  # a storage setting's form field
            sections.setdefault(section, {})[setting] = value
            continue
        config[name] = value
    fields = connection_fields(config.get("storage"))
    generic: dict[str, Any] = {}
    if conn.host and fields["host"]:
        endpoint = conn.host if "://" in conn.host else f"https://{conn.host}"
        if conn.port:
            endpoint = f"{endpoint.rstrip('/')}:{conn.port}"
        generic[fields["host"]] = endpoint
    if conn.login and fields["login"]:
        generic[fields["login"]] = conn.login
    if conn.password and fields["password"]:
        generic[fields["password"]] = conn.password
    if generic:
        sections.setdefault(fields["section"], {}).update(generic)
    for section, values in sections.items():
        if not isinstance(config.get(section, {}), dict):
            raise ValueError(f"{where}: extra key `{section}` must be an object")
        config[section] = {**config.get(section, {}), **values}
    return config


class QueleaHook(BaseHook):
    """Gives ``quelea.FunctionExecutor`` objects configured from an Airflow connection.

    :param quelea_conn_id: connection of type ``quelea``; its extra is a quelea
        config as JSON (``backend``, ``storage``, ``bucket``, ``execution``,
        ``local``, ``localdisk``, ``s3``), its password the S3 secret key. When
        the default connection ``quelea_default`` does not exist, quelea's own
        configuration (``QUELEA_*`` variables, ``~/.quelea/config.yaml``) is used.
    :param config: a quelea config dict merged over the connection's.
    """

    conn_name_attr = "quelea_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    conn_type = CONN_TYPE
    hook_name = "Quelea"

    def __init__(self, quelea_conn_id: str = DEFAULT_CONN_ID, config: dict | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if config is not None and not isinstance(config, dict):
            raise TypeError(f"config must be a dict, got {type(config).__name__}")
        self.quelea_conn_id = quelea_conn_id
        self.config_overrides = config or {}
        self._config: dict | None = None

    # -- config ------------------------------------------------------------------------------------

    def _connection_config(self) -> dict:
        try:
            conn = self.get_connection(self.quelea_conn_id)
        except AirflowNotFoundException:
            if self.quelea_conn_id != DEFAULT_CONN_ID:
                raise
            self.log.info("No connection %r: using quelea's own configuration", DEFAULT_CONN_ID)
            return {}
        if conn.conn_type not in (None, "", CONN_TYPE):
            raise ValueError(
                f"Airflow connection {self.quelea_conn_id!r} has type {conn.conn_type!r}, "
                f"expected {CONN_TYPE!r}"
            )
        return config_from_connection(conn)

    def get_config(self) -> dict:
        """The connection's config with this hook's overrides, validated (secrets included)."""
        if self._config is None:
            base = self._connection_config()
            where = f"Airflow connection {self.quelea_conn_id!r}"
            if not self.config_overrides:
                validate_config(base, where)
                self._config = base
            else:
                # Blame the connection only for what is wrong in it.
                validate_config(base, where)
                config = _deep_merge(base, self.config_overrides)
                validate_config(config, f"quelea_config (merged over {where})")
                self._config = config
        return copy.deepcopy(self._config)

    # -- executors ---------------------------------------------------------------------------------

    def get_executor(self, config: dict | None = None, **overrides: Any):
        """A new ``quelea.FunctionExecutor``. ``config`` is merged over the connection's
        config; other keyword arguments (``backend``, ``storage``, ``max_workers``)
        go to ``FunctionExecutor`` as they are; ``log_level`` defaults to ``WARNING``
        (what calls print stays in ``future.logs``, see ``EXECUTOR_LOG_LEVEL``). Close it
        when done."""
        import quelea

        merged = _deep_merge(self.get_config(), config or {})
        return quelea.FunctionExecutor(config=merged, **executor_log_settings(overrides))

    def get_conn(self):
        return self.get_executor()

    def attach(self, handle: str | dict):
        """Futures of a job another process submitted (``FunctionExecutor.job_handle``)."""
        import quelea

        text = handle if isinstance(handle, str) else json.dumps(handle)
        return quelea.attach(text, config=self.get_config())

    def test_connection(self) -> tuple[bool, str]:
        """Runs one tiny call through the connection's backend and storage."""
        try:
            with self.get_executor() as executor:
                future = executor.call_async(_probe, 20)
                result = future.result(timeout=60)
            if result != 42:
                return False, f"the test call returned {result!r}, expected 42"
            return True, "quelea ran a test call"
        except Exception as e:  # noqa: BLE001 - the UI shows the reason
            # The UI and API test a connection under a random temporary id: do not
            # show that id as if it were a connection of the user's.
            message = str(e).replace(f"Airflow connection {self.quelea_conn_id!r}", "this connection")
            return False, f"{type(e).__name__}: {message}"

    # -- connection form, Airflow 2.x and 3.0-3.1 (3.2+ reads conn-fields from get_provider_info) --

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        from wtforms import StringField

        try:
            from flask_appbuilder.fieldwidgets import BS3TextFieldWidget

            widget: dict[str, Any] = {"widget": BS3TextFieldWidget()}
        except ImportError:  # Airflow 3 without the FAB provider
            widget = {}
        return {
            name: StringField(field["label"], description=field["description"], **widget)
            for name, field in CONN_FIELDS.items()
        }

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        return copy.deepcopy(UI_FIELD_BEHAVIOUR)


def _probe(x: int) -> int:
    return x + 22
