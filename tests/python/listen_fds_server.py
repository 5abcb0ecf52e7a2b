#!/usr/bin/env python3
"""A tiny HTTP server that knows nothing of rcluster, only systemd-style socket activation
(Python 3 standard library only).

It takes its listening socket from fd 3 when LISTEN_PID names this process and LISTEN_FDS
says one socket was passed, as any socket-activated server does, and answers every request
with the body "PID fds=N names=NAMES ipc=FD ok blocking=yes". The checks on the environment
are part of the body, so that the test sees what the server saw; "ok" becomes "bad" if the IPC
descriptor is not where RCLUSTER_IPC_FD says, right after the listening sockets, and
"blocking=no" says the socket came in non-blocking mode (systemd passes sockets in blocking
mode unless told otherwise). Like many servers, it then sets the mode it needs itself.

Exit status: 4 when not socket-activated.
"""

import fcntl
import os
import socket
import stat
import sys

SD_LISTEN_FDS_START = 3


def main():
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        print("LISTEN_PID does not name this process", file=sys.stderr)
        sys.exit(4)
    count = int(os.environ.get("LISTEN_FDS", "0"))
    if count < 1:
        print("no LISTEN_FDS", file=sys.stderr)
        sys.exit(4)
    names = os.environ.get("LISTEN_FDNAMES", "")
    ipc = os.environ.get("RCLUSTER_IPC_FD", "")
    ipc_ok = ipc == str(SD_LISTEN_FDS_START + count)
    if ipc_ok:
        try:
            ipc_ok = stat.S_ISSOCK(os.fstat(int(ipc)).st_mode)
        except OSError:
            ipc_ok = False
    # Read from the descriptor itself: Python's idea of the mode is not the socket's.
    flags = fcntl.fcntl(SD_LISTEN_FDS_START, fcntl.F_GETFL)
    blocking = not flags & os.O_NONBLOCK
    listener = socket.socket(fileno=SD_LISTEN_FDS_START)
    listener.setblocking(True)
    body = "{} fds={} names={} ipc={} {} blocking={}".format(
        os.getpid(), count, names, ipc, "ok" if ipc_ok else "bad", "yes" if blocking else "no"
    ).encode()
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
        + body
    )
    while True:
        conn, _ = listener.accept()
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = conn.recv(1024)
                if not chunk:
                    break
                request += chunk
            conn.sendall(response)


if __name__ == "__main__":
    main()
