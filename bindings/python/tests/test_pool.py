"""rcluster.Pool end to end: real worker processes, real crashes, signals and timeouts."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError, wait

import pool_tasks as t
import pytest
import rcluster

#: Generous bound for anything that needs workers to start on a loaded machine.
SLOW = 30.0


def test_results_arrive_for_every_task_in_submission_order_with_map_and_out_of_order_with_submit():
    with rcluster.Pool(2) as pool:
        assert list(pool.map(t.add, range(100), range(100))) == [2 * i for i in range(100)]
        assert list(pool.map(t.echo, range(1000), chunksize=64)) == list(range(1000))
        wait_ready(pool, 2)  # the fast task must not wait for the slow one's worker
        slow = pool.submit(t.sleep_then, 1.0, "slow")
        fast = pool.submit(t.sleep_then, 0.0, "fast")
        done = []
        for f in (slow, fast):
            f.add_done_callback(lambda f: done.append(f.result()))
        assert slow.result(SLOW) == "slow" and fast.result(SLOW) == "fast"
        assert done == ["fast", "slow"]
        assert pool.submit(t.add, 1, b=2).result(SLOW) == 3


def test_exception_raised_in_a_task_is_raised_again_with_its_type_and_remote_traceback():
    with rcluster.Pool(1) as pool:
        f = pool.submit(t.fail, "boom")
        with pytest.raises(t.TaskFailed, match="boom") as info:
            f.result(SLOW)
        tb = info.value.remote_traceback
        assert "pool_tasks.py" in tb and "in fail" in tb and "TaskFailed: boom" in tb
        assert tb in str(info.value.__cause__)
        assert pool.submit(t.echo, 5).result(SLOW) == 5


@pytest.mark.parametrize(
    ("crash", "args", "expect"),
    [(t.exit_process, (7,), "exit code 7"), (t.segfault, (), "SIGSEGV")],
    ids=["os_exit", "sigsegv"],
)
def test_task_that_kills_its_worker_fails_alone_while_1000_others_in_flight_succeed(
    crash, args, expect
):
    with rcluster.Pool(2, restart=rcluster.RestartPolicy(backoff_initial=0.02)) as pool:
        before = [pool.submit(t.echo, i) for i in range(500)]
        bad = pool.submit(crash, *args)
        after = [pool.submit(t.echo, i) for i in range(500, 1000)]
        with pytest.raises(rcluster.WorkerCrashedError, match=expect) as info:
            bad.result(SLOW)
        if crash is t.segfault:
            assert (info.value.signal, info.value.signal_name) == (signal.SIGSEGV, "SIGSEGV")
        else:
            assert info.value.exit_code == 7
        assert [f.result(SLOW) for f in before + after] == list(range(1000))
        assert pool.submit(t.echo, "still usable").result(SLOW) == "still usable"
        stats = pool.stats()
        assert (stats["failed_crashed"], stats["completed"]) == (1, 1001)


def test_runaway_task_with_a_200ms_timeout_fails_within_250ms_and_others_are_unaffected(tmp_path):
    with rcluster.Pool(2, task_timeout=0.2) as pool:
        wait_ready(pool, 2)
        mark = tmp_path / "started"
        runaway = pool.submit(t.spin_marked, str(mark), 30)
        failed_at = []
        runaway.add_done_callback(lambda _f: failed_at.append(time.monotonic()))
        others = [pool.submit(t.sleep_then, 0.01, i) for i in range(20)]
        with pytest.raises(rcluster.TaskTimeoutError, match="timed out after 200 ms"):
            runaway.result(SLOW)
        # From the moment the task started in its worker to the moment its future failed.
        took = failed_at[0] - float(mark.read_text())
        assert [f.result(SLOW) for f in others] == list(range(20))
        assert took < 0.25, f"the runaway task failed {took * 1000:.0f} ms after it started"
        assert pool.stats()["failed_timeout"] == 1


def wait_ready(pool: rcluster.Pool, n: int) -> None:
    deadline = time.monotonic() + SLOW
    while pool.stats()["workers_ready"] < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool.stats()["workers_ready"] == n


def test_per_task_timeout_given_to_run_replaces_the_pool_timeout():
    with rcluster.Pool(1) as pool:
        with pytest.raises(rcluster.TaskTimeoutError) as info:
            pool.run(t.spin, (30,), timeout=0.3).result(SLOW)
        assert info.value.timeout == 0.3
        assert pool.run(t.add, (1,), {"b": 1}).result(SLOW) == 2


def test_cancel_of_a_queued_task_ends_it_cancelled_and_it_never_runs():
    with rcluster.Pool(1) as pool:
        first = pool.submit(t.sleep_then, 0.5, "first")
        # The worker holds one task sent ahead of the running one: this one, so that the
        # next stays in the pool's queue.
        ahead = pool.submit(t.echo, "ahead")
        deadline = time.monotonic() + SLOW
        while pool.stats()["running"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        queued = pool.submit(t.exit_process, 9)  # would crash the worker if it ran
        assert queued.cancel()
        assert queued.cancelled()
        with pytest.raises(CancelledError):
            queued.result(SLOW)
        assert first.result(SLOW) == "first"
        assert ahead.result(SLOW) == "ahead"
        assert pool.submit(t.echo, 1).result(SLOW) == 1
        stats = pool.stats()
        assert (stats["failed_crashed"], stats["failed_cancelled"]) == (0, 1)


def test_cancel_of_a_task_waiting_in_its_worker_leaves_the_worker_alive():
    with rcluster.Pool(1) as pool:
        worker = pool.submit(t.pid).result(SLOW)
        first = pool.submit(t.sleep_then, 0.5, "first")
        waiting = pool.submit(t.echo, "sent ahead")
        deadline = time.monotonic() + SLOW
        while pool.stats()["running"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert waiting.cancel()
        with pytest.raises(CancelledError):
            waiting.result(SLOW)
        assert first.result(SLOW) == "first"
        assert pool.submit(t.pid).result(SLOW) == worker
        stats = pool.stats()
        assert (stats["failed_crashed"], stats["failed_cancelled"]) == (0, 1)


def test_a_task_sent_ahead_and_cancelled_never_runs_and_the_same_worker_goes_on(tmp_path):
    mark = tmp_path / "ran"
    with rcluster.Pool(1) as pool:
        # Quick tasks first: the pool then sends several tasks ahead to a worker.
        assert list(pool.map(t.echo, range(200))) == list(range(200))
        worker = pool.submit(t.pid).result(SLOW)
        first = pool.submit(t.sleep_then, 0.1, "first")
        second = pool.submit(t.sleep_then, 0.4, "second")
        waiting = pool.submit(t.touch, str(mark))
        deadline = time.monotonic() + SLOW
        while pool.stats()["running"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.stats()["running"] == 3
        # The worker took the second task and the touch together once the first ended, and
        # holds the touch while the second runs.
        assert first.result(SLOW) == "first"
        assert waiting.cancel()
        assert second.result(SLOW) == "second"
        assert pool.submit(t.pid).result(SLOW) == worker
        assert not mark.exists(), "the cancelled task ran"
        assert pool.stats()["running"] == 0


def test_cancel_of_a_running_task_kills_its_worker_and_the_pool_carries_on():
    with rcluster.Pool(1, restart=rcluster.RestartPolicy(backoff_initial=0.02)) as pool:
        worker = pool.submit(t.pid).result(SLOW)
        running = pool.submit(t.sleep_then, 30, "never")
        deadline = time.monotonic() + SLOW
        while pool.stats()["running"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert running.cancel()
        with pytest.raises(CancelledError):
            running.result(SLOW)
        replacement = pool.submit(t.pid).result(SLOW)
        assert replacement != worker
        assert not _alive(worker)
        assert pool.stats()["failed_cancelled"] == 1


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_full_queue_rejects_with_queue_full_error():
    with rcluster.Pool(1, max_queue=3) as pool:
        pool.submit(t.sleep_then, 0.5, None)
        # The worker also holds one task sent ahead of the running one: both in it first.
        ahead = pool.submit(t.echo, "ahead")
        deadline = time.monotonic() + SLOW
        while pool.stats()["running"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        queued = [pool.submit(t.echo, i) for i in range(3)]
        with pytest.raises(rcluster.QueueFullError) as info:
            pool.submit(t.echo, "no room")
        assert info.value.limit == 3
        assert [f.result(SLOW) for f in queued] == [0, 1, 2]
        assert ahead.result(SLOW) == "ahead"


def test_full_queue_with_when_full_wait_blocks_the_submitter_until_there_is_room():
    with rcluster.Pool(1, max_queue=2, when_full="wait") as pool:
        started = time.monotonic()
        futures = [pool.submit(t.sleep_then, 0.1, i) for i in range(8)]
        # 8 tasks of 0.1 s through one worker and a queue of 2: the last submits waited.
        assert time.monotonic() - started >= 0.25
        assert [f.result(SLOW) for f in futures] == list(range(8))
        assert pool.stats()["failed"] == 0


def test_workers_are_recycled_after_max_tasks_per_worker_and_no_task_fails():
    # A worker past its limit keeps running tasks until its replacement (a spare worker,
    # started first) is ready, then retires: the limit is where replacing begins.
    with rcluster.Pool(2, max_tasks_per_worker=5) as pool:
        pool.submit(t.echo, None).result(SLOW)
        pids = []
        deadline = time.monotonic() + SLOW
        while pool.stats()["recycled"] < 2 and time.monotonic() < deadline:
            pids += pool.map(t.pid, range(20))
        assert len(set(pids)) >= 3, pids
        stats = pool.stats()
        assert stats["recycled"] >= 2 and stats["failed"] == 0, stats


def test_recycling_makes_no_task_wait_for_a_replacement():
    with rcluster.Pool(2, max_tasks_per_worker=5) as pool:
        pool.submit(t.echo, None).result(SLOW)
        list(pool.map(t.pid, range(60)))
        # A retiring worker's replacement should start before the old one retires: the longest
        # wait of a task in the queue would then stay far below a worker's start-up time.
        assert pool.stats()["wait_max"] < 0.3, pool.stats()


def test_shutdown_with_cancel_futures_cancels_queued_tasks_and_finishes_running_ones():
    pool = rcluster.Pool(1)
    running = pool.submit(t.sleep_then, 0.5, "ran")
    deadline = time.monotonic() + SLOW
    while pool.stats()["running"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    queued = [pool.submit(t.echo, i) for i in range(50)]
    pool.shutdown(wait=True, cancel_futures=True)
    assert running.result(0) == "ran"
    assert all(f.cancelled() for f in queued)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(t.echo, 1)


def test_shutdown_without_cancel_futures_runs_every_queued_task():
    pool = rcluster.Pool(2)
    futures = [pool.submit(t.sleep_then, 0.01, i) for i in range(40)]
    pool.shutdown(wait=True)
    assert [f.result(0) for f in futures] == list(range(40))


def test_asyncio_run_in_executor_awaits_pool_tasks():
    async def main():
        loop = asyncio.get_running_loop()
        with rcluster.Pool(2) as pool:
            got = await asyncio.gather(
                *(loop.run_in_executor(pool, t.add, i, 1) for i in range(50))
            )
            with pytest.raises(t.TaskFailed):
                await loop.run_in_executor(pool, t.fail, "async")
            slow = loop.run_in_executor(pool, t.sleep_then, 30, None)
            await asyncio.sleep(0.3)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            return got

    assert asyncio.run(main()) == list(range(1, 51))


def test_unpicklable_argument_fails_submit_with_an_error_naming_its_type():
    with rcluster.Pool(1) as pool:
        with pytest.raises(rcluster.SerializationError, match="argument 1 .* _thread.lock") as info:
            pool.submit(t.add, 1, threading.Lock())
        assert isinstance(info.value, TypeError)
        with pytest.raises(rcluster.SerializationError, match="the function .*function"):
            pool.submit(lambda: 1)


def test_unpicklable_result_or_exception_fails_the_task_with_an_error_naming_its_type():
    with rcluster.Pool(1) as pool:
        with pytest.raises(rcluster.SerializationError, match="_thread.lock"):
            pool.submit(t.unpicklable_result).result(SLOW)
        with pytest.raises(rcluster.SerializationError, match="raise_unpicklable.<locals>.Local"):
            pool.submit(t.raise_unpicklable).result(SLOW)
        assert pool.submit(t.echo, 1).result(SLOW) == 1


MAIN_SCRIPT = """
import os, sys
import rcluster

