"""The worker side: what a program running under an rcluster primary uses.

``rcluster.worker()`` connects to the primary (once per process) and gives a :class:`Worker`:
its slot ``id`` and ``generation``, messages both ways, readiness, and the client connections
the primary dispatches, as ``socket.socket`` objects. :func:`serve` runs a blocking handler
per connection; :mod:`rcluster.aio` does the same for asyncio.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import pickle
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from . import _rcluster
from ._util import call_reporting
from ._util import json_encode as _json_encode
from .errors import NotAWorkerError

# Events taken from the native layer per call.
_NATIVE_BATCH = 256

logger = logging.getLogger("rcluster")

#: Seconds between heartbeats when the primary does not say (``RCLUSTER_HEARTBEAT_MS``, which
#: the primary sets to a quarter of its ``heartbeat_timeout``).
HEARTBEAT_INTERVAL = 1.0


class Message:
    """A message from the primary: ``data`` (bytes) and ``content_type``, what the primary
    said the bytes are: ``"raw"``, ``"text"`` (UTF-8), ``"json"``, ``"v8"`` (Node's
    ``v8.serialize``) or ``"binding"`` (another binding's bookkeeping, to ignore)."""

    __slots__ = ("data", "content_type")

    def __init__(self, data: bytes, content_type: str = "raw") -> None:
        self.data = data
        self.content_type = content_type

    def text(self) -> str:
        """The payload as text (UTF-8; invalid bytes replaced)."""
        return self.data.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.data)

    def pickle(self) -> Any:
        """Unpickles the payload; only for a primary you trust."""
        return pickle.loads(self.data)

    def __repr__(self) -> str:
        return f"Message({self.data!r}, {self.content_type!r})"


class Disconnect:
    """The primary asks this worker to finish its work and exit."""

    def __repr__(self) -> str:
        return "Disconnect()"


class Connection(socket.socket):
    """A client connection the primary accepted and handed to this worker.

    An ordinary ``socket.socket`` (blocking, as ``accept()`` returns it; asyncio helpers make
    it non-blocking) with three more attributes: ``conn_id``, ``listener`` (the listener's
    name) and ``peer`` (``"IP:port"`` or ``"unix"``). Closing it shuts down the write side
    first: the primary holds a copy of the socket until this worker's acknowledgement is read,
    and a plain close would not end the connection for the client until then.
    """

    conn_id: int = 0
    listener: str = ""
    peer: str = ""
    _rc_on_close: Callable[[Connection], None] | None = None

    @classmethod
    def _adopt(cls, fd: int, conn_id: int, listener: str, peer: str) -> Connection:
        # The family follows from the peer's text form; giving it (and the protocol) saves the
        # three getsockopt calls socket.socket makes to find out, on every connection. The
        # protocol must be right: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on
        # sockets whose `proto` says TCP, as it does for those it accepts itself.
        if peer == "unix":
            family, proto = socket.AF_UNIX, 0
        elif peer.startswith("["):
            family, proto = socket.AF_INET6, socket.IPPROTO_TCP
        else:
            family, proto = socket.AF_INET, socket.IPPROTO_TCP
        sock = cls(family, socket.SOCK_STREAM, proto, fileno=fd)
        sock.conn_id, sock.listener, sock.peer = conn_id, listener, peer
        return sock

    def _peername(self) -> tuple[str, int] | None:
        """The peer address as ``getpeername()`` gives it, from ``peer`` and without the
        system call; None where the text does not carry all of it (IPv6 flow and scope) or
        there is none (a connection this worker accepted from a shared socket)."""
        if self.family != socket.AF_INET or not self.peer:
            return None
        host, _, port = self.peer.rpartition(":")
        return (host, int(port))

    def close(self) -> None:
        on_close, self._rc_on_close = self._rc_on_close, None
        if on_close is not None and self.fileno() != -1:
            try:
                self.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the client is gone already
        super().close()
        if on_close is not None:
            on_close(self)


