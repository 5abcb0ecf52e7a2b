"""Signals to a primary written as the README shows: SIGTERM under load, a second SIGTERM,
SIGHUP, SIGTTIN/SIGTTOU, Ctrl-C; a program's own handlers; handle_signals=False."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import rcluster
from conftest import WORKER, fast
from rcluster import _signals

README_PRIMARY = str(Path(__file__).resolve().parent / "readme_primary.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_sigint() -> None:
    # A process started in the background by a shell has SIGINT ignored, and CPython then
    # leaves it ignored; under nohup SIGHUP is ignored too. rcluster leaves an ignored signal
    # alone, so give the child the defaults, as a terminal's foreground job has.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


class Primary:
    """The README primary in a process of its own; its stdout lines are collected."""

    def __init__(self, port: int, delay: float = 0.0) -> None:
        self.p = subprocess.Popen(
            [sys.executable, README_PRIMARY, f"127.0.0.1:{port}", str(delay)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=default_sigint,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.wait_line(lambda x: x.startswith('Event("ready"'), 2, "two ready workers")

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, pred, count: int = 1, what: str = "", timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(1 for x in list(self.lines) if pred(x)) >= count:
                return
            if self.p.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no {what} within {timeout} s: {self.lines}")

    def signal(self, sig: int) -> None:
        self.p.send_signal(sig)

    def wait(self, timeout: float = 20.0) -> tuple[int, str]:
        # stdout belongs to the reader thread; stderr is small (a traceback at most).
        try:
            self.p.wait(timeout=timeout)
        finally:
            self.p.kill()
        self.reader.join(5)
        assert self.p.stderr is not None
        return self.p.returncode, self.p.stderr.read()


def request(port: int) -> str:
    """One request on a connection of its own: "ok", "refused" or "failed: ..."."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return f"failed: {e!r}"
    return "ok" if data.endswith(b"\r\n\r\nhi\n") else f"failed: {data!r}"


class Load:
    """`clients` threads of requests, each on its own connection, until `stop()` (bounded by
    count and time too). A failure counts as in flight when its request began before
    `mark()`, else as after the signal."""

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.ok = self.refused = 0
        self.failed_in_flight: list[str] = []
        self.failed_after: list[str] = []
        self.in_flight = 0
        self.at_mark: int | None = None
        self._marked = False
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop) for _ in range(clients)]
        for t in self.threads:
            t.start()

    def _loop(self) -> None:
        deadline = time.monotonic() + 25
        for _ in range(100_000):
            if self._done.is_set() or time.monotonic() > deadline:
                return
            with self._lock:
                before = not self._marked
                self.in_flight += 1
            r = request(self.port)
            with self._lock:
                self.in_flight -= 1
                if r == "ok":
                    self.ok += 1
                elif r == "refused":
                    self.refused += 1
                else:
                    (self.failed_in_flight if before else self.failed_after).append(r)
            if r == "refused":
                time.sleep(0.005)

    def mark(self) -> None:
        with self._lock:
            self._marked = True
            self.at_mark = self.in_flight

    def stop(self) -> None:
        self._done.set()
        for t in self.threads:
            t.join(15)


def test_readme_primary_on_sigterm_under_load_exits_0_drained_with_no_accepted_request_failed():
    port = free_port()
    primary = Primary(port, delay=0.1)
    load = Load(port, 16)
    try:
        time.sleep(0.8)
        ok_before = load.ok
        load.mark()
        primary.signal(signal.SIGTERM)
        code, err = primary.wait()
    finally:
        load.stop()
    print(
        f"python SIGTERM: in flight {load.at_mark}, ok {load.ok}, failed in flight "
        f"{len(load.failed_in_flight)}, failed after the signal {len(load.failed_after)}, "
        f"refused {load.refused}"
    )
    assert ok_before > 0
    assert load.at_mark and load.at_mark > 0
    assert code == 0, err
    assert "Traceback" not in err
    assert primary.lines[-1] == "ENDED"
    exits = [x for x in primary.lines if x.startswith('Event("exit"')]
    assert len(exits) == 2 and all('reason="shutdown"' in x for x in exits), exits
    # Every request in flight at the signal was answered: the workers drained.
    assert load.failed_in_flight == []
    # A connection the kernel accepted after the signal must not be reset either (refused
    # is fine): this needs the core's stop to close its listeners before the drain.
    assert load.failed_after == []


