#!/usr/bin/env python3
"""An rcluster worker written from docs/protocol.md alone (Python 3 standard library only).

It exists to show that the document is enough to implement a worker, and to let the test
suite check the primary against an independent implementation.

Usage: conformance_worker.py MODE[,MODE...]

With several comma-separated modes, worker N runs mode N modulo their count, so that one
cluster can mix well-behaved and misbehaving workers.

Modes:
  echo         send READY, echo every message back with its content type, exit 0 on
               DISCONNECT or EOF
  bad-version  send a HELLO with version 99, then wait to be killed
  no-hello     send READY as the first frame, then wait to be killed
  big          send READY, one message of exactly max_message bytes, then a message whose
               header announces max_message + 1 bytes, then wait to be killed
  heartbeat    send READY, then nothing but HEARTBEAT frames every 50 ms

Exit status: 0 normal end; 2 usage; 3 protocol error by the primary; 4 not run as an rcluster
worker; 5 SIGTERM came without a DISCONNECT frame; 6 still alive long after a protocol error.
"""

import array
import os
import select
import signal
import socket
import struct
import sys
import time

VERSION = 1
HEADER = struct.Struct("<IBBH")  # length, kind, flags, reserved
PRIMARY_HELLO = struct.Struct("<HHIII")  # version, reserved, max_message, worker_id, generation
WORKER_HELLO = struct.Struct("<HHI")  # version, reserved, pid
MAX_CONTROL_BODY = 4096
FLAG_FD = 0x01
# Bits 1-3 of a MESSAGE frame's flags: its content type (0 raw, 1 text, 2 json, 3 v8,
# 4 binding, 5 pickle; 6-7 unknown, a protocol error).
CONTENT_MASK = 0x0E
CONTENT_TYPES = range(0, 6)

HELLO, READY, HEARTBEAT, MESSAGE, DISCONNECT, CONNECTION, CONNECTION_ACK, CONNECTION_CLOSED = range(1, 9)
KNOWN_KINDS = range(1, 9)
# Kinds the primary may send to a worker in version 1 (CONNECTION is reserved and unused).
FROM_PRIMARY = {HELLO, MESSAGE, DISCONNECT}

# Generous: the point of the misbehaving modes is to be killed by the primary long before this.
KILL_WAIT = 30.0
HELLO_WAIT = 5.0
# How long a SIGTERM may precede its DISCONNECT frame (the primary sends the frame first).
TERM_GRACE = 2.0


class ProtocolError(Exception):
    pass


class Link:
    """One end of the stream: reassembles frames and keeps the FIFO of received descriptors."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.fds = []
        self.max_message = MAX_CONTROL_BODY  # raised to the hello's value once it has arrived
        self.eof = False

    def _fill(self, timeout):
        """Reads once; False on timeout. Sets `eof` when the primary closed its end."""
        readable, _, _ = select.select([self.sock], [], [], timeout)
        if not readable:
            return False
        ancillary = socket.CMSG_SPACE(16 * array.array("i").itemsize)
        data, cmsgs, flags, _ = self.sock.recvmsg(256 * 1024, ancillary, socket.MSG_CMSG_CLOEXEC)
        for level, kind, payload in cmsgs:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self.fds.extend(fds)
        if flags & socket.MSG_CTRUNC:
            raise ProtocolError("descriptors were lost (MSG_CTRUNC)")
        if not data:
            self.eof = True
        self.buf += data
        return True

    def read_frame(self, timeout=None):
        """(kind, fd or None, body, content type) of the next frame; None on EOF or timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if len(self.buf) >= HEADER.size:
                length, kind, flags, reserved = HEADER.unpack_from(self.buf)
                # Validate from the header alone, so an oversized body is never buffered.
                if kind not in KNOWN_KINDS:
                    raise ProtocolError(f"unknown frame kind {kind}")
                allowed = FLAG_FD | (CONTENT_MASK if kind == MESSAGE else 0)
                if reserved != 0 or flags & ~allowed:
                    raise ProtocolError(f"reserved header bits set in a kind {kind} frame")
                content = (flags & CONTENT_MASK) >> 1
                if content not in CONTENT_TYPES:
                    raise ProtocolError(f"unknown message content type {content}")
                if flags & FLAG_FD and kind != CONNECTION:
                    raise ProtocolError(f"a kind {kind} frame may not carry a descriptor")
                limit = self.max_message if kind == MESSAGE else MAX_CONTROL_BODY
                if length > limit:
                    raise ProtocolError(f"kind {kind} frame of {length} bytes exceeds {limit}")
                if len(self.buf) >= HEADER.size + length:
                    fd = None
                    if flags & FLAG_FD:
                        # The descriptor came with the frame's first byte, which has been read.
                        if not self.fds:
                            raise ProtocolError("a frame announces a descriptor that did not come")
                        fd = self.fds.pop(0)
                    body = bytes(self.buf[HEADER.size : HEADER.size + length])
                    del self.buf[: HEADER.size + length]
                    return kind, fd, body, content
            if self.eof:
                return None
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._fill(left) and left is not None:
                return None

    def write_frame(self, kind, body=b"", length=None, content=0):
        """Sends one frame (a MESSAGE of content type `content`); `length` overrides the
        header's length (to misbehave on purpose)."""
        header = HEADER.pack(len(body) if length is None else length, kind, content << 1, 0)
        self.sock.sendall(header + body)


def env_u32(name):
    value = os.environ.get(name)
    if value is None:
        return None
    if not value.isdigit() or int(value) >= 2**32:
        raise SystemExit(f"conformance_worker: {name}={value!r} is not a u32")
    return int(value)


