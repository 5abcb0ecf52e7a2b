"""The primary side: :class:`Supervisor` starts workers, dispatches connections, restarts
what crashes and carries messages."""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import os
import pickle
import signal
import sys
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import _rcluster, _signals
from ._util import call_reporting, check_int, check_seconds, check_str
from ._util import json_encode as _json_encode
from .errors import ConfigError, StoppedError

Event = _rcluster.Event
WorkerInfo = _rcluster.WorkerInfo
ExitInfo = _rcluster.ExitInfo


@dataclass(frozen=True)
class RestartPolicy:
    """When and how fast a worker that exited is started again.

    Durations are in seconds; None keeps the default given here.

    - ``mode``: ``"always"`` (default) restarts every exit but a requested one;
      ``"on-failure"`` only a non-zero exit status or a signal; ``"never"`` none.
    - ``backoff_initial``: the delay before the first restart after a failure (0.1 s).
    - ``backoff_multiplier``: each consecutive failure multiplies the delay by this (2.0).
    - ``backoff_max``: the delay never exceeds this (10 s).
    - ``jitter``: random spread of each delay, as a fraction: 0.1 (default) is ±10%.
    - ``min_uptime``: a worker that stayed up this long resets its backoff (5 s).
    - ``max_restarts`` / ``window``: more than ``max_restarts`` restarts (10) of one worker
      slot within ``window`` seconds (60) and the slot is given up (a ``gave_up`` event).
    - ``no_restart_codes``: exit statuses that mean "do not restart me" (a worker that cannot
      boot, say); default none.
    """

    mode: str = "always"  #: ``always``, ``on-failure`` or ``never``
    backoff_initial: float | None = None
    backoff_multiplier: float | None = None
    backoff_max: float | None = None
    jitter: float | None = None
    min_uptime: float | None = None
    max_restarts: int | None = None
    window: float | None = None
    no_restart_codes: Sequence[int] = field(default_factory=tuple)

    def _as_dict(self) -> dict[str, Any]:
        check_str("restart.mode", self.mode)
        d: dict[str, Any] = {"mode": self.mode}
        for name in ("backoff_initial", "backoff_multiplier", "backoff_max", "jitter"):
            d[name] = check_seconds(f"restart.{name}", getattr(self, name), optional=True)
        d["min_uptime"] = check_seconds("restart.min_uptime", self.min_uptime, optional=True)
        d["window"] = check_seconds("restart.window", self.window, optional=True)
        d["max_restarts"] = check_int("restart.max_restarts", self.max_restarts, optional=True)
        codes = list(self.no_restart_codes)
        for c in codes:
            check_int("restart.no_restart_codes[]", c)
        d["no_restart_codes"] = codes
        return d


@dataclass(frozen=True)
class Listener:
    """A socket the primary binds: ``127.0.0.1:8080``, ``[::1]:8080``, ``localhost:8080`` (a
    host name, resolved once at start; one that resolves to several addresses is an error
    naming them: give each as a listener of its own), ``:8080`` (every IPv4 interface) or
    ``unix:/path``. ``dispatch`` (``rr``, ``least-conn``, ``sticky``, ``shared``) defaults to
    the supervisor's; ``name`` to ``listen0``, ``listen1``, …. An address some other socket
    listens on fails ``start()`` naming it, unless ``share`` is true (both then share it
    through ``SO_REUSEPORT``)."""

    addr: str
    name: str | None = None
    dispatch: str | None = None
    share: bool = False


def default_argv() -> list[str]:
    """The command that re-runs this program, as ``cluster.fork()`` does in Node.

    ``sys.orig_argv`` keeps the interpreter's own options and the ``-m module`` / ``-c code``
    form, which ``sys.argv`` loses (there ``-m pkg.mod`` has become the module's file path,
    and running that file directly would break its relative imports).
    """
    if not sys.argv or sys.argv[0] == "" or not sys.executable:
        raise ConfigError(
            "invalid config: argv = None: this is an interactive session, which cannot be "
            "re-run as a worker; pass argv=[...]"
        )
    orig = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return [sys.executable, *orig[1:]]