def test_readme_primary_survives_sighup_and_reloads_and_sigttin_sigttou_scale_by_one():
    port = free_port()
    primary = Primary(port)
    try:
        primary.signal(signal.SIGHUP)
        primary.wait_line(lambda x: x.startswith('Event("reload_done", generation=2'), 1, "reload")
        primary.signal(signal.SIGTTIN)
        primary.wait_line(lambda x: x == 'Event("scaled", workers=3)', 1, "scale to 3")
        primary.signal(signal.SIGTTOU)
        primary.wait_line(lambda x: x == 'Event("scaled", workers=2)', 1, "scale to 2")
        assert request(port) == "ok"
        assert primary.p.poll() is None
        primary.signal(signal.SIGTERM)
        code, err = primary.wait()
    finally:
        primary.p.kill()
    assert code == 0, err
    assert primary.lines[-1] == "ENDED"


def test_a_second_sigterm_kills_the_workers_at_once():
    port = free_port()
    primary = Primary(port, delay=60)
    answers: list[str] = []
    client = threading.Thread(target=lambda: answers.append(request(port)))
    client.start()
    try:
        time.sleep(0.3)
        primary.signal(signal.SIGTERM)
        time.sleep(0.3)
        t0 = time.monotonic()
        primary.signal(signal.SIGTERM)
        code, err = primary.wait()
        took = time.monotonic() - t0
    finally:
        primary.p.kill()
        client.join(15)
    assert code == 0, err
    # The graceful stop would have waited for the 60 s request (SIGKILL at 10 s).
    assert took < 4, took
    exits = [x for x in primary.lines if x.startswith('Event("exit"')]
    # The worker holding the request was ended by a signal, not drained.
    assert any("signal=" in x for x in exits), exits


def test_ctrl_c_ends_a_python_primary_gracefully_without_a_traceback():
    port = free_port()
    primary = Primary(port)
    try:
        primary.signal(signal.SIGINT)
        code, err = primary.wait()
    finally:
        primary.p.kill()
    assert code == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert primary.lines[-1] == "ENDED"


def test_handlers_are_installed_over_defaults_only_and_restored_on_stop():
    own = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        mine = signal.getsignal(signal.SIGTERM)
        before = {s: signal.getsignal(s) for s in _signals.HANDLED}
        with rcluster.Supervisor([sys.executable, WORKER, "echo"], **fast()):
            installed = set(_signals.installed())
            assert signal.getsignal(signal.SIGTERM) is mine
        # Only over defaults: SIGTERM has our own handler, and a signal this process was
        # started with ignored (SIGHUP under nohup) stays ignored.
        defaults = {
            s
            for s, h in before.items()
            if h == signal.SIG_DFL or (s == signal.SIGINT and h is signal.default_int_handler)
        }
        assert installed == defaults - {signal.SIGTERM}
        assert {s: signal.getsignal(s) for s in _signals.HANDLED} == before
        assert _signals.installed() == []
    finally:
        signal.signal(signal.SIGTERM, own)


def test_handle_signals_false_installs_nothing():
    with rcluster.Supervisor([sys.executable, WORKER, "echo"], handle_signals=False, **fast()):
        assert _signals.installed() == []


def test_a_supervisor_started_off_the_main_thread_installs_nothing():
    seen: list[list[int]] = []

    def run() -> None:
        with rcluster.Supervisor([sys.executable, WORKER, "echo"], **fast()):
            seen.append(_signals.installed())

    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    assert seen == [[]]