def attach():
    """Finds this process's link, following section 1.1 of the protocol document."""
    fd = env_u32("RCLUSTER_IPC_FD")
    if fd is None:
        fail(4, "not run as an rcluster worker (RCLUSTER_IPC_FD is missing)")
    # The environment is inherited by every descendant, the descriptor is not: only the process
    # the primary started may use it.
    if env_u32("RCLUSTER_PID") != os.getpid():
        fail(4, "RCLUSTER_PID is not this process: the link belongs to an ancestor")
    worker_id = env_u32("RCLUSTER_WORKER_ID")
    generation = env_u32("RCLUSTER_GENERATION")
    if worker_id is None or generation is None:
        fail(4, "RCLUSTER_WORKER_ID or RCLUSTER_GENERATION is missing")
    try:
        os.fstat(fd)
    except OSError:
        fail(4, f"RCLUSTER_IPC_FD={fd} is not an open descriptor")
    # Programs this worker starts must not inherit the link: two readers would split frames.
    os.set_inheritable(fd, False)
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    return Link(sock), worker_id, generation


def handshake(link, worker_id, generation, version=VERSION):
    """Reads and checks the primary's hello (already in the socket), then answers."""
    frame = link.read_frame(HELLO_WAIT)
    if frame is None:
        raise ProtocolError("no hello from the primary")
    kind, _, body, _ = frame
    if kind != HELLO:
        raise ProtocolError(f"first frame from the primary is kind {kind}, expected HELLO")
    if len(body) != PRIMARY_HELLO.size:
        raise ProtocolError(f"primary hello body has {len(body)} bytes, expected {PRIMARY_HELLO.size}")
    peer_version, _, max_message, hello_id, hello_generation = PRIMARY_HELLO.unpack(body)
    if peer_version != VERSION:
        raise ProtocolError(f"primary speaks version {peer_version}, this worker speaks {VERSION}")
    if (hello_id, hello_generation) != (worker_id, generation):
        raise ProtocolError(
            f"hello is for worker {hello_id} generation {hello_generation}, "
            f"the environment says {worker_id} generation {generation}"
        )
    link.max_message = max_message
    if version is not None:
        link.write_frame(HELLO, WORKER_HELLO.pack(version, 0, os.getpid()))
    return max_message


def fail(code, text):
    print(f"conformance_worker: {text}", file=sys.stderr, flush=True)
    sys.exit(code)


term_at = None


def on_sigterm(_signum, _frame):
    # The primary sends DISCONNECT before SIGTERM; the frame drives the stop, the signal only
    # must not kill the process before the frame has been read.
    global term_at
    if term_at is None:
        term_at = time.monotonic()


def echo(link):
    link.write_frame(READY)
    while True:
        frame = link.read_frame(0.1)
        if frame is None:
            if link.eof:
                sys.exit(0)  # the primary is gone
            if term_at is not None and time.monotonic() - term_at > TERM_GRACE:
                fail(5, "SIGTERM without a DISCONNECT frame")
            continue
        kind, _, body, content = frame
        if kind == MESSAGE:
            link.write_frame(MESSAGE, body, content=content)
        elif kind == DISCONNECT:
            sys.exit(0)
        else:
            raise ProtocolError(f"unexpected kind {kind} from the primary")


def wait_to_be_killed(link):
    """After misbehaving on purpose: the primary must SIGKILL us; EOF or silence is a failure."""
    deadline = time.monotonic() + KILL_WAIT
    while time.monotonic() < deadline:
        try:
            frame = link.read_frame(0.5)
        except ProtocolError:
            frame = None
        if frame is None and link.eof:
            break
    fail(6, "the primary did not kill this worker after its protocol error")


def big(link, max_message):
    link.write_frame(READY)
    # A recognisable pattern, so the test can tell a truncated or shifted body.
    pattern = bytes(range(251))
    body = (pattern * (max_message // len(pattern) + 1))[:max_message]
    link.write_frame(MESSAGE, body)
    try:
        # The primary refuses this from the header alone and kills us, possibly while the body
        # is still being written.
        link.write_frame(MESSAGE, body + b"!", length=max_message + 1)
    except OSError:
        pass
    wait_to_be_killed(link)


def heartbeat(link):
    link.write_frame(READY)
    deadline = time.monotonic() + KILL_WAIT
    while time.monotonic() < deadline:
        link.write_frame(HEARTBEAT)
        frame = link.read_frame(0.05)
        if link.eof or (frame is not None and frame[0] == DISCONNECT):
            sys.exit(0)
    sys.exit(0)


def main():
    if len(sys.argv) != 2:
        fail(2, "usage: conformance_worker.py MODE[,MODE...]")
    signal.signal(signal.SIGTERM, on_sigterm)
    link, worker_id, generation = attach()
    modes = sys.argv[1].split(",")
    mode = modes[worker_id % len(modes)]
    if mode not in ("echo", "bad-version", "no-hello", "big", "heartbeat"):
        fail(2, f"unknown mode {mode!r}")
    try:
        if mode == "bad-version":
            handshake(link, worker_id, generation, version=99)
            wait_to_be_killed(link)
        elif mode == "no-hello":
            handshake(link, worker_id, generation, version=None)
            link.write_frame(READY)
            wait_to_be_killed(link)
        else:
            max_message = handshake(link, worker_id, generation)
            if mode == "echo":
                echo(link)
            elif mode == "heartbeat":
                heartbeat(link)
            else:
                big(link, max_message)
    except ProtocolError as e:
        fail(3, f"protocol error from the primary: {e}")
    except (BrokenPipeError, ConnectionResetError):
        sys.exit(0)  # the primary is gone


if __name__ == "__main__":
    main()
