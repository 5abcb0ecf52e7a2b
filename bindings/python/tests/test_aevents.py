"""The asyncio event iterator of the primary."""

from __future__ import annotations

import asyncio
import threading

import rcluster
from conftest import fast, worker_argv


def test_async_event_iterator_sees_the_cluster_without_a_thread():
    async def main():
        threads = threading.active_count()
        kinds = []
        with rcluster.Supervisor(worker_argv("echo"), workers=2, **fast()) as sup:
            async for ev in sup.aevents():
                kinds.append(ev.kind)
                # The loop stays free while waiting: other tasks run.
                await asyncio.sleep(0)
                if ev.kind == "message" and ev.data.startswith(b"{"):
                    sup.send(ev.id, b"async")
                if ev.kind == "message" and ev.data == b"echo:async":
                    if kinds.count("message") == 4:
                        break
            # No Python thread was started for the waiting (the core has its own, native one).
            assert threading.active_count() == threads
        return kinds

    kinds = asyncio.run(asyncio.wait_for(main(), 30))
    assert kinds.count("spawned") == 2 and kinds.count("message") == 4


def test_async_iterator_ends_when_the_cluster_stops():
    async def main():
        sup = rcluster.Supervisor(worker_argv("echo"), workers=1, **fast()).start()
        seen = []
        async for ev in sup.aevents():
            seen.append(ev.kind)
            if ev.kind == "message":
                loop = asyncio.get_running_loop()
                loop.run_in_executor(None, sup.stop)
        return seen

    seen = asyncio.run(asyncio.wait_for(main(), 30))
    assert seen[-1] == "exit"
