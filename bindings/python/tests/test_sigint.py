"""Ctrl-C on a blocking events() loop of a program that handles signals itself
(handle_signals=False) raises KeyboardInterrupt, and `with` stops the cluster cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

from conftest import WORKER, alive

PRIMARY = textwrap.dedent(
    f"""
    import sys, rcluster
    sup = rcluster.Supervisor([sys.executable, {WORKER!r}, "echo"], workers=2, kill_timeout=3,
                            handle_signals=False)
    try:
        with sup:
            for ev in sup.events():
                if ev.kind == "message":
                    print("worker", ev.pid, flush=True)
    except KeyboardInterrupt:
        print("interrupted", sup.stopped, flush=True)
    """
)


def test_sigint_without_rcluster_handlers_interrupts_a_blocking_events_loop_and_stops_cleanly():
    p = subprocess.Popen([sys.executable, "-c", PRIMARY], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p.stdout.readline().split()[1]) for _ in range(2)]
        time.sleep(0.3)  # the main thread is now inside the native wait
        t0 = time.monotonic()
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=15)
    finally:
        p.kill()
    assert p.returncode == 0
    assert out.strip() == "interrupted True"
    assert time.monotonic() - t0 < 5
    assert not any(alive(pid) for pid in pids)
