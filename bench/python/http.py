"""HTTP dispatch benchmark of the Python binding: the asyncio hello worker
(examples/python/hello_http.py), 2 workers, a new connection per request, rcluster
round-robin (the primary accepts and hands connections over IPC) against `shared` (the
workers accept on the inherited socket) with the same worker.

    python bench/python/http.py        (needs wrk; DURATION=5s CONNS=50 ROUNDS=3)

One cluster runs at a time: each round starts the round-robin cluster and the shared one in
turn (every other round in reverse order), warms it up, measures it and stops it, so a slow
phase of this noisy machine does not land on one of them only. They do not run side by side:
on a 2-CPU machine the round-robin cluster measured up to 30% slower in every round that
followed the other cluster's load (not after an idle neighbour or an idle pause), an effect
of the two clusters together rather than of either (see bench/RESULTS.md).
Throughput is the median round (the best one picks the luckiest outlier); every round is
printed.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HELLO = REPO / "examples" / "python" / "hello_http.py"
DURATION = os.environ.get("DURATION", "5s")
CONNS = os.environ.get("CONNS", "50")
ROUNDS = int(os.environ.get("ROUNDS", "3"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(dispatch: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    p = subprocess.Popen(
        [
            sys.executable,
            str(HELLO),
            "--workers",
            "2",
            "--dispatch",
            dispatch,
            "--listen",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    ready, deadline = 0, time.monotonic() + 30
    assert p.stdout is not None
    while ready < 2 and time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            raise SystemExit(f"http.py: the {dispatch} cluster exited before it was ready")
        ready += line.startswith('Event("ready"')
    if ready < 2:
        raise SystemExit(f"http.py: the {dispatch} cluster was not ready within 30 s")
    # Keep reading its output so that the primary never blocks on a full pipe.
    import threading

    threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
    return p, port


def stop(p: subprocess.Popen[str]) -> None:
    p.send_signal(signal.SIGINT)
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def wrk(port: int, duration: str = DURATION) -> float:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{CONNS}",
            f"-d{duration}",
            "-H",
            "Connection: close",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    errors = re.search(r"Socket errors: (.*)", out)
    if errors:
        print(f"  wrk socket errors on port {port}: {errors.group(1)}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def main() -> None:
    rates: dict[str, list[float]] = {"rr": [], "shared": []}
    order = list(rates)
    for r in range(ROUNDS):
        for name in order if r % 2 == 0 else reversed(order):
            p, port = start(name)
            try:
                wrk(port, "1s")  # warm-up
                rate = wrk(port)
            finally:
                stop(p)
            rates[name].append(rate)
            print(f"python-http round {r + 1} {name}: {rate:.0f} req/s", flush=True)
    rr, shared = statistics.median_low(rates["rr"]), statistics.median_low(rates["shared"])
    print(f"python-http median rr: {rr:.0f} req/s", flush=True)
    print(f"python-http median shared: {shared:.0f} req/s", flush=True)
    print(f"python-http rr/shared: {rr / shared:.2f}", flush=True)


if __name__ == "__main__":
    main()
