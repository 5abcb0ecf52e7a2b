"""asyncio integration of the worker side.

``await rcluster.aio.serve(protocol_factory)`` runs any asyncio protocol server (for example
``aiohttp.web.Server``) as an rcluster worker: connections the primary dispatches are handed
to ``loop.connect_accepted_socket``; in ``shared`` mode the worker accepts from the inherited
listening sockets itself, one connection each time one is readable, keeping level with the
other workers through the listener's share map (so that a slow worker still gets its share,
and no connection waits behind others in a busy worker while another sits idle). The worker's
link and the shared sockets are watched with ``loop.add_reader`` (no thread), and heartbeats
are sent by the loop itself, so a loop that hangs stops them and the primary (with
``heartbeat_timeout``) replaces the worker.

When the worker drains (a reload, a scale-down, a stop), every open connection's protocol that
has a ``close_when_idle()`` method is told so, once: an HTTP/1 protocol should then finish the
request in hand, answer the next one with ``Connection: close`` and close after it, and close
a connection outright only once it has been quiet for a moment (half a second, say). Closing
an idle keep-alive connection at once races its client, which may be sending its next request
at that very moment and would see the connection fail. Protocols without the method are left
to finish on their own (``drain_timeout``).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from . import _rcluster
from ._util import call_reporting, logger
from .worker import _MAX_QUEUED_ACCEPTS, Connection, Worker, inherited_listeners, worker

_DISCONNECT = object()

# Seconds a worker stops watching a shared socket after a failed accept (EMFILE and the like:
# the connections wait in the socket, or for another worker, instead of the loop spinning on a
# socket it cannot take from). One that leaves the next connection to the others stops for
# _rcluster.ACCEPT_DEFER_SECONDS.
_ACCEPT_PAUSE = 0.1
_PAUSE_ON = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class _Link:
    """The worker's link on one event loop: reads it, beats, and routes what arrives."""

    def __init__(self, w: Worker, loop: asyncio.AbstractEventLoop) -> None:
        self.w, self.loop = w, loop
        self.servers: list[WorkerServer] = []
        self.on_message: list[Callable[[bytes], Any]] = []
        self.queues: set[asyncio.Queue[Any]] = set()
        self.disconnected = asyncio.Event()
        self.primary_gone = False
        loop.add_reader(w.fileno(), self._readable)
        self._beat()

    def _beat(self) -> None:
        try:
            self.w.heartbeat()
        except Exception as e:  # the link is broken: the reader will see it too
            logger.debug("rcluster: heartbeat failed: %s", e)
            return
        self._timer = self.loop.call_later(self.w.heartbeat_interval, self._beat)

    def _readable(self) -> None:
        events = self.w._waiting()
        while not self.disconnected.is_set():
            try:
                kind, payload = next(events)
            except StopIteration:
                return
            except Exception as e:
                self.loop.call_exception_handler(
                    {"message": "rcluster: reading from the primary failed", "exception": e}
                )
                self._leave(gone=True)
                return
            if kind == "message":
                data, content_type = payload
                if content_type == "binding":  # another binding's bookkeeping
                    continue
                for cb in self.on_message:
                    call_reporting(cb, data, what="on_message")
                for q in self.queues:
                    q.put_nowait(data)
            elif kind == "connection":
                self._route(Connection._adopt(*payload))
            else:
                self._leave(gone=kind == "primary_gone")

    def _route(self, sock: Connection) -> None:
        sock._rc_on_close = self.w._closed_hook
        for server in self.servers:
            if server._takes(sock.listener):
                server._connection(sock)
                return
        logger.warning(
            "rcluster: no server for a connection from listener %r; closing it", sock.listener
        )
        sock.close()

    def _leave(self, gone: bool) -> None:
        self.primary_gone = self.primary_gone or gone
        self.w.draining = True
        if not self.disconnected.is_set():
            self.disconnected.set()
            self.loop.remove_reader(self.w.fileno())
            self._timer.cancel()
            for q in self.queues:
                q.put_nowait(_DISCONNECT)


def _link(w: Worker) -> _Link:
    loop = asyncio.get_running_loop()
    if w.aio_link is None or w.aio_link.loop is not loop:
        w.aio_link = _Link(w, loop)
    return w.aio_link


