"""The primary side end to end: spawn, messages, broadcast, restart, snapshot, scale, stop."""

from __future__ import annotations

import logging
import os
import signal
import threading

import pytest
import rcluster
from conftest import alive, fast, worker_argv


def test_workers_start_and_answer_messages(wait_ready):
    with rcluster.Supervisor(worker_argv("echo"), workers=2, **fast()) as sup:
        hellos = [sup.wait_for("message").json() for _ in range(2)]
        assert sorted(h["hello"] for h in hellos) == [0, 1]
        sup.send(1, b"ping")
        ev = sup.wait_for("message")
        assert (ev.id, ev.data) == (1, b"echo:ping")
        sup.send_json(0, "x")
        assert sup.wait_for("message").data == b'echo:"x"'


def test_broadcast_reaches_every_worker():
    with rcluster.Supervisor(worker_argv("echo"), workers=3, **fast()) as sup:
        for _ in range(3):
            sup.wait_for("message")
        assert sup.broadcast(b"all") == 3
        got = sorted(sup.wait_for("message").id for _ in range(3))
        assert got == [0, 1, 2]


def test_crashed_worker_is_restarted_in_its_slot():
    with rcluster.Supervisor(worker_argv("echo"), workers=1, **fast()) as sup:
        first = sup.wait_for("message").json()
        sup.send(0, b"crash")
        ex = sup.wait_for("exit")
        assert (ex.id, ex.code, ex.reason) == (0, 3, "crashed")
        assert sup.wait_for("restarting").id == 0
        second = sup.wait_for("message").json()
        assert second["hello"] == 0 and second["pid"] != first["pid"]
        (info,) = sup.workers()
        assert info.restarts == 1 and info.last_exit.code == 3


def test_stop_reaps_every_worker_and_ends_the_event_stream():
    sup = rcluster.Supervisor(worker_argv("echo"), workers=2, **fast()).start()
    pids = [sup.wait_for("message").pid for _ in range(2)]
    sup.stop()
    assert sup.stopped
    assert not any(alive(p) for p in pids)
    kinds = [ev.kind for ev in sup.events()]  # what is left, then the end
    assert kinds.count("exit") <= 2
    sup.stop()  # a second stop is harmless


def test_snapshot_and_scale():
    with rcluster.Supervisor(worker_argv("echo"), workers=1, **fast()) as sup:
        sup.wait_for("message")
        sup.scale(3)
        for _ in range(2):
            sup.wait_for("message")
        states = sorted((w.id, w.state) for w in sup.workers())
        assert states == [(0, "ready"), (1, "ready"), (2, "ready")]
        assert all(w.generation == 1 and w.uptime >= 0 for w in sup.workers())


def test_reload_replaces_every_worker_with_a_new_generation():
    with rcluster.Supervisor(worker_argv("echo"), workers=2, **fast()) as sup:
        for _ in range(2):
            sup.wait_for("message")
        assert sup.reload() == 2
        sup.wait_for("reload_done", timeout=30)
        assert {w.generation for w in sup.workers() if w.state == "ready"} == {2}


def test_a_callback_that_raises_is_reported_and_events_keep_flowing(caplog):
    seen = []
    with rcluster.Supervisor(worker_argv("echo"), workers=1, **fast()) as sup:
        sup.on("spawned", lambda ev: 1 / 0)
        sup.on("*", lambda ev: seen.append(ev.kind))
        with caplog.at_level(logging.ERROR, logger="rcluster"):
            sup.wait_for("message")
    assert "ZeroDivisionError" in caplog.text and "callback" in caplog.text
    assert "spawned" in seen and "message" in seen


def test_waiting_releases_the_gil():
    ticks = []
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks.append(1)
            stop.wait(0.01)

    t = threading.Thread(target=spin)
    with rcluster.Supervisor(worker_argv("echo"), workers=1, **fast()) as sup:
        sup.wait_for("message")
        t.start()
        assert sup.next_event(0.5) is None
        stop.set()
        t.join()
    assert len(ticks) >= 10


def test_pickle_only_when_asked():
    with rcluster.Supervisor(worker_argv("echo"), workers=1, **fast()) as sup:
        sup.wait_for("message")
        sup.send_pickle(0, {"a": 1})
        ev = sup.wait_for("message")
        assert ev.data.startswith(b"echo:\x80")


@pytest.mark.parametrize(("mode", "prefix"), [("aio-echo", b"aio:"), ("blocking-http", b"got:")])
def test_a_burst_of_messages_reaches_the_worker_whole(mode, prefix):
    # Thousands of small messages arrive in a few large reads; the worker (asyncio, and the
    # blocking serve helper) must take them all, not only the first batch of each read, with
    # nothing more arriving after the burst.
    with rcluster.Supervisor(worker_argv(mode), workers=1, **fast()) as sup:
        sup.wait_for("ready")
        sup.send(0, b"nap")
        for i in range(3000):
            sup.send(0, b"m%d" % i)
        assert sup.wait_for("message", timeout=10).data == prefix + b"nap"
        got = [sup.wait_for("message", timeout=10).data for _ in range(3000)]
        assert got == [prefix + b"m%d" % i for i in range(3000)]


def test_no_worker_count_runs_the_cores_default_one_per_usable_cpu():
    n = rcluster.default_workers()
    assert 1 <= n <= (len(os.sched_getaffinity(0)))
    with rcluster.Supervisor(worker_argv("echo"), **fast()) as sup:
        assert sorted(sup.wait_for("message").id for _ in range(n)) == list(range(n))
        assert len(sup.workers()) == n


def test_unnamed_listeners_get_the_cores_default_names_by_place():
    listen = ["127.0.0.1:0", rcluster.Listener("127.0.0.2:0", name="api"), "127.0.0.3:0"]
    with rcluster.Supervisor(worker_argv("echo"), workers=1, listen=listen, **fast()) as sup:
        assert list(sup.listeners) == ["listen0", "api", "listen2"]


def test_kill_sends_the_signal_and_the_exit_is_reported_as_requested():
    with rcluster.Supervisor(worker_argv("echo"), workers=1, **fast()) as sup:
        pid = sup.wait_for("message").pid
        sup.kill(0)  # SIGTERM by default
        ex = sup.wait_for("exit")
        assert (ex.id, ex.pid, ex.signal, ex.reason) == (0, pid, signal.SIGTERM, "requested")
        pid2 = sup.wait_for("message").pid
        sup.kill(0, signal.SIGKILL)
        ex = sup.wait_for("exit")
        assert (ex.pid, ex.signal, ex.reason) == (pid2, signal.SIGKILL, "requested")
        with pytest.raises(rcluster.NoSuchWorkerError):
            sup.kill(5)
        with pytest.raises(rcluster.ConfigError, match="signal"):
            sup.kill(0, 0)
