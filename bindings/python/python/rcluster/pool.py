"""Task pools: :class:`Pool`, a :class:`concurrent.futures.Executor` whose workers are
processes supervised by the rcluster core.

The core owns the queue, the choice of worker, deadlines, cancellation and recycling; this
module pickles tasks, keeps one :class:`~concurrent.futures.Future` per task, and delivers
outcomes to them from one thread that takes them from the core in batches.
"""

from __future__ import annotations

import atexit
import base64
import itertools
import os
import pickle
import signal as _signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future
from functools import partial
from typing import Any

from . import _pool_env, _rcluster
from ._util import check_int, check_seconds, check_str, logger
from .errors import (
    ConfigError,
    PoolBrokenError,
    SerializationError,
    StoppedError,
    TaskTimeoutError,
    WorkerCrashedError,
)
from .supervisor import RestartPolicy

_PICKLE = pickle.HIGHEST_PROTOCOL

#: The delivering thread lingers (seconds) after a wake-up that brought fewer outcomes than
#: this while more tasks are in flight, to take them in one batch.
_LINGER_BELOW = 64
_LINGER = 0.001


class _RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised in a worker (as ``__cause__``)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class _TaskFuture(Future):
    """A Future whose ``cancel()`` also stops a task that is running: the core kills its
    worker (and replaces it), and the future ends cancelled."""

    def __init__(self, native: Any, timeout: float | None) -> None:
        super().__init__()
        self._native = native
        self._task_id = 0
        self._task_timeout = timeout

    def cancel(self) -> bool:
        # The future stays PENDING until its outcome arrives, so the base class cancels it
        # whether the task is queued or running; the core then drops or kills it.
        if not super().cancel():
            return False
        if self._task_id:
            self._native.cancel(self._task_id)
        return True


def _type_name(value: object) -> str:
    t = type(value)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _pickle_task(fn: Callable[..., Any], args: tuple, kwargs: dict) -> bytes:
    try:
        return pickle.dumps((fn, args, kwargs), _PICKLE)
    except Exception as e:
        raise _unpicklable(fn, args, kwargs, e) from e


def _unpicklable(
    fn: Any, args: tuple, kwargs: dict, error: Exception, what: str = "the task"
) -> SerializationError:
    """Names the part of a task (or of the initializer) that does not pickle, and its type."""
    parts: list[tuple[str, Any]] = [("the function", fn)]
    parts += [(f"argument {i}", a) for i, a in enumerate(args)]
    parts += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for where, value in parts:
        try:
            pickle.dumps(value, _PICKLE)
        except Exception as e:
            err = SerializationError(
                f"{where} of {what} is a {_type_name(value)}, which cannot be pickled "
                f"to reach a worker: {e}"
            )
            err.type_name = _type_name(value)
            return err
    return SerializationError(f"{what} cannot be pickled to reach a worker: {error}")


def _process_chunk(fn: Callable[..., Any], chunk: list[tuple]) -> list[Any]:
    """Runs one chunk of :meth:`Pool.map` in a worker."""
    return [fn(*args) for args in chunk]


def _chunks(iterable: Iterable[tuple], n: int) -> Iterator[list[tuple]]:
    it = iter(iterable)
    while chunk := list(itertools.islice(it, n)):
        yield chunk


def _chain(results: Iterator[list[Any]]) -> Iterator[Any]:
    for chunk in results:
        yield from chunk