def square(x):
    return x * x

if __name__ == "__main__":
    print("main block ran in", os.getpid(), flush=True)
    with rcluster.Pool(2) as pool:
        print("results", list(pool.map(square, range(6))), flush=True)
"""


def test_functions_defined_in_the_main_script_run_in_workers_without_rerunning_its_main_block(
    tmp_path,
):
    script = tmp_path / "main_script.py"
    script.write_text(MAIN_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line for line in lines if line.startswith("results")] == [
        "results [0, 1, 4, 9, 16, 25]"
    ]
    assert len([line for line in lines if line.startswith("main block ran")]) == 1, out.stdout


BROKEN_SCRIPT = """
import os, sys
import rcluster

if __name__ != "__main__":
    with open(os.environ["LOADS"], "a") as f:
        f.write("load\\n")
    raise ImportError("this module cannot load in a worker")

def square(x):
    return x * x

if __name__ == "__main__":
    import time
    with rcluster.Pool(2, restart=rcluster.RestartPolicy(backoff_initial=0.01)) as pool:
        f = pool.submit(square, 3)
        try:
            f.result(30)
        except rcluster.PoolBrokenError as e:
            print("broken:", repr(str(e)), flush=True)
        time.sleep(1.0)
        try:
            pool.submit(square, 4)
        except rcluster.PoolBrokenError as e:
            print("submit:", type(e).__name__, flush=True)
