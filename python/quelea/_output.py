"""Where remote calls' output goes, and the executor's ``log_level``.

What a call prints (stdout and stderr) is always kept in ``future.logs``.
It also reaches the client's terminal as whole lines, led by the call id
(``[00003] ...``) when the job has more than one call, unless the log level
is ``None`` or above ``INFO`` (``WARNING``, ``ERROR``, ``CRITICAL``): then it is
kept in ``future.logs`` only. The level is, first found:

1. ``FunctionExecutor(log_level=...)``: a level name or number, or ``None``
   (Lithops' values; ``False``, the default, means "not given here");
2. env ``QUELEA_LOG``: a level name, or ``off`` / ``none`` (= ``None``);
3. the config's ``lithops.log_level``.

With none of them, output is shown and the ``quelea`` logger is left as it
is. A level that is given also sets the ``quelea`` logger's level (with a
stderr handler if it has none), as Lithops sets up its own; ``None``
silences it.
"""

from __future__ import annotations

import os

from ._lithops_config import log_level_name
from .exceptions import ConfigError

# Not `from typing import Any`: typing costs a client's start-up ~3 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


_SHOWN = ("DEBUG", "INFO")
_OFF = ("off", "none", "quiet")
_UNSET = object()


def resolve(log_level: Any, config_level: Any) -> tuple[Any, str]:
    """``(level, output)``: the level name (None for silent, ``_UNSET``
    when nothing set one) and ``"shown"`` or ``"logs"``."""
    level: Any = _UNSET
    if log_level is not False:
        level = log_level_name(log_level, "log_level")
    elif os.environ.get("QUELEA_LOG"):
        value = os.environ["QUELEA_LOG"].strip()
        if value.lower() in _OFF:
            level = None
        else:
            try:
                level = log_level_name(value, "QUELEA_LOG")
            except ConfigError:
                raise ConfigError(
                    f"QUELEA_LOG={value!r} is not a log level: use DEBUG, INFO, WARNING, ERROR, "
                    "CRITICAL or off"
                ) from None
    elif config_level is not False:
        level = config_level
    shown = level is _UNSET or level in _SHOWN
    return level, "shown" if shown else "logs"


def setup_logger(level: Any) -> None:
    """The ``quelea`` logger at the level given (see the module doc)."""
    if level is _UNSET:
        return
    import logging

    logger = logging.getLogger("quelea")
    if level is None:
        logger.setLevel(logging.CRITICAL + 1)
        return
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s"))
        logger.addHandler(handler)


def level_name(level: Any) -> str | None:
    return "INFO" if level is _UNSET else level


def payload_output(output: str, calls: int) -> str:
    """How a job's calls show their output (``FunctionPayload.output``)."""
    if output == "logs":
        return "logs"
    return "prefixed" if calls > 1 else "lines"