class Worker:
    """This process's link to its primary. Get it with :func:`rcluster.worker`."""

    def __init__(self, native: Any) -> None:
        self._native = native
        self.exit_on_primary_loss = True
        # The primary says how often (a quarter of its heartbeat timeout) when it checks
        # heartbeats; the core reads what it said. Otherwise the loops below still wake this
        # often.
        self.heartbeat_interval: float = native.heartbeat_interval or HEARTBEAT_INTERVAL
        self._last_beat = time.monotonic()
        self._closed_hook = self._connection_closed
        self.aio_link: Any = None  # set by rcluster.aio
        #: True once the primary has asked this worker to leave (or is gone): a handler that
        #: serves several requests on one connection should answer the next one as the last
        #: (HTTP: ``Connection: close``), and close a connection that stays quiet.
        self.draining = False

    @property
    def id(self) -> int:
        """Stable slot id, 0-based."""
        return self._native.id

    @property
    def generation(self) -> int:
        """1 at start, +1 on every reload."""
        return self._native.generation

    @property
    def max_message(self) -> int:
        return self._native.max_message

    def fileno(self) -> int:
        """The link's descriptor: readable when events may be waiting."""
        return self._native.fileno()

    def ready(self) -> None:
        """Tells the primary this worker is ready for work (``ready_on="explicit"``)."""
        self._native.ready()

    def heartbeat(self) -> None:
        """A sign of life; :meth:`events`, :func:`serve` and :mod:`rcluster.aio` send them."""
        self._native.heartbeat()
        self._last_beat = time.monotonic()

    def send(self, data: bytes | str, content_type: str | None = None) -> None:
        """Sends ``data`` to the primary (blocks, GIL released, while the socket is full):
        bytes as ``raw``, a str as ``text`` (UTF-8), unless ``content_type`` (``"raw"``,
        ``"text"``, ``"json"``, ``"v8"``, ``"binding"``) says what the bytes are."""
        self._native.send(data, content_type)

    def send_json(self, obj: Any) -> None:
        """Sends ``obj`` as JSON (content type ``json``)."""
        self._native.send(_json_encode(obj).encode(), "json")

    def send_pickle(self, obj: Any) -> None:
        self._native.send(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))

    def disconnect(self) -> None:
        """Tells the primary this worker is leaving on its own."""
        self._native.disconnect()

    def _connection_closed(self, sock: Connection) -> None:
        try:
            self._native.connection_closed(sock.conn_id)
        except Exception:  # the primary is gone: nothing to report to
            pass

    def _convert(self, kind: str, payload: Any) -> Message | Connection | Disconnect:
        if kind == "message":
            return Message(*payload)
        if kind == "connection":
            sock = Connection._adopt(*payload)
            sock._rc_on_close = self._closed_hook
            return sock
        if kind == "disconnect":
            self.draining = True
            return Disconnect()
        # primary_gone
        self.draining = True
        if self.exit_on_primary_loss:
            raise SystemExit(0)
        raise NotAWorkerError("the primary is gone")

    def _beat_if_due(self) -> None:
        if time.monotonic() - self._last_beat >= self.heartbeat_interval:
            self.heartbeat()

    def _waiting(self) -> Iterator[tuple[str, Any]]:
        """Every event that waits now, as native ``(kind, payload)`` pairs, without blocking:
        batch after batch until one is not full, since frames read ahead in one read wait in
        memory, where no readable descriptor announces them."""
        while True:
            batch = self._native.next_events(0.0, _NATIVE_BATCH)
            yield from batch
            if len(batch) < _NATIVE_BATCH:
                return

    def next_events(self, timeout: float | None = None) -> list[Message | Connection | Disconnect]:
        """What arrived, waiting up to ``timeout`` seconds (forever if None) for the first
        event; empty on timeout. Ctrl-C interrupts the wait."""
        return [self._convert(k, p) for k, p in self._native.next_events(timeout)]

    def events(self) -> Iterator[Message | Connection | Disconnect]:
        """Every event until the primary says :class:`Disconnect` (yielded last). Heartbeats
        are sent from this loop, so a handler that hangs is noticed by the primary.
        When the primary is gone the process exits (SystemExit(0))."""
        native = self._native
        while True:
            self._beat_if_due()
            for kind, payload in native.next_events(self.heartbeat_interval):
                ev = self._convert(kind, payload)
                yield ev
                if isinstance(ev, Disconnect):
                    return

    def messages(self) -> Iterator[bytes]:
        """The payload of every user message until the primary says disconnect (``binding``
        messages, another binding's bookkeeping, are skipped). For workers that take no
        connections: one that arrives here is closed (and logged)."""
        native = self._native
        while True:
            self._beat_if_due()
            for kind, payload in native.next_events(self.heartbeat_interval):
                if kind == "message":
                    if payload[1] != "binding":
                        yield payload[0]
                    continue
                ev = self._convert(kind, payload)
                if isinstance(ev, Disconnect):
                    return
                logger.warning("rcluster: messages() got a connection; closing it")
                ev.close()