def _failure(fut: _TaskFuture, status: str, detail: Any) -> BaseException:
    """The exception for an outcome that is not a value ("error", "crashed", ...)."""
    if status == "error":
        try:
            exc, tb = pickle.loads(detail)
        except Exception as e:
            return SerializationError(f"the error a task raised cannot be unpickled here: {e}")
        if tb:
            exc.__cause__ = _RemoteTraceback(tb)
            try:
                exc.remote_traceback = tb
            except Exception:
                pass  # an exception type with __slots__: the cause still carries it
        return exc
    message, code, signo = detail
    if status == "crashed":
        err = WorkerCrashedError(message)
        err.exit_code, err.signal = code, signo
        if signo is not None:
            try:
                err.signal_name = _signal.Signals(signo).name
            except ValueError:
                err.signal_name = None
        return err
    if status == "timeout":
        err = TaskTimeoutError(message)
        err.timeout = fut._task_timeout
        return err
    if status == "no_workers":
        err = PoolBrokenError(message)
        err.why = message
        return err
    return StoppedError(message)


def _settle(fut: _TaskFuture, status: str, detail: Any) -> None:
    if status in ("cancelled", "shutdown"):
        # A task cancelled (by the caller, or by a shutdown with cancel_futures) ends as a
        # cancelled future, as in ProcessPoolExecutor.
        Future.cancel(fut)
        fut.set_running_or_notify_cancel()
        return
    value: Any = None
    exc: BaseException | None = None
    if status == "ok":
        try:
            value = pickle.loads(detail)
        except Exception as e:
            exc = SerializationError(f"a task's result cannot be unpickled here: {e}")
    else:
        exc = _failure(fut, status, detail)
    if not fut.set_running_or_notify_cancel():
        return  # cancelled by the caller before its outcome came
    if exc is None:
        fut.set_result(value)
    else:
        fut.set_exception(exc)


def _settle_reporting(fut: _TaskFuture, status: str, detail: Any) -> None:
    # Whatever goes wrong with one future must not end the thread that settles all of them.
    try:
        _settle(fut, status, detail)
    except Exception:
        logger.exception("rcluster: settling the future of a pool task failed")


class _State:
    """What the delivering thread shares with the pool (not the pool itself, so that a pool
    nobody holds can be collected)."""

    def __init__(self, native: Any) -> None:
        self.native = native
        self.lock = threading.Lock()
        self.futures: dict[int, _TaskFuture] = {}
        # Outcomes that came before their submit registered the future.
        self.early: dict[int, tuple[str, Any]] = {}

    def register(self, tid: int, fut: _TaskFuture) -> None:
        with self.lock:
            early = self.early.pop(tid, None)
            if early is None:
                self.futures[tid] = fut
                return
        _settle(fut, *early)

    def deliver(self) -> None:
        """The delivering thread: waits for outcomes, settles their futures, until the pool
        has ended and every outcome was taken."""
        while True:
            batch = self.native.next_outcomes(None)
            if batch is None:
                break
            if len(batch) < _LINGER_BELOW and len(self.futures) > len(batch):
                # More tasks are in flight: give the submitting threads the GIL for a moment
                # and take what came meanwhile in the same pass. Waking for every outcome of a
                # burst would hand the GIL back and forth per task, which costs more than the
                # tasks themselves; a lone task (nothing else in flight) is delivered at once.
                time.sleep(_LINGER)
                more = self.native.next_outcomes(0)
                if more:
                    batch += more
            settle = []
            with self.lock:
                for tid, status, detail in batch:
                    fut = self.futures.pop(tid, None)
                    if fut is None:
                        self.early[tid] = (status, detail)
                    else:
                        settle.append((fut, status, detail))
            for fut, status, detail in settle:
                _settle_reporting(fut, status, detail)
        with self.lock:
            left = list(self.futures.values())
            self.futures.clear()
        for fut in left:
            _settle(fut, "no_workers", ("the pool stopped without an outcome", None, None))


_live: weakref.WeakSet[Pool] = weakref.WeakSet()

#: True while this process is a pool worker loading the primary's main script.
_booting_worker = False


def _shutdown_all() -> None:
    # As ProcessPoolExecutor does: a program that ends without shutting its pool down still
    # waits for the tasks it submitted, and leaves no workers behind.
    for pool in list(_live):
        try:
            pool.shutdown(wait=True)
        except Exception:
            pass


