"""The test worker: one program, several behaviours chosen by the first argument."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time

import rcluster


def echo() -> None:
    """Blocking: answers each message; `crash` exits 3, `whoami` sends id/generation/pid."""
    w = rcluster.worker()
    w.send_json({"hello": w.id, "generation": w.generation, "pid": os.getpid()})
    for m in w.messages():
        if m == b"crash":
            os._exit(3)
        elif m == b"whoami":
            w.send_json({"id": w.id, "generation": w.generation, "pid": os.getpid()})
        else:
            w.send(b"echo:" + m)


#: v8.serialize({x: 1}) as Node 18+ writes it.
V8_X1 = bytes.fromhex("ff0f6f22017849027b01")


def typed_echo() -> None:
    """Sends one message of each content type (raw ones that start like the tags Node once put
    in its messages), then raw ``done``; then echoes every message with its type and bytes."""
    w = rcluster.worker()
    w.send(b'J{"a":1}')
    w.send(b"V\xff\x0f")
    w.send(b'C{"act":"listening"}')
    w.send("h\u00e9llo \u2713")
    w.send_json({"n": [1, 2]})
    w.send(V8_X1, "v8")
    w.send(b'{"act":"not-known-to-anyone"}', "binding")
    w.send(b"done")
    for ev in w.events():
        if isinstance(ev, rcluster.Message):
            w.send(ev.data, ev.content_type)


def count() -> None:
    """Counts messages until `end`, then answers the count (for the stream benchmark)."""
    w = rcluster.worker()
    n = 0
    for m in w.messages():
        if m == b"end":
            w.send(str(n).encode())
            n = 0
        else:
            n += 1


async def aio_echo() -> None:
    """asyncio: answers each message; `hang` blocks the loop (heartbeats stop), `nap` blocks
    it for 0.3 s (messages pile up in the socket meanwhile)."""
    w = rcluster.worker()
    async for m in rcluster.aio.messages():
        if m == b"hang":
            time.sleep(60)
        if m == b"nap":
            time.sleep(0.3)
        w.send(b"aio:" + m)


def blocking_http() -> None:
    """rcluster.serve with a blocking handler answering one HTTP request per connection."""
    w = rcluster.worker()

    def handle(sock):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                return
            data += chunk
        body = f"blocking worker {w.id}\n".encode()
        sock.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(body), body)
        )

    def on_message(m):
        if m == b"nap":  # blocks the loop for 0.3 s: messages pile up in the socket
            time.sleep(0.3)
        w.send(b"got:" + m)

    rcluster.serve(handle, on_message=on_message)


def blocking_keepalive() -> None:
    """rcluster.serve with a blocking handler that keeps connections alive. While the worker
    drains (``draining``), its next answer says ``Connection: close``, and a connection quiet
    for half a second is closed: closing one at once would fail a request being sent."""
    w = rcluster.worker()
    body = f"blocking worker {w.id}\n".encode()

    def handle(sock):
        sock.settimeout(0.1)  # wakes up to look at w.draining
        data, quiet_since = b"", time.monotonic()
        while True:
            if b"\r\n\r\n" in data:
                _, data = data.split(b"\r\n\r\n", 1)
                last = w.draining
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s"
                    % (len(body), b"Connection: close\r\n" if last else b"", body)
                )
                if last:
                    return
                quiet_since = time.monotonic()
                continue
            if w.draining and not data and time.monotonic() - quiet_since >= 0.5:
                return
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                return
            data += chunk
            quiet_since = time.monotonic()

    rcluster.serve(handle)


async def streams_http() -> None:
    """rcluster.aio.start_server with streams; the message `nap` blocks the loop for 0.3 s."""
    w = rcluster.worker()

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        body = f"streams worker {w.id}\n".encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
            % (len(body), body)
        )
        await writer.drain()
        writer.close()

    def on_message(m):
        if m == b"nap":  # blocks the loop for 0.3 s: clients queue in the socket meanwhile
            time.sleep(0.3)

    server = await rcluster.aio.start_server(handle, on_message=on_message)
    await server.serve_forever()


class SocketInfo(asyncio.Protocol):
    """Answers with what asyncio made of the connection: Nagle off? and the peer address."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):  # the request fits in one read here
        t = self.transport
        nodelay = t.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        host, port = t.get_extra_info("peername")[:2]
        body = f"nodelay={int(bool(nodelay))} peer={host}:{port}\n".encode()
        t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        t.close()


class Shares(asyncio.Protocol):
    """Answers each request with its worker's id; worker 1 spends 3 ms on each (blocking its
    loop, as a request that computes does)."""

    slow = False
    body = b""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):  # the request fits in one read here
        if self.slow:
            time.sleep(0.003)
        t = self.transport
        t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(self.body), self.body))
        t.close()


async def shares_http() -> None:
    w = rcluster.worker()
    Shares.slow = w.id == 1
    Shares.body = f"{w.id}\n".encode()
    await rcluster.aio.serve(Shares)


async def socket_info() -> None:
    await rcluster.aio.serve(SocketInfo)


async def aiohttp_http() -> None:
    """aiohttp's low-level server (a protocol factory) fed by rcluster.aio.serve: a keep-alive
    HTTP/1.1 server that rcluster did not write."""
    from aiohttp import web

    w = rcluster.worker()

    async def handle(request: web.BaseRequest) -> web.Response:
        return web.Response(text=f"aiohttp worker {w.id} {request.method} {request.path}\n")

    await rcluster.aio.serve(web.Server(handle))


if __name__ == "__main__":
    mode = sys.argv[1]
    aio = {
        "aio-echo": aio_echo,
        "streams-http": streams_http,
        "socket-info": socket_info,
        "shares-http": shares_http,
        "aiohttp-http": aiohttp_http,
    }
    if mode in aio:
        asyncio.run(aio[mode]())
    else:
        {
            "echo": echo,
            "typed-echo": typed_echo,
            "count": count,
            "blocking-http": blocking_http,
            "blocking-keepalive": blocking_keepalive,
        }[mode]()