_log = logging.getLogger("rcluster")
_running: weakref.WeakSet[Supervisor] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    # A program that ends without stopping its cluster still leaves no workers behind (they
    # would die with PR_SET_PDEATHSIG anyway, but without a graceful stop).
    for sup in list(_running):
        try:
            sup.stop()
        except Exception:  # noqa: BLE001 - interpreter exit: nothing left to report to
            pass


class Supervisor:
    """A cluster of worker processes.

    Use it as a context manager: entering starts the workers, leaving (also on an exception)
    stops them and returns once all are reaped::

        with rcluster.Supervisor(workers=4, listen=["127.0.0.1:8080"]) as sup:
            for ev in sup.events():
                print(ev)

    Only one consumer should take events: either :meth:`events`, :meth:`next_event` or
    :meth:`aevents`. An option name this class does not know is a ``TypeError`` naming it.

    Options (durations in seconds, as floats; None keeps the default given here):

    - ``argv``: the worker command, run directly (no shell). Default: re-run this program
      (:func:`default_argv`), whose workers see :func:`rcluster.is_worker` true.
    - ``workers``: number of worker processes, 1..4096 (default: one per CPU this process
      may use, :func:`rcluster.default_workers`, as the ``rcluster`` command, C and Node).
    - ``listen``: sockets the primary binds, as address strings or :class:`Listener`:
      ``"127.0.0.1:8080"``, ``"[::1]:8080"``, ``"localhost:8080"`` (a host name, resolved
      once at start, to one address), ``":8080"`` (every IPv4 interface), ``"unix:/path"``.
      Port 0 picks a free port (see :meth:`address`). Default none.
    - ``dispatch``: how connections of ``listen`` reach workers, unless a :class:`Listener`
      says otherwise: ``"rr"`` (default, round robin), ``"least-conn"``, ``"sticky"`` (by
      client address), handed over by the primary to workers that call
      :func:`rcluster.serve` / :func:`rcluster.aio.serve`; or ``"shared"``: the workers
      inherit the sockets (``LISTEN_FDS``, systemd's convention) and accept themselves.
    - ``restart``: ``"always"`` (default), ``"on-failure"``, ``"never"`` or a
      :class:`RestartPolicy` (backoff, restart limits).
    - ``env``: variables added to the workers' environment (default none); ``cwd``: their
      working directory (default this process's).
    - ``ready_on``: when a worker counts as ready: ``"hello"`` (default: when its rcluster
      library connects), ``"spawn"`` (at once) or ``"explicit"`` (when it calls ``ready()``).
    - ``ready_timeout``: a worker not ready this long after it started is killed (30 s).
    - ``heartbeat_timeout``: a ready worker silent this long is taken for hung and killed
      (default None: never).
    - ``kill_timeout``: grace between SIGTERM and SIGKILL when stopping a worker (10 s).
    - ``max_message``: largest message in bytes, either direction (16 MiB).
    - ``send_queue_limit``: most bytes queued towards one worker before :meth:`send` raises
      (64 MiB, or four ``max_message`` when that is larger).
    - ``event_queue_limit``: most bytes of worker messages waiting for this process to take
      them (4 MiB); beyond, workers that send are not read until it catches up (their
      ``send`` blocks), so memory stays bounded whatever a worker sends.
    - ``output``: the workers' stdout/stderr: ``"inherit"`` (default) or ``"prefix"`` (each
      line prefixed with the worker's id).
    - ``max_inflight``: most connections one worker holds at once; the rest wait in the
      primary (default None: no limit).
    - ``handoff_window``: most connections handed to one worker and not yet acknowledged
      (64).
    - ``queue_limit``: most connections waiting in the primary for a worker; more are closed
      at once (4096). ``queue_timeout``: a connection waiting longer is closed (10 s).
    - ``max_surge``: during :meth:`reload`, most workers started beyond ``workers`` at once
      (1).
    - ``ack_timeout``: a worker that leaves a connection handed to it unacknowledged this long
      is taken for hung: killed (reason ``heartbeat``) and its connections given to other
      workers (5 s; None turns it off).
    - ``max_memory``: a worker whose resident memory exceeds this many bytes is replaced the
      way :meth:`reload` replaces it (the new one ready first; exit reason ``memory``)
      (default None: no limit).
    - ``max_requests``: a worker handed this many connections, plus a random share of
      ``max_requests_jitter`` (0 to that many, drawn per worker, so that workers started
      together are not replaced together), is replaced the same way (exit reason
      ``max_requests``; default None). Connections workers accept themselves (shared mode)
      are not counted (see the operations guide, "Recycling").

    ``name`` and ``control``: the cluster's control socket (``docs/control.md``), through which
    ``rcluster status NAME``, ``rcluster reload NAME`` and the other verbs act on it from a
    shell. ``control``: False (default), True (listen if the socket can be made) or
    ``"required"``. ``name`` defaults to the script's base name.

    ``metrics``: serve ``/metrics`` (Prometheus text), ``/healthz`` and ``/readyz`` over HTTP
    on this address (``"127.0.0.1:9100"``, ``":9100"``, ``"unix:/path"``), from the
    supervisor's loop (default None: no HTTP server). ``ready_min``: fewest ready workers for
    ``/readyz`` to answer 200 (default 1). ``drain_delay``: seconds during which ``/readyz``
    fails before the graceful stop a signal begins (with ``handle_signals``), so that a load
    balancer takes the cluster out of rotation first (default 0).

    ``handle_signals`` (default True): while the cluster runs, SIGINT and SIGTERM stop it
    gracefully (a second one kills the workers now), SIGHUP reloads, SIGTTIN/SIGTTOU add or
    remove a worker — for each of these signals whose handler is the default, when started
    from the main thread; the handlers are restored on stop. The stop a signal begins ends
    :meth:`events` normally, so the program goes on after its loop and ends with status 0
    (Ctrl-C included: no KeyboardInterrupt). False leaves signals to the program.
    """

    def __init__(
        self,
        argv: Sequence[str | bytes | os.PathLike[str]] | None = None,
        *,
        workers: int | None = None,
        listen: Iterable[str | Listener] = (),
        dispatch: str = "rr",
        restart: str | RestartPolicy = "always",
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        ready_on: str | None = None,
        ready_timeout: float | None = None,
        heartbeat_timeout: float | None = None,
        kill_timeout: float | None = None,
        max_message: int | None = None,
        send_queue_limit: int | None = None,
        event_queue_limit: int | None = None,
        output: str | None = None,
        max_inflight: int | None = None,
        handoff_window: int | None = None,
        queue_limit: int | None = None,
        queue_timeout: float | None = None,
        max_surge: int | None = None,
        ack_timeout: float | None = 5.0,
        max_memory: int | None = None,
        max_requests: int | None = None,
        max_requests_jitter: int | None = None,
        handle_signals: bool = True,
        name: str | None = None,
        control: bool | str = False,
        metrics: str | None = None,
        drain_delay: float | None = None,
        ready_min: int | None = None,
    ) -> None:
        self._config = _config(**locals())
        if not isinstance(handle_signals, bool):
            raise TypeError("handle_signals must be True or False")
        self._handle_signals = handle_signals
        self._native: Any = None
        self._callbacks: dict[str, list[Callable[[Event], Any]]] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Supervisor:
        """Validates the options, binds the listeners and starts the workers."""
        if self._native is not None:
            raise StoppedError("this supervisor was started already; create a new one")
        self._native = _rcluster.NativeSupervisor(self._config)
        # Bound straight to the native methods: no Python frame per message.
        self.send = self._native.send  # type: ignore[method-assign]
        self.broadcast = self._native.broadcast  # type: ignore[method-assign]
        _running.add(self)
        if self._handle_signals:
            _signals.install(self)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stops every worker gracefully (SIGKILL after ``timeout`` seconds, default
        ``kill_timeout``) and returns once all are reaped. Calling it again is harmless."""
        if self._native is not None:
            self._native.stop(check_seconds("timeout", timeout, optional=True))
            _running.discard(self)
            _signals.uninstall(self)

    def _on_signal(self, signo: int) -> None:
        # Called by the handler of rcluster._signals: the core decides, the loop acts; this
        # only says what was done. Never raises: an exception here would surface wherever
        # the main thread happened to be.
        try:
            action, detail = self._native.on_signal(signo)
        except Exception as e:  # noqa: BLE001 - reported, and the signal is consumed
            _log.warning("%s refused: %s", signal.Signals(signo).name, e)
            return
        _log.info("%s: %s %s", signal.Signals(signo).name, action, detail)

    def __enter__(self) -> Supervisor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def stopped(self) -> bool:
        """True once the cluster has stopped (or before it started)."""
        return self._native is None or self._native.is_stopped()

    def _require(self) -> Any:
        if self._native is None:
            raise StoppedError(
                "the supervisor is not started: use `with Supervisor(...) as sup:` or start()"
            )
        return self._native

    # -- events ------------------------------------------------------------------------------

    def on(self, kind: str, callback: Callable[[Event], Any]) -> None:
        """Calls ``callback(event)`` for every event of ``kind`` (``"*"``: all) as it is taken
        by :meth:`events`, :meth:`next_event` or :meth:`aevents`. A callback that raises is
        reported on the ``rcluster`` logger and does not stop the loop."""
        self._callbacks.setdefault(check_str("kind", kind) or "", []).append(callback)

    def _dispatch(self, ev: Event) -> Event:
        for key in (ev.kind, "*"):
            for cb in self._callbacks.get(key, ()):
                call_reporting(cb, ev, what=f"callback for {key!r}")
        return ev

    def next_event(self, timeout: float | None = None) -> Event | None:
        """The next event, waiting up to ``timeout`` seconds (forever if None), with the GIL
        released; None on timeout or once the cluster stopped. Ctrl-C interrupts the wait."""
        ev = self._require().next_event(check_seconds("timeout", timeout, optional=True))
        return None if ev is None else self._dispatch(ev)

    def events(self) -> Iterator[Event]:
        """Every event, as it happens, until the cluster stops (a SIGTERM or Ctrl-C handled by
        rcluster stops it, so the loop just ends). With ``handle_signals=False`` Ctrl-C
        raises KeyboardInterrupt from the wait (and ``with`` then stops the cluster)."""
        native = self._require()
        while (ev := native.next_event(None)) is not None:
            yield self._dispatch(ev)

    def wait_for(self, match: str | Callable[[Event], bool], timeout: float = 30.0) -> Event:
        """Takes events until one of kind ``match`` (or for which ``match(ev)`` is true)
        arrives, and returns it; TimeoutError after ``timeout`` seconds."""
        test = (lambda ev: ev.kind == match) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ev = self.next_event(left)
            if ev is not None and test(ev):
                return ev
            if ev is None and self.stopped:
                break
        raise TimeoutError(f"no {match!r} event within {timeout} s")

    async def aevents(self) -> AsyncIterator[Event]:
        """Every event, on the running asyncio loop, until the cluster stops.

        The loop watches the supervisor's event descriptor (``loop.add_reader``) and drains
        the queue when it is readable: no thread, no polling."""
        native = self._require()
        loop = asyncio.get_running_loop()
        fd = native.event_fd()
        readable = asyncio.Event()
        loop.add_reader(fd, readable.set)
        try:
            while True:
                batch = native.drain_events(256)
                for ev in batch:
                    yield self._dispatch(ev)
                if batch:
                    continue
                if native.is_stopped():
                    # The last events may still be on their way into the closing queue: this
                    # wait is short, it ends as soon as the queue is closed.
                    while (ev := native.next_event(0.0)) is not None:
                        yield self._dispatch(ev)
                    return
                readable.clear()
                await readable.wait()
        finally:
            if not loop.is_closed():
                loop.remove_reader(fd)

    # -- messages ----------------------------------------------------------------------------

    def send(self, id: int, data: bytes | str, content_type: str | None = None) -> None:
        """Sends ``data`` to worker ``id``; never blocks. Bytes go as ``raw``, a str as
        ``text`` (UTF-8), unless ``content_type`` (``"raw"``, ``"text"``, ``"json"``,
        ``"v8"``, ``"binding"``) says what the bytes are; the worker reads the type with the
        message, whatever its language. QueueFullError when the worker does not read,
        NoSuchWorkerError when no live worker has the id."""
        self._require().send(id, data, content_type)

    def broadcast(self, data: bytes | str, content_type: str | None = None) -> int:
        """Sends ``data`` (as :meth:`send` does) to every live worker; returns how many it
        was queued for."""
        return self._require().broadcast(data, content_type)

    def send_json(self, id: int, obj: Any) -> None:
        """Sends ``obj`` as JSON (content type ``json``)."""
        self.send(id, _json_encode(obj).encode(), "json")

    def broadcast_json(self, obj: Any) -> int:
        return self.broadcast(_json_encode(obj).encode(), "json")

    def send_pickle(self, id: int, obj: Any) -> None:
        """Pickles ``obj`` and sends it; the receiver must trust this primary."""
        self.send(id, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    # -- control -----------------------------------------------------------------------------

    def workers(self) -> list[WorkerInfo]:
        """A snapshot of every worker process and empty slot."""
        return self._require().workers()

    def stats(self) -> dict[str, Any]:
        """The status object of ``rcluster status --json`` (``docs/control.md``): name, pid,
        generation, and every worker with its state, CPU seconds, RSS, restarts, ..."""
        return json.loads(self._require().status_json())

    def reload(self) -> int:
        """Starts a rolling reload (new workers ready before old ones drain); returns the new
        generation. Progress comes as ``reload_*`` events."""
        return self._require().reload()

    def scale(self, workers: int) -> None:
        """Changes the number of worker slots; removed workers are stopped gracefully."""
        self._require().scale(check_int("workers", workers))

    def kill(self, worker_id: int, signal: int = signal.SIGTERM) -> None:
        """Sends ``signal`` (default SIGTERM) to worker ``worker_id``, as ``os.kill`` would,
        but through the supervisor: the signal reaches the worker while it is unreaped, so a
        reused pid is never hit, and the exit it causes is reported with reason
        ``requested`` (not ``crashed``); the restart policy then applies as to any exit.
        NoSuchWorkerError when no live worker has the id; no SIGKILL follows (see
        :meth:`restart_worker` and :meth:`stop` for that)."""
        self._require().kill(check_int("worker_id", worker_id), check_int("signal", signal))

    def restart_worker(self, id: int) -> None:
        """Stops worker ``id`` gracefully and starts it again."""
        self._require().restart_worker(check_int("id", id))

    @property
    def listeners(self) -> dict[str, str]:
        """Listener name → actual address (with the port the system chose for port 0)."""
        return dict(self._require().listeners())

    def address(self, name: str | None = None) -> tuple[str, int]:
        """``(host, port)`` of a TCP listener (the first one by default), for clients."""
        items = self._require().listeners()
        if not items:
            raise ConfigError("invalid config: listen = []: this supervisor has no listener")
        addr = dict(items)[name] if name is not None else items[0][1]
        host, _, port = addr.rpartition(":")
        return host.strip("[]"), int(port)


def _fs(name: str, value: object) -> bytes:
    if not isinstance(value, str | bytes | os.PathLike):
        raise TypeError(f"{name} must be str, bytes or a path, not {type(value).__name__}")
    return os.fsencode(value)


def _config(**o: Any) -> dict[str, Any]:
    """The options as the plain dict the native constructor takes; types are checked here,
    values (ranges, rules between options) only by the core, whose errors name the field."""
    argv = o["argv"]
    if argv is None:
        argv = default_argv()
    elif isinstance(argv, str | bytes):
        raise TypeError("argv must be a list of arguments, not a single string")
    c: dict[str, Any] = {"argv": [_fs("argv[]", a) for a in argv]}
    c["workers"] = check_int("workers", o["workers"], optional=True)
    env = dict(o["env"] or {})
    if not isinstance(o["env"] or {}, Mapping):
        raise TypeError("env must be a mapping of names to values")
    hb = check_seconds("heartbeat_timeout", o["heartbeat_timeout"], optional=True)
    c["env"] = [(_fs("env key", k), _fs("env value", v)) for k, v in env.items()]
    c["cwd"] = None if o["cwd"] is None else _fs("cwd", o["cwd"])
    c["ready_on"] = check_str("ready_on", o["ready_on"], optional=True)
    c["output"] = check_str("output", o["output"], optional=True)
    c["heartbeat_timeout"] = hb
    c["metrics"] = check_str("metrics", o["metrics"], optional=True)
    for name in ("ready_timeout", "kill_timeout", "queue_timeout", "drain_delay"):
        c[name] = check_seconds(name, o[name], optional=True)
    # None (always passed) turns the bound off; 0 is the core's to refuse.
    c["ack_timeout"] = check_seconds("ack_timeout", o["ack_timeout"], optional=True)
    for name in (
        "max_message",
        "send_queue_limit",
        "event_queue_limit",
        "max_inflight",
        "handoff_window",
        "queue_limit",
        "max_surge",
        "max_memory",
        "max_requests",
        "max_requests_jitter",
        "ready_min",
    ):
        # Ranges (negative numbers included) are the core's, whose errors name the field.
        c[name] = check_int(name, o[name], optional=True)
    restart = o["restart"]
    if isinstance(restart, str):
        restart = RestartPolicy(mode=restart)
    if not isinstance(restart, RestartPolicy):
        raise TypeError("restart must be 'always', 'on-failure', 'never' or a RestartPolicy")
    c["restart"] = restart._as_dict()
    dispatch = check_str("dispatch", o["dispatch"])
    listen = o["listen"]
    if isinstance(listen, str | Listener):
        listen = [listen]
    c["listeners"] = [_listener(i, item, dispatch) for i, item in enumerate(listen)]
    c.update(_control(o["name"], o["control"], o["argv"] is None))
    return c


def _control(name: object, control: object, rerun: bool) -> dict[str, Any]:
    """The control socket options; an unnamed cluster that re-runs this program is named
    after the script, not the interpreter."""
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError(f"invalid config: name = {name!r}: must be a non-empty string")
    if control not in (True, False, "required"):
        raise ConfigError(
            f"invalid config: control = {control!r}: must be True, False or 'required'"
        )
    if name is None and rerun and sys.argv and sys.argv[0]:
        base = os.path.splitext(os.path.basename(sys.argv[0]))[0]
        name = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "_" for ch in base)
        name = name.lstrip(".")[:64] or None
    mode = "required" if control == "required" else "on" if control else "off"
    return {"name": name, "control": mode}


def _listener(i: int, item: object, dispatch: str | None) -> tuple[str | None, str, str, bool]:
    if isinstance(item, str):
        item = Listener(item)
    if not isinstance(item, Listener):
        raise TypeError(f"listen[{i}] must be an address string or a Listener, not {item!r}")
    check_str(f"listen[{i}].addr", item.addr)
    return (
        # None: the core's default name (listen0, listen1, ... by place).
        check_str(f"listen[{i}].name", item.name, optional=True),
        item.addr,
        check_str(f"listen[{i}].dispatch", item.dispatch, optional=True) or dispatch or "rr",
        _check_bool(f"listen[{i}].share", item.share),
    )


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, not {value!r}")
    return value
