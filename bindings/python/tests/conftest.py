"""Helpers for the rcluster Python tests: real workers, real sockets, short timeouts."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import rcluster

HERE = Path(__file__).resolve().parent
WORKER = str(HERE / "workers" / "worker.py")
HELLO_HTTP = str(HERE.parents[2] / "examples" / "python" / "hello_http.py")


def worker_argv(mode: str) -> list[str]:
    return [sys.executable, WORKER, mode]


def hello_argv() -> list[str]:
    return [sys.executable, HELLO_HTTP]


def fast(**kw):
    """Options for tests: short timeouts and quick restarts."""
    opts = dict(
        kill_timeout=3.0,
        ready_timeout=10.0,
        restart=rcluster.RestartPolicy(backoff_initial=0.02, backoff_max=0.2, min_uptime=0.5),
    )
    opts.update(kw)
    return opts


def http_get(addr: tuple[str, int], timeout: float = 5.0) -> str:
    """One request on a new connection; returns the body."""
    with socket.create_connection(addr, timeout=timeout) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), data
    return body.decode()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose (its parent reaps it).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def wait_ready():
    def wait(sup: rcluster.Supervisor, n: int, timeout: float = 15.0) -> list[int]:
        pids = []
        for _ in range(n):
            pids.append(sup.wait_for("ready", timeout).pid)
        return pids

    return wait