_worker: Worker | None = None
_lock = threading.Lock()


def is_worker() -> bool:
    """True in a process started by an rcluster primary (not in that process's children)."""
    if _worker is not None:
        return True
    return bool(os.environ.get("RCLUSTER_IPC_FD")) and os.environ.get("RCLUSTER_PID") == str(
        os.getpid()
    )


def worker() -> Worker:
    """This process's :class:`Worker`, connecting to the primary on the first call.
    NotAWorkerError when the process was not started by an rcluster primary."""
    global _worker
    with _lock:
        if _worker is None:
            native = _rcluster.NativeWorker.from_env()
            if native is None:
                raise NotAWorkerError(
                    "not an rcluster worker: this process was not started by an rcluster "
                    "primary (RCLUSTER_IPC_FD is not set for it); check rcluster.is_worker()"
                )
            _worker = Worker(native)
        return _worker


def inherited_listeners() -> list[tuple[str, socket.socket]]:
    """Listening sockets inherited in ``shared`` mode (``LISTEN_FDS``, the systemd
    convention), as ``(name, socket)``. Taken once: later calls return an empty list."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    # Taken once: a second taker (or this process's children) must not adopt them again.
    for var in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(var, None)
    out = []
    for i in range(count):
        name = names[i] if i < len(names) else f"listen{i}"
        out.append((name, socket.socket(fileno=3 + i)))
    return out


# Most connections a leaving worker takes from its own listening socket before closing it.
_MAX_QUEUED_ACCEPTS = 65536


def serve(
    handler: Callable[[socket.socket], Any],
    *,
    max_threads: int = 64,
    on_message: Callable[[bytes], Any] | None = None,
    ready: bool = True,
    drain_timeout: float = 5.0,
) -> None:
    """Runs a blocking worker: ``handler(sock)`` for every client connection, each in a thread
    of a pool (the socket is closed after the handler returns). Connections come from the
    primary, or from the inherited socket in ``shared`` mode. Returns when the primary asks
    the worker to leave, after the running handlers finish (``drain_timeout`` seconds at
    most). Heartbeats go from the calling thread's loop."""
    w = worker()
    pool = concurrent.futures.ThreadPoolExecutor(max_threads, thread_name_prefix="rcluster")
    running: set[concurrent.futures.Future[None]] = set()

    def run(sock: socket.socket) -> None:
        with sock:
            call_reporting(handler, sock, what="connection handler")

    def start(sock: socket.socket) -> None:
        fut = pool.submit(run, sock)
        running.add(fut)
        fut.add_done_callback(running.discard)

    sel = selectors.DefaultSelector()
    sel.register(w.fileno(), selectors.EVENT_READ, None)
    listeners = inherited_listeners()
    for _, lsock in listeners:
        lsock.setblocking(False)
        sel.register(lsock, selectors.EVENT_READ, lsock)
    if ready:
        w.ready()
    try:
        leaving = False
        while not leaving:
            w._beat_if_due()
            for key, _ in sel.select(w.heartbeat_interval):
                if key.data is not None:
                    try:
                        sock, _ = key.data.accept()
                    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                        continue
                    sock.setblocking(True)
                    start(sock)
                    continue
                for kind, payload in w._waiting():
                    ev = w._convert(kind, payload)
                    if isinstance(ev, Connection):
                        start(ev)
                    elif isinstance(ev, Message):
                        if on_message is not None and ev.content_type != "binding":
                            call_reporting(on_message, ev.data, what="on_message")
                    else:
                        leaving = True
                        break
    finally:
        sel.close()
        for _, lsock in listeners:
            # The kernel accepted what is queued for its clients, and closing the socket would
            # reset it; by now the primary keeps new connections out (bounded all the same).
            for _ in range(_MAX_QUEUED_ACCEPTS):
                try:
                    sock, _ = lsock.accept()
                except (InterruptedError, ConnectionAbortedError):
                    continue
                except OSError:  # BlockingIOError: nothing left
                    break
                sock.setblocking(True)
                start(sock)
            lsock.close()
        concurrent.futures.wait(list(running), timeout=drain_timeout)
        pool.shutdown(wait=False, cancel_futures=True)
