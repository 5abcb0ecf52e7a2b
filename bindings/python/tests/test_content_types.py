"""Content types: what a message is travels with it (docs/protocol.md), between Python and
Python, and across languages with Node, both ways."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import rcluster
from conftest import HERE, WORKER, fast, worker_argv

NODE_DIR = HERE.parents[1] / "node"
V8_X1 = bytes.fromhex("ff0f6f22017849027b01")  # v8.serialize({x: 1})
# What the typed-echo worker sends first: (content type, bytes).
SENT_BY_WORKER = [
    ("raw", b'J{"a":1}'),
    ("raw", b"V\xff\x0f"),
    ("raw", b'C{"act":"listening"}'),
    ("text", "h\u00e9llo \u2713".encode()),
    ("json", b'{"n":[1,2]}'),
    ("v8", V8_X1),
    ("binding", b'{"act":"not-known-to-anyone"}'),
    ("raw", b"done"),
]


def node() -> str:
    """The node program, when the Node binding has been built (its test suite builds it)."""
    exe = shutil.which("node")
    if exe is None or not (NODE_DIR / "rcluster.node").exists():
        pytest.skip("node or the built Node binding (bindings/node/rcluster.node) is missing")
    return exe


def test_a_python_worker_and_primary_keep_every_type_and_every_byte():
    with rcluster.Supervisor(worker_argv("typed-echo"), workers=1, **fast()) as sup:
        got = [sup.wait_for("message") for _ in SENT_BY_WORKER]
        assert [(e.content_type, e.data) for e in got] == SENT_BY_WORKER
        sup.send(0, b"bytes")
        sup.send(0, "str \u2713")
        sup.send_json(0, {"a": 1})
        sup.send(0, V8_X1, content_type="v8")
        back = [sup.wait_for("message") for _ in range(4)]
        assert [(e.content_type, e.data) for e in back] == [
            ("raw", b"bytes"),
            ("text", "str \u2713".encode()),
            ("json", b'{"a":1}'),
            ("v8", V8_X1),
        ]
        assert sup.broadcast("all", content_type="json") == 1
        assert sup.wait_for("message").content_type == "json"


def test_messages_skips_the_bookkeeping_of_other_bindings():
    with rcluster.Supervisor(worker_argv("echo"), workers=1, **fast()) as sup:
        sup.wait_for("message")
        sup.send(0, b'{"act":"init"}', content_type="binding")
        sup.send(0, b"after")
        assert sup.wait_for("message").data == b"echo:after"


def test_an_unknown_content_type_is_refused_naming_it():
    with rcluster.Supervisor(worker_argv("echo"), workers=1, **fast()) as sup:
        sup.wait_for("message")
        with pytest.raises(rcluster.ConfigError, match="content_type.*yaml"):
            sup.send(0, b"x", content_type="yaml")


def test_a_python_worker_and_a_node_primary_understand_each_other():
    out = subprocess.run(
        [node(), str(HERE / "node" / "primary.js"), sys.executable, WORKER, "typed-echo"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    first, _, echoes = out.stdout.partition("--\n")
    # Raw bytes that start like Node's old tags stay raw; Node ignores a binding message it
    # cannot read.
    assert [json.loads(line) for line in first.splitlines()] == [
        {"buffer": b'J{"a":1}'.hex()},
        {"buffer": b"V\xff\x0f".hex()},
        {"buffer": b'C{"act":"listening"}'.hex()},
        {"string": "h\u00e9llo \u2713"},
        {"value": {"n": [1, 2]}},
        {"value": {"x": 1}},
        {"buffer": b"done".hex()},
    ]
    assert [json.loads(line) for line in echoes.splitlines()] == [
        {"buffer": b'J{"b":2}'.hex()},
        {"string": "text \u2713"},
        {"value": {"k": "v", "list": [1, "two"]}},
        {"value": {"y": [1]}},
        {"buffer": ""},
    ]


def test_a_node_worker_and_a_python_primary_understand_each_other():
    argv = [node(), str(HERE / "node" / "worker.js")]
    with rcluster.Supervisor(argv, workers=1, **fast()) as sup:
        got = [sup.wait_for("message") for _ in range(5)]
        assert [(e.content_type, e.data) for e in got] == [
            ("raw", b'J{"a":1}'),
            ("text", "h\u00e9llo \u2713".encode()),
            ("json", b'{"n":[1,2]}'),
            ("v8", V8_X1),
            ("raw", b"done"),
        ]
        sends = [
            (b'J{"b":2}', "raw", {"buffer": b'J{"b":2}'.hex()}),
            ("text \u2713", None, {"string": "text \u2713"}),
            (b'{"k":[1]}', "json", {"value": {"k": [1]}}),
            (V8_X1, "v8", {"value": {"x": 1}}),
        ]
        for data, content_type, _ in sends:
            sup.send(0, data, content_type)
        for _, _, want in sends:
            ev = sup.wait_for("message")
            assert (ev.content_type, ev.json()) == ("json", want)
