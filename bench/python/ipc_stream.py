"""IPC stream benchmark of the Python binding, comparable to Node's `process.send` anchor
(../shared/anchors/node_ipc.js): the primary streams N small messages to one worker, which
counts them and answers the count at the end; the clock stops when the answer arrives.

    python bench/python/ipc_stream.py [N] [REPEATS]

Two variants, each the median of REPEATS runs:
- `bytes`: a 32-byte payload, as rcluster carries messages (opaque bytes);
- `json`:  `send_json({"i": i, "body": "hello world"})`, decoded by the worker with
  `json.loads`: the same work per message as the Node anchor (which serialises JSON).
This file is its own worker: the supervisor's default command re-runs it.
"""

from __future__ import annotations

import json
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
        if m == b"end":
            w.send(str(n).encode())
            n = 0
            continue
        if decode:
            json.loads(m)
        n += 1


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
    for as_json in (False, True):
        name = "json" if as_json else "bytes"
        rate = run(n if not as_json else n // 4, repeats, as_json)
        print(f"python-stream {name}: median of {repeats} = {rate:.0f} msg/s", flush=True)


if __name__ == "__main__":
    if rcluster.is_worker():
        worker_main()
    else:
        main()
