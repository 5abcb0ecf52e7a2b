"""A pool of 8 worker processes sorting a million random numbers, 100 times, all at once.

    python3 examples/python/pool.py [--workers 8] [--tasks 100] [--count 1000000]

The workers import this file as ``__mp_main__`` (its main block below does not run there) and
run ``sort_random``; the program submits every task at once and waits for them all, as
``Promise.all`` over ``pool.run()`` does in ``examples/node/pool.js``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import rcluster


def sort_random(count: int) -> dict[str, float]:
    """The task: sorts ``count`` random numbers and tells what came out."""
    numbers = sorted(random.random() for _ in range(count))
    return {
        "pid": os.getpid(),
        "min": numbers[0],
        "median": numbers[count // 2],
        "max": numbers[-1],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--count", type=int, default=1_000_000)
    args = ap.parse_args()
    started = time.perf_counter()
    with rcluster.Pool(workers=args.workers) as pool:
        futures = [pool.submit(sort_random, args.count) for _ in range(args.tasks)]
        results = [f.result() for f in futures]
        stats = pool.stats()
    took = time.perf_counter() - started
    pids = {r["pid"] for r in results}
    median = statistics.median(r["median"] for r in results)
    print(
        f"{args.tasks} sorts of {args.count:,} numbers on {len(pids)} workers in {took:.2f} s; "
        f"median of medians {median:.4f}"
    )
    print(stats)


if __name__ == "__main__":
    main()
