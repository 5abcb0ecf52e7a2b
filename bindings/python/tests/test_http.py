"""asyncio workers serving real HTTP clients: round-robin, shared, streams, blocking, reload."""

from __future__ import annotations

import collections
import socket
import threading
import time

import pytest
import rcluster
from conftest import fast, hello_argv, http_get, worker_argv


def serve_cluster(argv, workers=2, dispatch="rr", **kw):
    return rcluster.Supervisor(
        argv,
        workers=workers,
        listen=["127.0.0.1:0"],
        dispatch=dispatch,
        ready_on="explicit",
        **fast(**kw),
    )


def test_asyncio_workers_serve_http_round_robin(wait_ready):
    with serve_cluster(hello_argv()) as sup:
        wait_ready(sup, 2)
        bodies = [http_get(sup.address()) for _ in range(20)]
    ids = [b.split()[3] for b in bodies]
    assert collections.Counter(ids) == {"0": 10, "1": 10}
    assert all(a != b for a, b in zip(ids, ids[1:], strict=False)), ids  # strict alternation


def test_the_same_asyncio_worker_serves_in_shared_mode(wait_ready):
    with serve_cluster(hello_argv(), dispatch="shared") as sup:
        wait_ready(sup, 2)
        bodies = [http_get(sup.address()) for _ in range(10)]
    assert all(b.startswith("Hello from worker ") for b in bodies)


def test_stream_handlers_with_start_server(wait_ready):
    with serve_cluster(worker_argv("streams-http")) as sup:
        wait_ready(sup, 2)
        bodies = {http_get(sup.address()) for _ in range(6)}
    assert bodies == {"streams worker 0\n", "streams worker 1\n"}


@pytest.mark.parametrize("dispatch", ["rr", "shared"])
def test_asyncio_sees_a_handed_over_connection_as_one_it_accepted(wait_ready, dispatch):
    # Nagle's algorithm off, as asyncio does for the connections it accepts itself (a
    # handed-over socket without its TCP protocol number would keep it on), and the right
    # peer address.
    with serve_cluster(worker_argv("socket-info"), dispatch=dispatch) as sup:
        wait_ready(sup, 2)
        for _ in range(4):
            with socket.create_connection(sup.address(), timeout=5) as s:
                host, port = s.getsockname()[:2]
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            assert data.endswith(f"nodelay=1 peer={host}:{port}\n".encode()), data


def test_an_aiohttp_server_runs_as_a_worker_keep_alive_included(wait_ready):
    with serve_cluster(worker_argv("aiohttp-http")) as sup:
        wait_ready(sup, 2)
        bodies = [http_get(sup.address()) for _ in range(4)]
        # Three requests on one kept-alive connection: one worker answers them all.
        with socket.create_connection(sup.address(), timeout=5) as s:
            f = s.makefile("rb")
            answers = []
            for path in ("/a", "/b", "/c"):
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                assert f.readline().startswith(b"HTTP/1.1 200"), path
                length = 0
                while (line := f.readline()) != b"\r\n":
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                answers.append(f.read(length).decode())
    assert sorted(b.split()[2] for b in bodies) == ["0", "0", "1", "1"], bodies
    worker = answers[0].split()[2]
    assert answers == [f"aiohttp worker {worker} GET {p}\n" for p in ("/a", "/b", "/c")]


def test_blocking_handlers_with_serve(wait_ready):
    with serve_cluster(worker_argv("blocking-http")) as sup:
        wait_ready(sup, 2)
        bodies = {http_get(sup.address()) for _ in range(6)}
        sup.send(0, b"hi")
        assert sup.wait_for("message").data == b"got:hi"
    assert bodies == {"blocking worker 0\n", "blocking worker 1\n"}


def test_reload_under_load_fails_no_request(wait_ready):
    with serve_cluster(hello_argv()) as sup:
        wait_ready(sup, 2)
        addr = sup.address()
        ok, failed, stop = [0], [], threading.Event()

        def load():
            while not stop.is_set():
                try:
                    http_get(addr)
                    ok[0] += 1
                except Exception as e:  # noqa: BLE001 - every failure is recorded
                    failed.append(repr(e))

        clients = [threading.Thread(target=load) for _ in range(4)]
        for c in clients:
            c.start()
        try:
            time.sleep(0.5)
            before = ok[0]
            assert sup.reload() == 2
            sup.wait_for("reload_done", timeout=60)
            time.sleep(0.5)
        finally:
            stop.set()
            for c in clients:
                c.join()
        assert failed == []
        assert ok[0] > before > 0
        assert {w.generation for w in sup.workers() if w.state == "ready"} == {2}


