"""Small helpers shared by the primary and worker sides."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("rcluster")


def call_reporting(callback: Callable[..., Any], *args: Any, what: str) -> None:
    """Calls a user callback; an exception is logged with its traceback, then ignored.

    A callback that raises must not end the event loop that called it (the cluster would stop
    being watched), but neither may its error disappear: it goes to the ``rcluster`` logger,
    which prints to stderr even when logging is not configured.
    """
    try:
        callback(*args)
    except Exception:
        logger.exception("rcluster: %s %r raised; carrying on", what, callback)


def check_int(name: str, value: object, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} ({value!r})")
    return value


def check_seconds(name: str, value: object, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"{name} must be a number of seconds, not {type(value).__name__} ({value!r})"
        )
    return float(value)


def check_str(name: str, value: object, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__} ({value!r})")
    return value


#: Compact JSON encoding for messages. One encoder made once: `json.dumps` with non-default
#: separators builds a new encoder on every call, which costs more than the send itself.
json_encode = __import__("json").JSONEncoder(separators=(",", ":")).encode