# Run before the interpreter joins its threads (atexit runs after): the results thread and a
# stopping thread are not daemons, so that none is cut off inside a native call while the
# interpreter finalizes (the thread would be ended with a forced unwind through Rust frames,
# which aborts the process). ProcessPoolExecutor registers the same way.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_shutdown_all)
else:  # pragma: no cover - every supported CPython has it
    atexit.register(_shutdown_all)


def _stop_in_background(native: Any, cancel_queued: bool) -> None:
    threading.Thread(
        target=native.stop, args=(cancel_queued, None), name="rcluster-pool-stop"
    ).start()


def _main_env() -> dict[str, str]:
    """How a worker finds the primary's main module (see ``rcluster._pool_worker``)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = getattr(spec, "name", None)
    if name:
        # Run with ``-m``; ``pkg.__main__`` (``python -m pytest``, say) is not re-imported,
        # as multiprocessing does not.
        if name == "__main__" or name.endswith(".__main__"):
            return {}
        return {_pool_env.MAIN_NAME: name}
    path = getattr(main, "__file__", None)
    if not path or not os.path.exists(path):
        return {}  # an interactive session, ``-c``: nothing to import
    return {_pool_env.MAIN_PATH: os.path.abspath(path)}


class Pool(Executor):
    """A pool of worker processes that run Python callables: a
    :class:`concurrent.futures.Executor`, so ``submit``, ``map``, ``shutdown``, ``with`` and
    ``asyncio``'s ``loop.run_in_executor(pool, fn, *args)`` work as with
    :class:`~concurrent.futures.ProcessPoolExecutor`.

    Callables and values travel with pickle. Functions defined at module level in the main
    script work: each worker imports the script under the name ``__mp_main__`` (its
    ``if __name__ == "__main__":`` block does not run again), as multiprocessing's "spawn"
    does, with the primary's ``sys.path``.

    A task that crashes its worker (``os._exit``, a signal) fails alone with
    :class:`~rcluster.WorkerCrashedError`, naming the exit code or signal; the worker is
    replaced and the pool stays usable. An exception raised by a task is raised again by
    ``Future.result()`` with its type, and the worker's traceback text as ``__cause__`` (and
    ``remote_traceback``). ``Future.cancel()`` works on a running task too: its worker is
    killed and replaced, and the future ends cancelled. (So a future stays pending until its
    task ends: ``Future.running()`` is never true.)

    Options:

    - ``workers``: worker processes (default ``os.cpu_count()``).
    - ``max_queue``: most tasks waiting for a worker (default 100,000); tasks given to
      workers do not count.
    - ``when_full``: what ``submit`` does when ``max_queue`` tasks wait: ``"reject"``
      (default) raises :class:`~rcluster.QueueFullError`; ``"wait"`` blocks the submitting
      thread until there is room. (Done callbacks run on the pool's results thread: one that
      waits there for room holds back every other result meanwhile.)
    - ``task_timeout``: seconds a task may run, from when a worker starts it (default: no
      limit). A task that runs longer fails with :class:`~rcluster.TaskTimeoutError`; its
      worker is killed and replaced. :meth:`run` sets it per task.
    - ``max_tasks_per_worker``: a worker that has run this many tasks is replaced: a spare
      worker starts first, the old one keeps running tasks until the spare is ready, then
      retires, so no task waits for a start-up. Default: workers are kept.
    - ``concurrent_tasks_per_worker``: tasks counted as running on one worker at once
      (default 1). A worker also holds up to ``max_tasks_ahead`` more, sent ahead so that it
      starts the next one without waiting for the primary; those have not started: a crash,
      a timeout or a cancel of the running task does not touch them (they run on another
      worker). A Python worker runs its tasks in turn, so more than 1 only lets answers
      travel in batches, and then a task's timeout counts from when it was counted as
      running, and a crash or a cancel of one task ends the others counted as running on the
      same worker (they fail as crashed).
    - ``max_tasks_ahead``: most tasks sent to a worker ahead of those it runs (default 32;
      fewer when tasks take long; 0: none). Cancelling a task that waits in a worker ends
      its future at once without killing the worker, which is told and drops it; only a
      worker that started it just before it was told runs it (its result is dropped): use 0
      where a cancelled task must never run even then.
    - ``initializer`` / ``initargs``: called in each worker once it has loaded, before it
      takes tasks (pickled). If it raises, the worker reports the traceback and is not
      restarted: the pool's tasks fail with :class:`~rcluster.PoolBrokenError`.
    - ``env``: variables added to the workers' environment; ``cwd``: their directory.
    - ``python``: the interpreter the workers run (default ``sys.executable``).
    - ``kill_timeout``: seconds a stopping worker gets between SIGTERM and SIGKILL.
    - ``max_message``: largest pickled task or result, in bytes (default
      ``rcluster.DEFAULT_MAX_MESSAGE``).
    - ``restart``: a :class:`~rcluster.RestartPolicy` for workers that crash (a crashed
      worker is started again after a backoff).
    """

    def __init__(
        self,
        workers: int | None = None,
        *,
        max_queue: int = 100_000,
        when_full: str = "reject",
        task_timeout: float | None = None,
        max_tasks_per_worker: int | None = None,
        concurrent_tasks_per_worker: int = 1,
        max_tasks_ahead: int = 32,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple = (),
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        python: str | None = None,
        kill_timeout: float | None = None,
        max_message: int | None = None,
        restart: RestartPolicy | None = None,
    ) -> None:
        if _booting_worker:
            # The main script, imported by a pool worker, creates a pool at import time: each
            # worker would start workers of its own, without end.
            raise RuntimeError(
                "rcluster.Pool was created while a pool worker imported the main script: "
                'create pools under `if __name__ == "__main__":` (workers import the main '
                "script as __mp_main__ to find its functions)"
            )
        if workers is None:
            workers = os.cpu_count() or 1
        check_int("workers", workers)
        check_int("max_queue", max_queue)
        check_str("when_full", when_full)
        check_seconds("task_timeout", task_timeout, optional=True)
        check_int("max_tasks_per_worker", max_tasks_per_worker, optional=True)
        check_int("concurrent_tasks_per_worker", concurrent_tasks_per_worker)
        check_int("max_tasks_ahead", max_tasks_ahead)
        if max_queue < 1:
            raise ConfigError(f"invalid config: max_queue = {max_queue}: must be at least 1")
        if restart is not None and not isinstance(restart, RestartPolicy):
            raise TypeError(f"restart must be a RestartPolicy, not {type(restart).__name__}")
        pool_env = dict(env or {})
        pool_env[_pool_env.PATH] = base64.b64encode(pickle.dumps(list(sys.path), _PICKLE)).decode()
        pool_env.update(_main_env())
        if initializer is not None:
            try:
                init = pickle.dumps((initializer, tuple(initargs)), _PICKLE)
            except Exception as e:
                raise _unpicklable(initializer, tuple(initargs), {}, e, "the initializer") from e
            pool_env[_pool_env.INIT] = base64.b64encode(init).decode()
        cluster: dict[str, Any] = {
            "argv": [os.fsencode(python or sys.executable), b"-m", b"rcluster._pool_worker"],
            "workers": workers,
            "env": [(os.fsencode(k), os.fsencode(v)) for k, v in pool_env.items()],
            "cwd": os.fsencode(cwd) if cwd is not None else None,
            "kill_timeout": check_seconds("kill_timeout", kill_timeout, optional=True),
            "max_message": check_int("max_message", max_message, optional=True),
        }
        if restart is not None:
            cluster["restart"] = restart._as_dict()
        options = {
            "concurrent_tasks_per_worker": concurrent_tasks_per_worker,
            "max_tasks_ahead": max_tasks_ahead,
            "max_queue": max_queue,
            "when_full": when_full,
            "task_timeout": None if task_timeout is None else float(task_timeout),
            "max_tasks_per_worker": max_tasks_per_worker,
        }
        self._native = _rcluster.NativePool(cluster, options)
        self._task_timeout = task_timeout
        self._state = _State(self._native)
        self._shutdown_lock = threading.Lock()
        self._shut = False
        self._thread = threading.Thread(target=self._state.deliver, name="rcluster-pool-results")
        self._thread.start()
        _live.add(self)
        # A pool collected without shutdown() still ends: its queued tasks run (their futures
        # may be held elsewhere), then its workers stop.
        self._finalizer = weakref.finalize(self, _stop_in_background, self._native, False)
        self._finalizer.atexit = False  # at exit, _shutdown_all does it, waiting

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedules ``fn(*args, **kwargs)`` in a worker; returns its Future. Raises
        :class:`~rcluster.QueueFullError` when ``max_queue`` tasks wait (``when_full``
        "reject"), :class:`~rcluster.SerializationError` naming what does not pickle,
        :class:`~rcluster.PoolBrokenError` when no worker can run tasks, and RuntimeError
        after :meth:`shutdown`."""
        return self._submit(fn, args, kwargs, self._task_timeout)

    def run(
        self,
        fn: Callable[..., Any],
        args: Iterable[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> Future:
        """As :meth:`submit`, with a ``timeout`` (seconds) for this task that replaces the
        pool's ``task_timeout``."""
        check_seconds("timeout", timeout, optional=True)
        t = self._task_timeout if timeout is None else timeout
        return self._submit(fn, tuple(args), dict(kwargs or {}), t, own=timeout)

    def _submit(
        self, fn: Any, args: tuple, kwargs: dict, t: float | None, own: float | None = None
    ) -> Future:
        if self._shut:
            raise RuntimeError("cannot schedule new futures after shutdown")
        payload = _pickle_task(fn, args, kwargs)
        fut = _TaskFuture(self._native, t)
        tid = self._native.submit(payload, own)
        fut._task_id = tid
        self._state.register(tid, fut)
        return fut

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """As :meth:`concurrent.futures.Executor.map`: results in the order of the inputs.
        ``chunksize`` > 1 sends that many calls as one task (fewer, larger messages: faster
        for many small calls). ``timeout`` bounds the wait for all results, in seconds.
        Every task is submitted before the first result is returned, as in the base class:
        with more tasks than ``max_queue``, use ``when_full="wait"`` or a larger
        ``chunksize``, or a full queue raises :class:`~rcluster.QueueFullError`."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        results = super().map(
            partial(_process_chunk, fn),
            _chunks(zip(*iterables, strict=False), chunksize),
            timeout=timeout,
        )
        return _chain(results)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Takes no more tasks. ``cancel_futures``: tasks still queued are cancelled (their
        futures end cancelled); otherwise they run. ``wait``: returns once every task has
        ended and every worker is reaped; otherwise the pool ends in the background."""
        with self._shutdown_lock:
            self._shut = True
        _live.discard(self)
        self._finalizer.detach()
        if wait:
            self._native.stop(cancel_futures, None)
            self._thread.join()
        else:
            _stop_in_background(self._native, cancel_futures)

    def stats(self) -> dict[str, Any]:
        """Counters of the pool: ``queued``, ``running``, ``completed``, ``failed`` and
        ``failed_<reason>`` (error, crashed, timeout, cancelled, shutdown, no_workers),
        ``retried``, ``requeued`` (tasks that waited in a worker that ended, run on another),
        ``recycled``, ``workers_ready``, and wait / run times in seconds (``wait_total``,
        ``wait_max``, ``run_total``, ``run_max``)."""
        return self._native.stats()

    def outcome_fd(self) -> int:
        """A descriptor readable while outcomes may wait (the core's; for diagnostics)."""
        return self._native.outcome_fd()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)


__all__ = ["Pool"]
