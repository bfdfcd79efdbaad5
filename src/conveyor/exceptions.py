"""Exceptions raised by Conveyor."""

from __future__ import annotations

import builtins


class ConveyorError(Exception):
    """Base class of every Conveyor error."""


class ConfigurationError(ConveyorError):
    """A setting is unknown or has an invalid value."""


class SerializationError(ConveyorError, TypeError):
    """A value cannot be encoded as JSON (raised at the call site; nothing is sent)."""


class MessageTooLarge(SerializationError):
    """An encoded message exceeds ``message_max_bytes``."""


class MalformedMessage(ConveyorError):
    """Bytes from the broker are not a valid Conveyor envelope.

    ``reason`` is the dead-letter reason: ``undecodable`` (not JSON), ``malformed``
    (JSON, but a missing field or a wrong type) or ``bad_signature`` (signing is on and the
    body is not signed with an accepted key).
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class NotRegistered(ConveyorError, KeyError):
    """No task of this name is registered with the app."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "task not registered"


class BrokerError(ConveyorError):
    """The broker could not be reached or refused an operation."""


class ResultStoreError(ConveyorError):
    """The result store could not be reached or refused an operation."""


class TimeoutError(ConveyorError, builtins.TimeoutError):
    """Waiting for a result took longer than the given timeout."""


class TaskFailed(ConveyorError):
    """A task failed with an exception Conveyor will not rebuild.

    Exceptions are rebuilt only when their type is built in or listed in the task's
    ``throws``; for anything else ``get()`` raises this, carrying what was stored.
    """

    def __init__(self, exc_type: str, message: str, traceback: str | None = None) -> None:
        super().__init__(f"{exc_type}: {message}")
        self.exc_type = exc_type
        self.message = message
        self.remote_traceback = traceback


class Retry(ConveyorError):
    """Raised by ``Task.retry()`` to hand the task back to the broker for a later run."""

    def __init__(
        self, message: str = "", exc: BaseException | None = None, when: float = 0.0
    ) -> None:
        super().__init__(message or f"Retry in {when:.3g}s")
        self.exc = exc
        self.when = when


class MaxRetriesExceededError(ConveyorError):
    """``retry()`` was called after the task used all its retries and no exception was given."""


class Reject(ConveyorError):
    """Raised inside a task to dead-letter its message with reason ``rejected``."""


class SoftTimeLimitExceeded(ConveyorError):
    """Raised inside a task when its soft time limit passes; the task may clean up."""


class TimeLimitExceeded(ConveyorError):
    """The task ran past its hard time limit and its process was killed."""


class WorkerLostError(ConveyorError):
    """The process running the task died before the task finished."""


class TaskRevokedError(ConveyorError):
    """The task was revoked (``get()`` raises this for state REVOKED)."""


class TaskExpiredError(ConveyorError):
    """The message expired before a worker started it (state EXPIRED)."""


class ChordError(ConveyorError):
    """A chord's body did not run because header tasks failed."""


class InvalidTaskCall(ConveyorError):
    """A task was used in a way it cannot be (e.g. ``get()`` inside a task)."""
