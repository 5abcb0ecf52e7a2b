"""rcluster.Pool against ProcessPoolExecutor and multiprocessing.Pool, in the same run.

    python3 bench/pool/py_pool_bench.py [--workers 2] [--tiny 20000] [--latency 2000]
                                        [--memory 1000000] [--cpu-tasks 16]

Needs ``import rcluster`` (``pip install ./bindings/python``). Measures, with ``--workers``
workers each:

- tiny tasks (echo a small int), all submitted at once, then every result awaited: tasks/s
  for rcluster (default ``concurrent_tasks_per_worker=1``, and 64 to batch), ProcessPoolExecutor
  (``submit``) and multiprocessing.Pool (``apply_async``, fork);
- CPU-bound tasks: the same work on ``--workers`` workers and on 1, the speed-up (best of 3);
- one task on an idle pool, submit to result: p50 and p99 latency;
- one task calling ``os._exit`` among 40: how many futures fail, and whether the pool is
  usable after;
- memory: ``--memory`` tasks submitted through ``max_queue=1000`` (``when_full="wait"``), the
  primary's RSS sampled along the way (it should stay flat).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import statistics
import threading
import time

import rcluster


def echo(x):
    return x


def burn(n):
    s = 0
    for i in range(n):
        s += i * i
    return s


def die(_):
    import os

    os._exit(3)


def crash(make, w: int) -> tuple[int, int, bool]:
    """One task calls os._exit among 40 others: (futures failed, futures, usable after)."""
    with make(w) as ex:
        futs = [ex.submit(burn, 200_000) for _ in range(20)]
        bad = ex.submit(die, 0)
        futs += [ex.submit(echo, i) for i in range(20)]
        failed = 0
        for f in [*futs, bad]:
            try:
                f.result(60)
            except Exception:  # noqa: BLE001 - any failure of the task counts
                failed += 1
        try:
            usable = ex.submit(echo, 1).result(60) == 1
        except Exception:  # noqa: BLE001 - any failure means unusable
            usable = False
        return failed, len(futs) + 1, usable


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def warm(ex, w: int) -> None:
    """Every worker started and ready, so that start-up is not measured."""
    list(ex.map(echo, range(100)))
    if isinstance(ex, rcluster.Pool):
        deadline = time.monotonic() + 60
        while ex.stats()["workers_ready"] < w and time.monotonic() < deadline:
            time.sleep(0.01)


def tiny_futures(ex, n: int, w: int) -> float:
    warm(ex, w)
    t = time.perf_counter()
    futs = [ex.submit(echo, i) for i in range(n)]
    for f in futs:
        f.result()
    return n / (time.perf_counter() - t)


def tiny_mp(n: int, w: int) -> float:
    with mp.get_context("fork").Pool(w) as p:
        p.map(echo, range(100))
        t = time.perf_counter()
        rs = [p.apply_async(echo, (i,)) for i in range(n)]
        for r in rs:
            r.get()
        return n / (time.perf_counter() - t)


def cpu_time(make, w: int, tasks: int, n: int) -> float:
    with make(w) as ex:
        warm(ex, w)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            list(ex.map(burn, [n] * tasks))
            best = min(best, time.perf_counter() - t)
        return best


def latency(submit_wait, count: int) -> tuple[float, float]:
    samples = []
    for _ in range(count):
        t = time.perf_counter()
        submit_wait()
        samples.append(time.perf_counter() - t)
    samples.sort()
    return samples[len(samples) // 2] * 1e6, samples[int(len(samples) * 0.99)] * 1e6


def latencies(w: int, count: int) -> dict[str, tuple[float, float]]:
    out = {}
    with rcluster.Pool(w) as pool:
        warm(pool, w)
        out["rcluster.Pool"] = latency(lambda: pool.submit(echo, 1).result(), count)
    with cf.ProcessPoolExecutor(w) as ex:
        warm(ex, w)
        out["ProcessPoolExecutor"] = latency(lambda: ex.submit(echo, 1).result(), count)
    with mp.get_context("fork").Pool(w) as p:
        p.map(echo, range(w))
        out["multiprocessing.Pool"] = latency(
            lambda: p.apply_async(echo, (1,)).get(), count
        )
    return out


def memory(w: int, n: int) -> list[tuple[int, int]]:
    """(tasks submitted, RSS KiB) every tenth of the way; futures are not kept."""
    done = threading.Semaphore(0)
    samples = [(0, rss_kib())]
    with rcluster.Pool(
        w, max_queue=1000, when_full="wait", concurrent_tasks_per_worker=64
    ) as pool:
        step = max(n // 10, 1)
        for i in range(n):
            pool.submit(echo, i).add_done_callback(lambda _f: done.release())
            if (i + 1) % step == 0:
                samples.append((i + 1, rss_kib()))
        for _ in range(n):
            done.acquire()
    samples.append((n, rss_kib()))
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tiny", type=int, default=20000)
    ap.add_argument("--latency", type=int, default=2000)
    ap.add_argument("--memory", type=int, default=1_000_000)
    ap.add_argument("--cpu-tasks", type=int, default=16)
    ap.add_argument("--cpu-n", type=int, default=300_000)
    a = ap.parse_args()
    w = a.workers

    print(f"== tiny tasks, {a.tiny} submitted at once, {w} workers (tasks/s)")
    with rcluster.Pool(w) as pool:
        r1 = tiny_futures(pool, a.tiny, w)
    with rcluster.Pool(w, concurrent_tasks_per_worker=64) as pool:
        r64 = tiny_futures(pool, a.tiny, w)
    with cf.ProcessPoolExecutor(w) as ex:
        ppe = tiny_futures(ex, a.tiny, w)
    mpp = tiny_mp(a.tiny, w)
    print(f"rcluster.Pool (1 task per worker):   {r1:10,.0f}")
    print(f"rcluster.Pool (64 tasks per worker): {r64:10,.0f}")
    print(f"ProcessPoolExecutor:                 {ppe:10,.0f}")
    print(f"multiprocessing.Pool apply_async:    {mpp:10,.0f}")
    # The targets are for the default of one task per worker; 64 is shown for comparison.
    print(
        f"rcluster / ProcessPoolExecutor: {r1 / ppe:.2f}x (target 5x; 64 per worker {r64 / ppe:.2f}x)"
    )
    print(
        f"rcluster / multiprocessing.Pool: {r1 / mpp:.2f}x (target 2x; 64 per worker {r64 / mpp:.2f}x)"
    )

    print(
        f"== CPU-bound, {a.cpu_tasks} tasks of burn({a.cpu_n}), {w} workers against 1"
    )
    one = cpu_time(rcluster.Pool, 1, a.cpu_tasks, a.cpu_n)
    many = cpu_time(rcluster.Pool, w, a.cpu_tasks, a.cpu_n)
    ppe_one = cpu_time(cf.ProcessPoolExecutor, 1, a.cpu_tasks, a.cpu_n)
    ppe_many = cpu_time(cf.ProcessPoolExecutor, w, a.cpu_tasks, a.cpu_n)
    print(
        f"rcluster.Pool:       {one:.2f} s / {many:.2f} s = {one / many:.2f}x (target 1.9x)"
    )
    print(
        f"ProcessPoolExecutor: {ppe_one:.2f} s / {ppe_many:.2f} s = {ppe_one / ppe_many:.2f}x"
    )

    print(f"== one task on an idle pool, {a.latency} times (microseconds)")
    for name, (p50, p99) in latencies(w, a.latency).items():
        print(f"{name:22} p50 {p50:8.0f}  p99 {p99:8.0f}")

    print("== one task calls os._exit among 40 others")
    for name, make in (
        ("rcluster.Pool", rcluster.Pool),
        ("ProcessPoolExecutor", cf.ProcessPoolExecutor),
    ):
        failed, total, usable = crash(make, w)
        print(f"{name:22} {failed} of {total} futures failed; usable after: {usable}")

    print(f"== memory: {a.memory} tasks through max_queue=1000 (primary RSS, KiB)")
    samples = memory(w, a.memory)
    print("  ".join(f"{n}:{kib}" for n, kib in samples))
    mid = statistics.median(k for _, k in samples[1:])
    print(
        f"RSS at start {samples[0][1]} KiB, median {mid:.0f}, last {samples[-1][1]} KiB"
    )


if __name__ == "__main__":
    main()
