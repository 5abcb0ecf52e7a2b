"""IPC benchmark of the Python binding, comparable to Node's `process.send` anchor
(../shared/anchors/node_ipc.js): the primary streams N small messages to one worker, which
counts them and answers the count at the end; the clock stops when the answer arrives. Then
round trips: the primary sends 32 bytes, the worker sends them back, and the primary's
`wait_for` returns (20,000 after 1,000 warm-up ones); beside them the same round trips over
the standard library's `multiprocessing.Pipe`, the anchor a Python program would otherwise use.

    python bench/python/ipc_stream.py [N] [REPEATS] [ROUND_TRIPS]

Two variants, each the median of REPEATS runs:
- `bytes`: a 32-byte payload, as rcluster carries messages (opaque bytes);
- `json`:  `send_json({"i": i, "body": "hello world"})`, decoded by the worker with
  `json.loads`: the same work per message as the Node anchor (which serialises JSON).
This file is its own worker: the supervisor's default command re-runs it.
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import sys
import time

import rcluster


def worker_main() -> None:
    w = rcluster.worker()
    n = 0
    decode = sys.argv[-1] == "--worker-json"
    # Messages come in batches from the native side (one GIL release per batch).
    for m in w.messages():
        if m.startswith(PING):
            w.send(m)
            continue
        if m == b"end":
            w.send(str(n).encode())
            n = 0
            continue
        if decode:
            json.loads(m)
        n += 1


PING = b"ping"
PAYLOAD = b"ping0123456789abcdef0123456789ab"
WARM_UP = 1000


QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p99.9": 0.999}
RTT_RUNS = 3


def percentiles(ns: list[int]) -> dict[str, float]:
    us = sorted(t / 1000 for t in ns)
    return {k: us[min(len(us) - 1, int(len(us) * q))] for k, q in QUANTILES.items()}


def shown(p: dict[str, float]) -> str:
    return " ".join(f"{k} {v:.1f}" for k, v in p.items()) + " us"


def round_trips(count: int) -> dict[str, float]:
    """`count` round trips through one echoing worker; blocking `wait_for`, as a script does."""
    with rcluster.Supervisor([sys.executable, __file__, "--worker"], workers=1) as sup:
        sup.wait_for("ready")
        lat = []
        for i in range(WARM_UP + count):
            t0 = time.perf_counter_ns()
            sup.send(0, PAYLOAD)
            ev = sup.wait_for("message", timeout=10)
            if i >= WARM_UP:
                lat.append(time.perf_counter_ns() - t0)
            assert ev.data == PAYLOAD, ev.data
    return percentiles(lat)


def _pipe_echo(conn) -> None:
    while (m := conn.recv_bytes()) != b"end":
        conn.send_bytes(m)


def pipe_round_trips(count: int) -> dict[str, float]:
    """The same round trips over multiprocessing.Pipe to a child process."""
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.Process(target=_pipe_echo, args=(theirs,), daemon=True)
    child.start()
    lat = []
    for i in range(WARM_UP + count):
        t0 = time.perf_counter_ns()
        ours.send_bytes(PAYLOAD)
        if not ours.poll(10):
            raise TimeoutError("the Pipe child did not answer within 10 s")
        assert ours.recv_bytes() == PAYLOAD
        if i >= WARM_UP:
            lat.append(time.perf_counter_ns() - t0)
    ours.send_bytes(b"end")
    child.join(10)
    return percentiles(lat)


def stream(sup: rcluster.Supervisor, n: int, as_json: bool) -> float:
    send, payload = sup.send, b"0123456789abcdef0123456789abcdef"
    full = 0
    t0 = time.perf_counter()
    for i in range(n):
        while True:
            try:
                if as_json:
                    sup.send_json(0, {"i": i, "body": "hello world"})
                else:
                    send(0, payload)
                break
            except rcluster.QueueFullError:
                # The worker is behind; Node would buffer without bound, rcluster says so.
                full += 1
                time.sleep(0.0005)
    send(0, b"end")
    ev = sup.wait_for("message", timeout=120)
    dt = time.perf_counter() - t0
    assert int(ev.data) == n, (ev.data, n)
    if full:
        print(f"  (queue full {full} times; waited)", file=sys.stderr)
    return n / dt


def run(n: int, repeats: int, as_json: bool) -> float:
    flag = "--worker-json" if as_json else "--worker"
    with rcluster.Supervisor([sys.executable, __file__, flag], workers=1) as sup:
        sup.wait_for("ready")
        stream(sup, min(n, 20000), as_json)  # warm-up
        rates = [stream(sup, n, as_json) for _ in range(repeats)]
    return statistics.median(rates)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 20_000
    for as_json in (False, True):
        name = "json" if as_json else "bytes"
        rate = run(n if not as_json else n // 4, repeats, as_json)
        print(f"python-stream {name}: median of {repeats} = {rate:.0f} msg/s", flush=True)
    # Alternated, so that both see the same machine; then the median of each figure.
    runs: dict[str, list[dict[str, float]]] = {"pipe": [], "rcluster": []}
    for _ in range(RTT_RUNS):
        for name, measure in (("pipe", pipe_round_trips), ("rcluster", round_trips)):
            runs[name].append(measure(count))
            print(f"python-rtt {name}: {shown(runs[name][-1])} ({count} round trips)", flush=True)
    for name, results in runs.items():
        median = {k: statistics.median(r[k] for r in results) for k in QUANTILES}
        print(f"python-rtt median {name}: {shown(median)} ({RTT_RUNS} runs)", flush=True)


if __name__ == "__main__":
    if rcluster.is_worker():
        worker_main()
    else:
        main()