def test_max_requests_recycles_a_worker_after_its_connections_and_no_request_fails(wait_ready):
    limits = dict(max_requests=3, max_requests_jitter=1, max_memory=1 << 30)
    with serve_cluster(hello_argv(), **limits) as sup:
        wait_ready(sup, 2)
        bodies = [http_get(sup.address()) for _ in range(16)]
        recycling = sup.wait_for("recycling", timeout=20)
        assert recycling.reason == "max_requests" and recycling.pid > 0
        ready = sup.wait_for("ready", timeout=20)
        assert ready.id == recycling.id and ready.pid != recycling.pid
        exit = sup.wait_for("exit", timeout=20)
        assert (exit.reason, exit.pid) == ("max_requests", recycling.pid)
    assert all(b.startswith("Hello from worker ") for b in bodies), bodies


@pytest.mark.parametrize("dispatch", ["rr"])
def test_a_hung_asyncio_loop_is_detected_by_heartbeat(dispatch):
    with rcluster.Supervisor(
        worker_argv("aio-echo"), workers=1, heartbeat_timeout=1.0, **fast()
    ) as sup:
        sup.wait_for("ready")
        time.sleep(1.5)  # heartbeats keep an idle loop alive
        sup.send(0, b"ping")
        assert sup.wait_for("message").data == b"aio:ping"
        sup.send(0, b"hang")
        ex = sup.wait_for("exit", timeout=10)
        assert ex.reason == "heartbeat"


@pytest.mark.parametrize(
    ("mode", "answer"),
    [("blocking-http", "blocking worker 0\n"), ("streams-http", "streams worker 0\n")],
)
def test_at_a_stop_connections_waiting_in_the_shared_socket_are_served_not_reset(
    wait_ready, mode, answer
):
    # The worker's loop is stuck in on_message ("nap", 0.3 s) while clients connect: the kernel
    # queues them in the shared socket. The stop comes before the loop runs again; closing the
    # socket with them still queued would reset them.
    with serve_cluster(worker_argv(mode), workers=1, dispatch="shared") as sup:
        wait_ready(sup, 1)
        addr = sup.address()
        assert http_get(addr) == answer
        sup.send(0, b"nap")
        time.sleep(0.1)
        results: list[str] = []

        def client() -> None:
            try:
                results.append(http_get(addr))
            except OSError as e:
                results.append(f"failed: {e!r}")

        clients = [threading.Thread(target=client) for _ in range(4)]
        for t in clients:
            t.start()
        time.sleep(0.1)
        sup.stop(10)
        for t in clients:
            t.join(10)
    assert results == [answer] * 4


def test_a_slow_worker_keeps_its_share_of_a_shared_socket(wait_ready):
    # Worker 1 spends 3 ms on each request. Taking whatever waits at each readiness (asyncio's
    # own servers take up to 100), worker 0 answers nearly all of them; accepting one per
    # readiness and keeping level through the share map, worker 1 answers a third or more.
    with serve_cluster(worker_argv("shares-http"), dispatch="shared") as sup:
        wait_ready(sup, 2)
        addr = sup.address()
        total, clients = 240, 6
        by: collections.Counter[str] = collections.Counter()
        failed: list[str] = []
        lock = threading.Lock()
        sent = [0]

        def client() -> None:
            while True:
                with lock:
                    if sent[0] == total:
                        return
                    sent[0] += 1
                try:
                    body = http_get(addr)
                except OSError as e:
                    failed.append(repr(e))
                    continue
                with lock:
                    by[body.strip()] += 1

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert failed == []
    assert by["0"] + by["1"] == total, by
    assert by["1"] >= 80, f"worker 1 answered {by['1']} of {total}: {dict(by)}"


def test_a_worker_out_of_descriptors_pauses_accepting_on_a_shared_socket_instead_of_spinning(
    wait_ready,
):
    # Each worker may open 64 descriptors; 200 clients that connect and send nothing fill
    # them. What cannot be accepted waits in the socket, the workers' loops stay idle (a pause
    # of 100 ms after EMFILE, not a retry at every readiness), and once the clients leave the
    # cluster serves again.
    argv = ["bash", "-c", 'ulimit -n 64 && exec "$@"', "worker", *worker_argv("shares-http")]
    with serve_cluster(argv, dispatch="shared") as sup:
        pids = wait_ready(sup, 2)
        addr = sup.address()

        def ticks() -> list[int]:
            out = []
            for pid in pids:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                out.append(int(fields[11]) + int(fields[12]))
            return out

        idle = []
        try:
            for _ in range(200):
                idle.append(socket.create_connection(addr, timeout=5))
            time.sleep(1.0)
            before = ticks()
            time.sleep(1.0)
            used = [t - b for t, b in zip(ticks(), before, strict=True)]
            # Retrying accept on a full descriptor table spins at a whole CPU (100 ticks a
            # second); paused, a worker wakes ten times a second.
            assert all(t < 30 for t in used), f"CPU ticks in 1 s while full: {used}"
        finally:
            for s in idle:
                s.close()
        time.sleep(0.5)
        assert http_get(addr).strip() in ("0", "1")
