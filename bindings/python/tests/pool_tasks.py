"""Functions the pool tests run in workers (importable there through the primary's sys.path)."""

from __future__ import annotations

import os
import signal
import threading
import time


class TaskFailed(Exception):
    """Raised by `fail`, to check that the type survives the trip."""


def set_env(name: str, value: str) -> None:
    os.environ[name] = value


def getenv(name: str):
    return os.environ.get(name)


def echo(x):
    return x


def add(a, b=0):
    return a + b


def sleep_then(seconds: float, value):
    time.sleep(seconds)
    return value


def pid(_=None) -> int:
    time.sleep(0.002)
    return os.getpid()


def fail(message: str):
    raise TaskFailed(message)


def exit_process(code: int):
    os._exit(code)


def segfault():
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(10)


def spin(seconds: float) -> str:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "spun"


def spin_marked(path: str, seconds: float) -> str:
    """Spins after writing when it started (CLOCK_MONOTONIC, the same in every process)."""
    with open(path, "w") as f:
        f.write(repr(time.monotonic()))
    return spin(seconds)


def unpicklable_result():
    return threading.Lock()


def raise_unpicklable():
    class Local(Exception):
        pass

    raise Local("a local exception class")


def touch(path: str) -> str:
    """Creates the file at ``path``: a side effect to look for."""
    with open(path, "w"):
        pass
    return path