"""


def test_worker_code_that_fails_to_import_gives_a_clear_error_and_no_crash_loop(tmp_path):
    script = tmp_path / "broken_script.py"
    script.write_text(BROKEN_SCRIPT)
    loads = tmp_path / "loads"
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "LOADS": str(loads)},
    )
    assert out.returncode == 0, out.stderr
    assert "broken:" in out.stdout, out.stdout + out.stderr
    assert "this module cannot load in a worker" in out.stdout
    assert "ImportError" in out.stdout
    assert "submit: PoolBrokenError" in out.stdout
    # Each of the two workers tried once; neither was restarted.
    assert loads.read_text().count("load") == 2


def test_initializer_runs_in_each_worker_before_its_tasks():
    with rcluster.Pool(2, initializer=t.set_env, initargs=("POOL_INIT", "yes")) as pool:
        assert set(pool.map(t.getenv, ["POOL_INIT"] * 10)) == {"yes"}
    with pytest.raises(rcluster.SerializationError, match="argument 0 of the initializer"):
        rcluster.Pool(1, initializer=t.set_env, initargs=(threading.Lock(), "x"))


def test_wait_on_futures_sees_cancelled_and_finished_ones():
    with rcluster.Pool(1) as pool:
        a = pool.submit(t.sleep_then, 0.2, "a")
        b = pool.submit(t.echo, "b")
        b.cancel()
        done, not_done = wait([a, b], timeout=SLOW)
        assert (done, not_done) == ({a, b}, set())


def test_tasks_given_to_workers_in_batches_all_get_their_results():
    with rcluster.Pool(2, concurrent_tasks_per_worker=32) as pool:
        futures = [pool.submit(t.add, i, 1) for i in range(3000)]
        assert [f.result(SLOW) for f in futures] == list(range(1, 3001))
        assert pool.stats()["failed"] == 0


def test_shutdown_leaves_no_worker_process_and_no_descriptor_behind():
    gc.collect()  # pools of earlier tests, still referenced by cycles, close theirs first
    before = rcluster._rcluster.open_fd_count()
    with rcluster.Pool(2) as pool:
        pids = set(pool.map(t.pid, range(20)))
    assert pids and not any(_alive(p) for p in pids)
    # The core pool's own descriptors (its wake-up and outcome eventfds) go with the object.
    del pool
    gc.collect()
    assert rcluster._rcluster.open_fd_count() == before


def test_invalid_options_fail_with_config_errors_naming_the_option():
    with pytest.raises(rcluster.ConfigError, match="workers"):
        rcluster.Pool(0)
    with pytest.raises(rcluster.ConfigError, match="when_full"):
        rcluster.Pool(1, when_full="drop")
    with pytest.raises(rcluster.ConfigError, match="task_timeout"):
        rcluster.Pool(1, task_timeout=-1.0)
    with pytest.raises(rcluster.ConfigError, match="max_queue"):
        rcluster.Pool(1, max_queue=0)
    with pytest.raises(ValueError, match="chunksize"), rcluster.Pool(1) as pool:
        pool.map(t.echo, [1], chunksize=0)


def test_pool_collected_without_shutdown_finishes_its_tasks_and_stops_its_workers():
    pool = rcluster.Pool(1)
    worker = pool.submit(t.pid).result(SLOW)
    last = pool.submit(t.sleep_then, 0.2, "done")
    del pool
    gc.collect()
    assert last.result(SLOW) == "done"
    deadline = time.monotonic() + SLOW
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(worker)


UNGUARDED_SCRIPT = """
import rcluster

def square(x):
    return x * x

pool = rcluster.Pool(2)
try:
    pool.submit(square, 3).result(30)
except rcluster.PoolBrokenError as e:
    print("broken:", repr(str(e)), flush=True)
pool.shutdown()
"""


def test_pool_created_at_import_time_of_the_main_script_fails_clearly_instead_of_multiplying(
    tmp_path,
):
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "broken:" in out.stdout, out.stdout + out.stderr
    assert "if __name__ ==" in out.stdout


EXIT_SCRIPT = """
import threading
import rcluster

def echo(x):
    return x

def run():
    done = threading.Semaphore(0)
    with rcluster.Pool(2) as pool:
        for i in range(2000):
            pool.submit(echo, i).add_done_callback(lambda _f: done.release())
        for _ in range(2000):
            done.acquire()

if __name__ == "__main__":
    run()
    print("ran", flush=True)
"""


def test_program_that_ends_right_after_a_pool_was_shut_down_and_collected_exits_cleanly(tmp_path):
    script = tmp_path / "exit_script.py"
    script.write_text(EXIT_SCRIPT)
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        assert (out.returncode, out.stdout, out.stderr) == (0, "ran\n", "")
