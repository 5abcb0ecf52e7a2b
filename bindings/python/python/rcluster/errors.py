"""Exceptions raised by rcluster.

Every failure of the core arrives as a subclass of :class:`Error` whose message names what was
wrong (the option, the address, the sizes). Some also derive from the built-in exception that
fits, so ``except ValueError`` keeps working for code that does not know rcluster.
"""

from __future__ import annotations


class Error(Exception):
    """Base class of every rcluster error."""


class ConfigError(Error, ValueError):
    """An option has an invalid value. ``field`` names the option, ``value`` what was given."""

    field: str | None = None
    value: str | None = None


class BindError(Error, OSError):
    """A listening address could not be bound (``addr``; ``errno`` when the system gave one)."""

    addr: str | None = None


class SpawnError(Error, OSError):
    """The worker program could not be started (``program``)."""

    program: str | None = None


class MessageTooLargeError(Error, ValueError):
    """A message is over the configured ``max_message`` (``size``, ``limit``); not sent."""

    size: int | None = None
    limit: int | None = None


class QueueFullError(Error):
    """The outgoing queue of a worker is full: it is not reading. Retry later."""

    worker: int | None = None
    limit: int | None = None


class NoSuchWorkerError(Error, LookupError):
    """No live worker has this id (``worker``)."""

    worker: int | None = None


class StoppedError(Error):
    """The supervisor is stopped (or was never started)."""


class ProtocolError(Error):
    """The IPC peer broke the protocol."""


class NotAWorkerError(Error):
    """This process is not running under an rcluster primary."""


class IoError(Error, OSError):
    """A system call failed; ``op`` says which."""

    op: str | None = None


__all__ = [
    "Error",
    "ConfigError",
    "BindError",
    "SpawnError",
    "MessageTooLargeError",
    "QueueFullError",
    "NoSuchWorkerError",
    "StoppedError",
    "ProtocolError",
    "NotAWorkerError",
    "IoError",
]
