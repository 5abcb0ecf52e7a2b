"""The HTTP side of an embedded primary: ``metrics``, ``ready_min`` and ``drain_delay`` reach
the core; ``/metrics`` (parsed by the Prometheus client's own parser), ``/healthz`` and
``/readyz`` answer a real HTTP client."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest
import rcluster
from conftest import fast, worker_argv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_metrics_ready_min_and_drain_delay_serve_metrics_and_readyz_of_an_embedded_primary():
    parser = pytest.importorskip("prometheus_client.parser")
    port = free_port()
    sup = rcluster.Supervisor(
        worker_argv("echo"),
        workers=1,
        metrics=f"127.0.0.1:{port}",
        ready_min=2,
        drain_delay=1.0,
        **fast(),
    )
    with sup:
        sup.wait_for("ready")
        status, text = get(port, "/metrics")
        assert status == 200
        families = {f.name: f for f in parser.text_string_to_metric_families(text)}
        workers = {s.labels["state"]: s.value for s in families["rcluster_workers"].samples}
        assert workers["ready"] == 1, text
        assert families["rcluster_workers_desired"].samples[0].value == 1
        assert get(port, "/healthz")[0] == 200
        # ready_min 2 with one worker ready: not ready.
        assert get(port, "/readyz")[0] == 503
        sup.scale(2)
        sup.wait_for("ready")
        assert get(port, "/readyz")[0] == 200
        # A stop signal with drain_delay: /readyz fails at once, the cluster keeps serving,
        # and the stop begins after the delay.
        signalled = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        assert get(port, "/readyz")[0] == 503
        assert get(port, "/metrics")[0] == 200
        kinds = [ev.kind for ev in sup.events()]  # ends once the cluster has stopped
        assert time.monotonic() - signalled >= 0.9, kinds
        assert "exit" in kinds


@pytest.mark.parametrize(
    ("option", "value"),
    [("metrics", "nowhere"), ("ready_min", 0), ("drain_delay", -1.0)],
)
def test_a_bad_metrics_ready_min_or_drain_delay_is_a_config_error_naming_it(option, value):
    sup = rcluster.Supervisor(worker_argv("echo"), workers=1, **{option: value})
    with pytest.raises(rcluster.ConfigError, match=option):
        sup.start()
    sup.stop()


def test_metrics_must_be_a_string():
    with pytest.raises(TypeError, match="metrics"):
        rcluster.Supervisor(worker_argv("echo"), metrics=9100)  # type: ignore[arg-type]
