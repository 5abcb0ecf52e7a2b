"""Process signals for a primary that has no handlers of its own.

What each signal means (SIGINT/SIGTERM: stop gracefully, a second one: kill now; SIGHUP:
reload; SIGTTIN/SIGTTOU: one worker more or less) is decided by the core, the same for the
``rcluster`` command, C and Node. The handler here only forwards the signal number, as
gunicorn's arbiter only records it: the supervisor's loop does the work.

Handlers are installed from the main thread only (CPython runs them there and refuses to
install them elsewhere), only over the default disposition (``SIG_DFL``, or Python's
``default_int_handler`` for SIGINT): a program's own handler, or a signal it ignores (a
``nohup``'d SIGHUP), is left alone. They are restored when the last supervisor that uses
them stops.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .supervisor import Supervisor

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU)

_log = logging.getLogger("rcluster")
# Weak: a supervisor dropped without stop() is still stopped by the garbage collector, as
# before; the handlers then behave as the defaults would.
_targets: weakref.WeakSet[Supervisor] = weakref.WeakSet()
_saved: dict[int, Any] = {}  # signal -> the handler ours replaced


def _is_default(sig: int, handler: Any) -> bool:
    if sig == signal.SIGINT:
        return handler is signal.default_int_handler or handler == signal.SIG_DFL
    return handler == signal.SIG_DFL


def _handler(signo: int, frame: object) -> None:
    targets = list(_targets)
    if not targets:
        # Stopped, but the handler could not be restored (stop ran off the main thread, or
        # the supervisor was dropped without stop): behave as the default would.
        if signo == signal.SIGINT:
            raise KeyboardInterrupt
        signal.signal(signo, signal.SIG_DFL)
        os.kill(os.getpid(), signo)
        return
    for sup in targets:
        sup._on_signal(signo)


def install(sup: Supervisor) -> None:
    """Forwards the handled signals to ``sup`` while it runs, for each signal whose handler
    is the default; does nothing off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return
    # Handlers a supervisor stopped off the main thread could not restore go back first.
    _restore_if_unused()
    _targets.add(sup)
    for sig in HANDLED:
        if sig in _saved:
            continue
        current = signal.getsignal(sig)
        if _is_default(sig, current):
            _saved[sig] = current
            signal.signal(sig, _handler)


def uninstall(sup: Supervisor) -> None:
    """Stops forwarding to ``sup``; the last supervisor to go restores the handlers it
    replaced (from the main thread; elsewhere ours stays and acts as the default would)."""
    _targets.discard(sup)
    if threading.current_thread() is threading.main_thread():
        _restore_if_unused()


def _restore_if_unused() -> None:
    """Restores the handlers ours replaced once no supervisor uses them (main thread only)."""
    if len(_targets) > 0:
        return
    for sig, old in list(_saved.items()):
        # A handler the program set meanwhile stays.
        if signal.getsignal(sig) is _handler:
            signal.signal(sig, old)
        del _saved[sig]


def installed() -> list[int]:
    """The signals whose handler is rcluster's now (for tests and diagnostics)."""
    return [sig for sig in HANDLED if signal.getsignal(sig) is _handler]
