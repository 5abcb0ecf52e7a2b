"""A tiny HTTP/1.1 server on asyncio (standard library only), run as an rcluster cluster.

    python3 examples/python/hello_http.py [--workers 2] [--listen 127.0.0.1:8080] [--dispatch rr]

The same file is the primary and the workers: the primary's default worker command re-runs
this program, and in a worker ``rcluster.is_worker()`` is true. Ctrl-C stops the cluster,
SIGHUP reloads it (every worker replaced, no request lost). Each answer names its worker:
``Hello from worker 0 (pid 1234)``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

import rcluster

# While draining, a kept-alive connection with no request for this long is closed. Closing one
# at once would race its client, which may be sending its next request at that very moment.
IDLE_GRACE = 0.5


class Hello(asyncio.Protocol):
    """Answers every request with a short text; honours keep-alive and `Connection: close`.
    When the worker drains, the next answer on each connection is its last."""

    body = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""
        self.draining = False
        self.received = 0  # data_received calls: activity a drain watches

    def close_when_idle(self) -> None:
        """Called by rcluster.aio when this worker drains."""
        self.draining = True
        self._close_if_quiet(-1)

    def _close_if_quiet(self, seen: int) -> None:
        if self.transport.is_closing():
            return
        if self.received == seen and not self.buf:
            self.transport.close()
            return
        loop = asyncio.get_running_loop()
        loop.call_later(IDLE_GRACE, self._close_if_quiet, self.received)

    def data_received(self, data: bytes) -> None:
        self.received += 1
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, self.buf = self.buf.split(b"\r\n\r\n", 1)
            close = (
                self.draining
                or b"connection: close" in head.lower()
                or head.startswith(b"GET / HTTP/1.0")
            )
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s"
                % (len(self.body), b"Connection: close\r\n" if close else b"", self.body)
            )
            if close:
                self.transport.close()
                return
        if len(self.buf) > 8192:  # no request head is this long
            self.transport.close()


async def worker_main() -> None:
    w = rcluster.worker()
    Hello.body = f"Hello from worker {w.id} (pid {os.getpid()})\n".encode()
    # Serves until the primary asks this worker to leave (a reload, a scale-down, a stop),
    # then lets open connections finish (each one's Hello.close_when_idle is called).
    await rcluster.aio.serve(Hello)


def primary_main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--listen", default="127.0.0.1:8080")
    p.add_argument("--dispatch", default="rr", help="rr, least-conn, sticky or shared")
    args = p.parse_args()
    sup = rcluster.Supervisor(
        workers=args.workers,
        listen=[args.listen],
        dispatch=args.dispatch,
        ready_on="explicit",  # a worker is ready once it serves
        heartbeat_timeout=5.0,  # a worker whose loop hangs is replaced
        kill_timeout=5.0,
    )
    # The host owns signals: this handler runs in the main thread, between two waits.
    signal.signal(signal.SIGHUP, lambda *_: sup.reload())
    try:
        with sup:
            print(f"listening on {sup.listeners}", flush=True)
            for ev in sup.events():
                print(ev, flush=True)
                if ev.kind == "all_down":
                    break
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)


if __name__ == "__main__":
    if rcluster.is_worker():
        asyncio.run(worker_main())
    else:
        primary_main()
