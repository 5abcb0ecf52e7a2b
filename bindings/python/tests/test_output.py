"""Prefixed worker output: descendants of a worker that hold its output pipes."""

from __future__ import annotations

import os
import signal
import threading

import rcluster
from conftest import fast


def test_stop_returns_while_a_setsid_grandchild_holds_a_workers_prefixed_output(tmp_path):
    pidfile = tmp_path / "grandchildren"
    script = f"setsid sleep 30 & echo $! >> {pidfile}; echo hi; sleep 0.3; exit 1"
    # stop() runs on another thread here, where signal handlers cannot be restored.
    opts = fast(output="prefix", ready_on="spawn", handle_signals=False)
    sup = rcluster.Supervisor(["sh", "-c", script], workers=1, **opts).start()
    try:
        ex = sup.wait_for("exit", timeout=10)
        assert (ex.id, ex.code) == (0, 1)
        assert sup.wait_for("restarting", timeout=10).id == 0
        assert sup.wait_for("spawned", timeout=10).id == 0
        stopped = threading.Event()

        def stop():
            sup.stop(timeout=2.0)
            stopped.set()

        threading.Thread(target=stop, daemon=True).start()
        assert stopped.wait(10), "stop() did not return"
    finally:
        for pid in pidfile.read_text().split() if pidfile.exists() else []:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
