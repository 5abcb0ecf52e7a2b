"""Keep-alive clients across rolling reloads: a draining asyncio worker finishes the request in
hand, answers the next one with ``Connection: close`` and closes only connections that stay
quiet, so clients that always have a request in flight (like wrk) never see a failed request."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import rcluster
from conftest import fast, hello_argv, worker_argv

CLIENTS = 50
RELOADS = 3


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.non_2xx = 0
        self.errors: list[str] = []


def read_response(f) -> tuple[int, bool]:
    """One response from the file of a socket: its status, and whether the connection stays."""
    line = f.readline()
    if not line:
        raise ConnectionError("connection closed before the answer")
    status = int(line.split()[1])
    length, keep = 0, True
    while (line := f.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"connection":
            keep = b"close" not in value.lower()
    if len(f.read(length)) != length:
        raise ConnectionError("connection closed in the body")
    return status, keep


def client(addr, stop: threading.Event, tally: Tally) -> None:
    """Sends its next request as soon as the previous answer is read; reconnects only after
    `Connection: close` or an error."""
    s = f = None
    while not stop.is_set():
        try:
            if s is None:
                s = socket.create_connection(addr, timeout=10)
                f = s.makefile("rb")
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            status, keep = read_response(f)
        except OSError as e:
            with tally.lock:
                tally.errors.append(repr(e))
            if s is not None:
                s.close()
            s = None
            continue
        with tally.lock:
            if 200 <= status < 300:
                tally.ok += 1
            else:
                tally.non_2xx += 1
        if not keep:
            s.close()
            s = None
    if s is not None:
        s.close()


@pytest.mark.parametrize(
    "program, dispatch",
    [("hello_http", "rr"), ("hello_http", "shared"), ("blocking-keepalive", "rr")],
)
def test_keep_alive_clients_see_no_error_across_three_reloads(wait_ready, program, dispatch):
    # hello_http.py on rcluster.aio, and a blocking rcluster.serve handler that reads
    # rcluster.worker().draining.
    argv = hello_argv() if program == "hello_http" else worker_argv(program)
    sup = rcluster.Supervisor(
        argv,
        workers=2,
        listen=["127.0.0.1:0"],
        dispatch=dispatch,
        ready_on="explicit",
        **fast(kill_timeout=10.0),
    )
    with sup:
        wait_ready(sup, 2)
        tally, stop = Tally(), threading.Event()
        addr = sup.address()
        clients = [
            threading.Thread(target=client, args=(addr, stop, tally)) for _ in range(CLIENTS)
        ]
        for c in clients:
            c.start()
        try:
            time.sleep(0.5)
            for _ in range(RELOADS):
                before = tally.ok
                sup.reload()
                sup.wait_for("reload_done", timeout=30)
                # Requests keep flowing between reloads, so each reload happens under load.
                until = time.monotonic() + 5
                while tally.ok < before + 500 and time.monotonic() < until:
                    time.sleep(0.02)
                time.sleep(0.3)
        finally:
            stop.set()
            for c in clients:
                c.join(timeout=20)
    assert tally.ok > 1000, f"only {tally.ok} answers: the load did not run"
    assert (len(tally.errors), tally.non_2xx) == (0, 0), (
        f"{tally.ok} answers, {len(tally.errors)} socket errors, {tally.non_2xx} non-2xx; "
        f"first errors: {tally.errors[:10]}"
    )