class WorkerServer:
    """Serves connections dispatched to this worker (like ``asyncio.Server``)."""

    def __init__(
        self,
        link: _Link,
        factory: Callable[[], asyncio.BaseProtocol],
        listener: str | None,
        drain_timeout: float,
    ) -> None:
        self._link, self._factory, self._listener = link, factory, listener
        self._drain_timeout = drain_timeout
        self._open = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = asyncio.Event()
        self._shared: list[_SharedSocket] = []
        # The protocols of open connections, told when the server drains (close_when_idle).
        self._protocols: weakref.WeakSet[asyncio.BaseProtocol] = weakref.WeakSet()

    def _make(self) -> asyncio.BaseProtocol:
        protocol = self._factory()
        try:
            self._protocols.add(protocol)
        except TypeError:  # not weak-referenceable: it gets no drain notice
            pass
        return protocol

    def _takes(self, listener: str) -> bool:
        return not self._closed.is_set() and self._listener in (None, listener)

    def _connection(self, sock: Connection) -> None:
        self._open += 1
        self._idle.clear()
        inner = sock._rc_on_close

        def closed(s: Connection) -> None:
            self._open -= 1
            if self._open == 0:
                self._idle.set()
            if inner is not None:
                inner(s)

        sock._rc_on_close = closed
        loop = self._link.loop
        make = getattr(loop, "_make_socket_transport", None)
        if make is None:
            # Other loops (uvloop, …): the public way, a task per connection.
            task = loop.create_task(loop.connect_accepted_socket(self._make, sock))
            task.add_done_callback(lambda t: self._started(t, sock))
            return
        # The selector loops' own accept path, without its task and future per connection:
        # what `connect_accepted_socket` does, done synchronously (the socket is connected).
        try:
            sock.setblocking(False)
            peername = sock._peername()
            extra = None if peername is None else {"peername": peername}
            make(sock, self._make(), None, extra=extra)
        except Exception as e:
            sock.close()
            self._report(e)

    def _started(self, task: asyncio.Task[Any], sock: Connection) -> None:
        if task.cancelled() or task.exception() is None:
            return
        sock.close()
        self._report(task.exception())

    def _report(self, e: BaseException | None) -> None:
        self._link.loop.call_exception_handler(
            {"message": "rcluster: could not serve a connection", "exception": e}
        )

    async def _start_shared(self, socks: list[tuple[str, socket.socket]]) -> None:
        link = self._link
        for name, sock in socks:
            if self._listener in (None, name):
                self._shared.append(_SharedSocket(self, name, sock))
            else:
                sock.close()
        if self._shared:
            # Asking the primary for the listeners read what else it sent meanwhile into
            # memory, where no readable descriptor announces it.
            link.loop.call_soon(link._readable)

    def close(self) -> None:
        """Stops taking new connections; the open ones carry on, and their protocols'
        ``close_when_idle()`` is called (see the module's documentation)."""
        if self._closed.is_set():
            return
        self._closed.set()
        told = list(self._protocols)
        self._close_when_idle(told)
        # Connections waiting in a shared socket were accepted by the kernel for their
        # clients: closing the socket would reset them, so they are taken first.
        for s in self._shared:
            s.close()
        late = [p for p in self._protocols if p not in told]
        if late:  # told once their connection_made has run
            self._link.loop.call_soon(self._close_when_idle, late)
        if self in self._link.servers:
            self._link.servers.remove(self)

    @staticmethod
    def _close_when_idle(protocols: list[asyncio.BaseProtocol]) -> None:
        for protocol in protocols:
            hook = getattr(protocol, "close_when_idle", None)
            if callable(hook):
                call_reporting(hook, what="close_when_idle")

    async def wait_closed(self) -> None:
        """Waits until the server is closed and its connections finished (``drain_timeout``
        seconds at most)."""
        await self._closed.wait()
        try:
            await asyncio.wait_for(self._finished(), self._drain_timeout)
        except asyncio.TimeoutError:
            logger.warning("rcluster: %d connection(s) still open after drain", self._open)

    async def _finished(self) -> None:
        await self._idle.wait()

    async def serve_forever(self) -> None:
        """Serves until the primary asks this worker to leave, then drains and returns.
        When the primary is gone, raises SystemExit(0) (the process should exit)."""
        closed = asyncio.ensure_future(self._closed.wait())
        gone = asyncio.ensure_future(self._link.disconnected.wait())
        try:
            await asyncio.wait({closed, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            gone.cancel()
        self.close()
        await self.wait_closed()
        if self._link.primary_gone and self._link.w.exit_on_primary_loss:
            raise SystemExit(0)

    @property
    def worker(self) -> Worker:
        return self._link.w

    async def __aenter__(self) -> WorkerServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


class _SharedSocket:
    """A ``shared`` listening socket, accepted from once each time it is readable (the
    native SharedAcceptor decides whether this worker takes the connection now). Its
    connections are the server's, as the ones the primary hands over."""

    def __init__(self, server: WorkerServer, name: str, sock: socket.socket) -> None:
        self._server, self._name = server, name
        self._loop = server._link.loop
        self._family, self._proto = sock.family, sock.proto
        self._acceptor = _rcluster.SharedAcceptor(server._link.w._native, name, sock.detach())
        self._fd = self._acceptor.fileno()
        self._timer: asyncio.TimerHandle | None = None
        self._open = True
        self._loop.add_reader(self._fd, self._readable)

    def _readable(self) -> None:
        try:
            fd = self._acceptor.next()
        except OSError as e:
            if e.errno not in _PAUSE_ON:
                self._loop.call_exception_handler(
                    {
                        "message": f"rcluster: accepting on listener {self._name!r} failed",
                        "exception": e,
                    }
                )
            self._pause(_ACCEPT_PAUSE)
            return
        if fd is None:  # another worker took it first
            return
        if fd == _rcluster.ACCEPT_DEFERRED:
            self._pause(_rcluster.ACCEPT_DEFER_SECONDS)
            return
        self._serve(fd)

    def _serve(self, fd: int) -> None:
        sock = Connection(self._family, socket.SOCK_STREAM, self._proto, fileno=fd)
        sock.listener = self._name
        self._server._connection(sock)

    def _pause(self, seconds: float) -> None:
        if not self._open or self._timer is not None:
            return
        self._loop.remove_reader(self._fd)
        self._timer = self._loop.call_later(seconds, self._resume)

    def _resume(self) -> None:
        self._timer = None
        if self._open:
            self._loop.add_reader(self._fd, self._readable)

    def close(self) -> None:
        """Takes what waits in the socket (bounded), then closes it."""
        if not self._open:
            return
        self._open = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop.remove_reader(self._fd)
        for _ in range(_MAX_QUEUED_ACCEPTS):
            try:
                fd = self._acceptor.next()
            except OSError:
                break
            if fd is None:
                break
            if fd != _rcluster.ACCEPT_DEFERRED:  # 16 in a row at most, then it takes
                self._serve(fd)
        self._acceptor.close()


async def create_server(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    *,
    listener: str | None = None,
    ready: bool = True,
    on_message: Callable[[bytes], Any] | None = None,
    drain_timeout: float = 5.0,
) -> WorkerServer:
    """Starts serving connections with ``protocol_factory`` and returns the server.

    ``listener``: only connections from the listener of that name (default: all).
    ``ready``: tell the primary this worker is ready once serving (for ``ready_on="explicit"``).
    ``on_message``: called with each message's bytes (an exception is logged, not fatal).
    """
    w = worker()
    link = _link(w)
    server = WorkerServer(link, protocol_factory, listener, drain_timeout)
    link.servers.append(server)
    if on_message is not None:
        link.on_message.append(on_message)
    await server._start_shared(inherited_listeners())
    if ready:
        w.ready()
    return server


async def serve(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    **options: Any,
) -> None:
    """Serves connections with ``protocol_factory`` until the primary asks this worker to
    leave, then lets open connections finish (``drain_timeout``) and returns. Options as for
    :func:`create_server`."""
    server = await create_server(protocol_factory, **options)
    await server.serve_forever()


async def start_server(
    client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
    *,
    limit: int = 2**16,
    **options: Any,
) -> WorkerServer:
    """Like ``asyncio.start_server``: ``client_connected_cb(reader, writer)`` (a function or a
    coroutine function) for every connection. Returns the server; ``await
    server.serve_forever()`` runs it. Options as for :func:`create_server`."""
    loop = asyncio.get_running_loop()

    def factory() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected_cb, loop=loop)

    return await create_server(factory, **options)


async def messages() -> AsyncIterator[bytes]:
    """Every message from the primary, on the running loop, until it asks this worker to
    leave."""
    link = _link(worker())
    queue: asyncio.Queue[Any] = asyncio.Queue()
    link.queues.add(queue)
    try:
        while not link.disconnected.is_set() or not queue.empty():
            item = await queue.get()
            if item is _DISCONNECT:
                return
            yield item
    finally:
        link.queues.discard(queue)


__all__ = ["WorkerServer", "create_server", "serve", "start_server", "messages"]
