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
    """A queue is full: the outgoing queue of a worker that is not reading (``worker``), or
    the task queue of a :class:`rcluster.Pool` (``max_queue`` tasks wait; ``worker`` is None).
    ``limit`` is the queue's bound. Retry later."""

    worker: int | None = None
    limit: int | None = None


class WorkerCrashedError(Error):
    """The worker process running a pool task ended while running it. ``exit_code`` or
    ``signal`` (a number; ``signal_name`` such as ``"SIGSEGV"``) says how; the message says
    which worker, and why when the pool killed it for another task. The pool replaced it."""

    exit_code: int | None = None
    signal: int | None = None
    signal_name: str | None = None


class TaskTimeoutError(Error, TimeoutError):
    """A pool task ran longer than its timeout (from when a worker took it); its worker was
    killed and replaced. ``timeout`` is the limit in seconds."""

    timeout: float | None = None


class PoolBrokenError(Error):
    """No worker of a pool can run tasks: every one stopped for good. ``why`` says why, with
    the worker's traceback when its code failed to load (a worker that cannot load is not
    restarted in a loop)."""

    why: str | None = None


class SerializationError(Error, TypeError):
    """A task's function, arguments, result or exception could not be pickled; the message
    names the value's type and where it was (``type_name``)."""

    type_name: str | None = None


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
    "WorkerCrashedError",
    "TaskTimeoutError",
    "PoolBrokenError",
    "SerializationError",
    "NoSuchWorkerError",
    "StoppedError",
    "ProtocolError",
    "NotAWorkerError",
    "IoError",
]
