"""quelea's exceptions: one hierarchy under :class:`QueleaError`.

Exceptions a remote function raises are re-raised in the client with their
original type; the classes here are for what quelea itself reports.
"""

from __future__ import annotations


class QueleaError(Exception):
    """Base class of every error quelea raises itself."""


class ConfigError(QueleaError, ValueError):
    """A config key is unknown or a value is invalid; the message names it."""


class StorageError(QueleaError):
    """An object storage operation failed."""


class StorageNoSuchKeyError(StorageError, KeyError):
    """The object does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WaitTimeoutError(QueleaError, TimeoutError):
    """``wait``/``get_result`` ran out of time before the calls finished."""


class JobHandleError(QueleaError, ValueError):
    """A job handle is malformed or names a job that is gone."""


class SerializationError(QueleaError, TypeError):
    """A function, argument or result cannot be pickled; the message names it."""


class CallError(QueleaError):
    """A call failed for a reason other than an exception in the function."""

    def __init__(self, message: str, *, call_id: str | None = None, job_key: str | None = None):
        super().__init__(message)
        self.call_id = call_id
        self.job_key = job_key


class CallTimeoutError(CallError, TimeoutError):
    """The call ran past its ``timeout``; its runner was killed."""


class WorkerMemoryError(CallError, MemoryError):
    """The runner went over its memory limit while running the call."""


class WorkerCrashedError(CallError):
    """The runner died (a signal or an exit) while running the call."""


class CancelledError(CallError):
    """The call was cancelled (``cancel()``, Ctrl-C, or the executor closed)."""


class RemoteError(CallError):
    """The function raised an exception that could not be re-created here.

    ``error_type`` and the message are the remote exception's; ``traceback`` is
    the remote traceback.
    """

    def __init__(self, message: str, *, error_type: str = "", traceback: str = "", **kw):
        super().__init__(message, **kw)
        self.error_type = error_type
        self.traceback = traceback


class RemoteSystemExit(RemoteError):
    """The function raised ``SystemExit`` (``sys.exit(code)``, ``exit()``).

    It ends only the remote call: here it is an error with the exit ``code``,
    never an exit of the client.
    """

    def __init__(self, message: str, *, code: object = None, **kw):
        super().__init__(message, **kw)
        self.code = code


class RemoteKeyboardInterrupt(RemoteError):
    """The function raised ``KeyboardInterrupt`` itself: not a Ctrl-C of the
    client (which cancels the job and raises ``KeyboardInterrupt`` here)."""


class RemoteTraceback(Exception):
    """Carries a remote traceback as the ``__cause__`` of a re-raised exception."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n\n" + self.tb


__all__ = [
    "QueleaError",
    "ConfigError",
    "StorageError",
    "StorageNoSuchKeyError",
    "WaitTimeoutError",
    "JobHandleError",
    "SerializationError",
    "CallError",
    "CallTimeoutError",
    "WorkerMemoryError",
    "WorkerCrashedError",
    "CancelledError",
    "RemoteError",
    "RemoteSystemExit",
    "RemoteKeyboardInterrupt",
    "RemoteTraceback",
]
