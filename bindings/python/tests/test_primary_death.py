"""A Python primary killed with SIGKILL leaves nothing behind: every process of every worker's
group is gone within a second (the core's sentinel kills the groups), and where the cluster has
a cgroup of its own, so are descendants that left the group with setsid."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from conftest import HERE

MARK_VAR = "RCLUSTER_TEST_MARK"


def stat(pid: int) -> list[str] | None:
    """[state, ppid, pgrp, session] of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()[:4]


def running(pid: int) -> bool:
    s = stat(pid)
    return s is not None and s[0] != "Z"


def marked(mark: str) -> list[int]:
    """Running processes whose environment carries the mark."""
    needle = f"{MARK_VAR}={mark}".encode()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid() or not running(int(d)):
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(d))
        except OSError:
            pass
    return found


def test_a_sigkilled_python_primary_takes_every_process_of_its_workers_groups_within_a_second():
    mark = f"python-{os.getpid()}-{time.monotonic_ns()}"
    env = {**os.environ, MARK_VAR: mark}
    p = subprocess.Popen(
        [sys.executable, str(HERE / "death_primary.py")], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        workers = [int(x) for x in p.stdout.readline().split()]
        assert len(workers) == 2

        def in_groups() -> list[int]:
            return [q for q in marked(mark) if int((stat(q) or ["", "", "0"])[2]) in workers]

        def escaped() -> list[int]:
            return [
                q for q in marked(mark) if (s := stat(q)) and int(s[3]) == q and q not in workers
            ]

        deadline = time.monotonic() + 10
        while (len(in_groups()) < 4 or len(escaped()) < 2) and time.monotonic() < deadline:
            time.sleep(0.01)
        group = in_groups()
        assert len(group) == 4, group
        with open(f"/proc/{workers[0]}/cgroup") as f:
            cgroup = "/rcluster." in f.read()

        p.kill()
        killed_at = time.monotonic()
        p.wait(timeout=10)
        while any(map(running, group)) and time.monotonic() - killed_at < 5:
            time.sleep(0.005)
        took = time.monotonic() - killed_at
        left = [q for q in group if running(q)]
        assert left == [], f"group members outlived the primary: {left}"
        assert took < 1.0, f"the groups took {took:.3f} s to die"
        print(f"python: worker groups gone {took * 1000:.1f} ms after SIGKILL of the primary")
        if cgroup:
            while marked(mark) and time.monotonic() - killed_at < 1.0:
                time.sleep(0.005)
            assert marked(mark) == [], "setsid descendants outlived the primary and its cgroup"
    finally:
        for q in marked(mark):
            try:
                os.kill(q, 9)
            except OSError:
                pass
        p.kill()
