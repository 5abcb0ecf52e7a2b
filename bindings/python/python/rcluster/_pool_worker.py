"""The worker side of :class:`rcluster.Pool`: run as ``python -m rcluster._pool_worker``.

It loads what the primary's tasks need (its ``sys.path``, its main script under the name
``__mp_main__`` so that the script's ``if __name__ == "__main__":`` block does not run again,
as multiprocessing's "spawn" does; the pool's initializer), says it is ready, then takes the
tasks waiting on its link in batches, runs them in turn and answers each batch with one write.
The primary sends a few tasks ahead of the ones it counts as running
(``RCLUSTER_TASK_CONCURRENCY``), and starts the deadline of such a task when the answer
before it arrives: so an answer held counts as a running task, and the answers held are
written before a task starts when they make that many (docs/protocol.md 5.8). A task the pool
cancelled while it waited here is dropped, never run nor answered.
When loading fails it tells the primary why, with the traceback, and exits with
``BOOT_FAILED_EXIT``: the pool then fails its tasks with that text instead of restarting the
worker in a loop.
"""

from __future__ import annotations

import base64
import os
import pickle
import runpy
import sys
import time
import traceback
import types
from collections import deque
from typing import Any

from rcluster._pool_env import INIT as ENV_INIT
from rcluster._pool_env import MAIN_NAME as ENV_MAIN_NAME
from rcluster._pool_env import MAIN_PATH as ENV_MAIN_PATH
from rcluster._pool_env import PATH as ENV_PATH
from rcluster._rcluster import CONTENT_PICKLE

#: Tasks taken from the link per read at most.
BATCH = 256
#: A task that ran longer than this (seconds) has its answer sent at once.
FLUSH_AFTER = 0.002
#: A task held longer than this (seconds) while others ran starts only after the link was
#: read again: a cancel of it that arrived meanwhile drops it (docs/protocol.md 5.8).
LOOK_AFTER = 0.001


def _fixup_main() -> None:
    """Makes the primary's main module importable as ``__main__`` here, so that functions
    pickled by reference from the primary's ``__main__`` resolve, without running its main
    block (its ``__name__`` is ``__mp_main__``)."""
    name = os.environ.get(ENV_MAIN_NAME)
    path = os.environ.get(ENV_MAIN_PATH)
    if not name and not path:
        return
    main = types.ModuleType("__mp_main__")
    # Registered first: the script may import itself (or pickle refers to it) while it runs.
    sys.modules["__main__"] = sys.modules["__mp_main__"] = main
    if name:
        code = runpy.run_module(name, run_name="__mp_main__", alter_sys=True)
    else:
        main.__file__ = path
        code = runpy.run_path(path, run_name="__mp_main__")
    main.__dict__.update(code)


def _boot() -> None:
    path = os.environ.get(ENV_PATH)
    if path:
        sys.path[:] = pickle.loads(base64.b64decode(path))
    from rcluster import pool

    pool._booting_worker = True
    try:
        _fixup_main()
    finally:
        pool._booting_worker = False
    init = os.environ.get(ENV_INIT)
    if init:
        fn, args = pickle.loads(base64.b64decode(init))
        fn(*args)


def _type_name(value: object) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _error(exc: BaseException) -> bytes:
    """The pickled ``(exception, traceback text)`` of what a task raised. An exception that
    does not pickle travels as a SerializationError that names it and keeps its text."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        return pickle.dumps((exc, tb), pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        from rcluster.errors import SerializationError

        err = SerializationError(
            f"the task raised {_type_name(exc)}: {exc}, which cannot be pickled ({e})"
        )
        err.type_name = _type_name(exc)
        return pickle.dumps((err, tb), pickle.HIGHEST_PROTOCOL)


def _run(payload: bytes) -> tuple[bool, bytes]:
    try:
        fn, args, kwargs = pickle.loads(payload)
        value = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - everything a task raises goes back
        return False, _error(exc)
    try:
        return True, pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
    except Exception as e:
        from rcluster.errors import SerializationError

        err = SerializationError(
            f"the result of {getattr(fn, '__qualname__', fn)!s} is a {_type_name(value)}, "
            f"which cannot be pickled: {e}"
        )
        err.type_name = _type_name(value)
        return False, pickle.dumps((err, ""), pickle.HIGHEST_PROTOCOL)


def _wrong_content(content: int) -> bytes:
    err = TypeError(f"a Python pool worker reads pickled tasks only, not content type {content}")
    return pickle.dumps((err, ""), pickle.HIGHEST_PROTOCOL)


def _drop(held: deque[tuple[str, Any]], tid: int) -> None:
    """Drops task ``tid`` if it waits in ``held``: a cancelled task never runs."""
    for i, (kind, item) in enumerate(held):
        if kind == "task" and item[0] == tid:
            del held[i]
            return


def _serve(w: Any) -> None:
    # A primary that does not say counts every task it sent as running.
    concurrency = int(os.environ.get("RCLUSTER_TASK_CONCURRENCY") or 0) or sys.maxsize
    held: deque[tuple[str, Any]] = deque()
    while True:
        held.extend(w.next_events(None, BATCH))
        answers = []
        since = looked = time.monotonic()
        while held:
            kind, item = held.popleft()
            if kind == "task":
                if len(answers) >= concurrency:
                    w.answer_many(answers)
                    answers = []
                tid, content, payload = item
                if content == CONTENT_PICKLE:
                    ok, data = _run(payload)
                else:
                    ok, data = False, _wrong_content(content)
                answers.append((tid, ok, data))
                # Answers wait for the rest of the batch only while tasks are quick: the
                # answer of a task that took long goes at once, as do those before it.
                now = time.monotonic()
                if now - since > FLUSH_AFTER:
                    w.answer_many(answers)
                    answers = []
                since = now
                # The tasks held waited while this one ran: a cancel may have come for them.
                if held and now - looked >= LOOK_AFTER:
                    for ev in w.poll_events(BATCH):
                        if ev[0] == "cancel":
                            _drop(held, ev[1])
                        else:
                            held.append(ev)
                    looked = time.monotonic()
            elif kind == "cancel":
                _drop(held, item)
            elif kind in ("disconnect", "primary_gone"):
                if answers:
                    w.answer_many(answers)
                return
        if answers:
            w.answer_many(answers)


def main() -> None:
    from rcluster._rcluster import BOOT_FAILED_EXIT, NativeWorker

    w = NativeWorker.from_env()
    if w is None:
        sys.exit("rcluster._pool_worker: not started by an rcluster pool (no RCLUSTER_* env)")
    try:
        _boot()
    except BaseException as exc:  # noqa: BLE001 - whatever stops loading is reported
        why = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            w.boot_failed(why)
        finally:
            sys.stderr.flush()
            os._exit(BOOT_FAILED_EXIT)
    w.ready()
    _serve(w)


if __name__ == "__main__":
    main()
