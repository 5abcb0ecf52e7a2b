"""An embedded primary on its control socket: stats(), and the `rcluster` command acting on
it from outside (ls, reload), as from a shell."""

from __future__ import annotations

import os
import pathlib
import subprocess

import pytest
import rcluster
from conftest import fast, worker_argv

REPO = pathlib.Path(__file__).resolve().parents[3]


def rcluster_bin() -> str:
    """The `rcluster` command of this checkout, built when missing (bounded)."""
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    path = target / "debug" / "rcluster"
    if not path.exists():
        build = ["cargo", "build", "-q", "-p", "rcluster"]
        subprocess.run(build, cwd=REPO, check=True, timeout=600)
    return str(path)


def test_an_embedded_primary_answers_stats_appears_in_ls_and_obeys_reload(tmp_path, monkeypatch):
    # The core finds its socket folder through the process environment, as the command does.
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    name = f"py-ctl-{os.getpid()}"
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    with rcluster.Supervisor(
        worker_argv("echo"), workers=2, name=name, control="required", **fast()
    ) as sup:
        for _ in range(2):
            sup.wait_for("ready")
        st = sup.stats()
        assert (st["name"], st["pid"], st["workers_desired"]) == (name, os.getpid(), 2)
        assert [(w["slot"], w["state"]) for w in st["workers"]] == [(0, "ready"), (1, "ready")]
        assert all(w["rss_bytes"] > 0 for w in st["workers"]), st
        ls = subprocess.run(
            [rcluster_bin(), "ls"], env=env, capture_output=True, text=True, timeout=20
        )
        assert ls.returncode == 0, ls.stderr
        assert name in ls.stdout and "2/2" in ls.stdout, ls.stdout
        # The reload's events reach this process too; the command waits for the outcome.
        reload = subprocess.run(
            [rcluster_bin(), "reload", name], env=env, capture_output=True, text=True, timeout=30
        )
        assert reload.returncode == 0, reload.stdout + reload.stderr
        assert "generation 2 is running on every slot" in reload.stdout
        after = sup.stats()
        assert after["generation"] == 2
        assert all(w["generation"] == 2 for w in after["workers"]), after
    with pytest.raises(rcluster.StoppedError):
        sup.stats()


def test_control_and_name_are_checked():
    with pytest.raises(rcluster.ConfigError, match="control"):
        rcluster.Supervisor(worker_argv("echo"), control="yes")
    with pytest.raises(rcluster.ConfigError, match="name"):
        rcluster.Supervisor(worker_argv("echo"), name="")


def test_rcluster_stop_ends_the_event_loop_of_an_embedded_primary(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    name = f"py-stop-{os.getpid()}"
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    with rcluster.Supervisor(
        worker_argv("echo"), workers=1, name=name, control="required", **fast()
    ) as sup:
        sup.wait_for("ready")
        stop = subprocess.Popen([rcluster_bin(), "stop", name], env=env, stdout=subprocess.PIPE)
        kinds = [ev.kind for ev in sup.events()]  # ends once the cluster has stopped
        assert stop.wait(timeout=30) == 0
        assert "exit" in kinds and sup.stopped
