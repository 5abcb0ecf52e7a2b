"""Bad arguments and misuse give clear exceptions, subclasses of rcluster.Error."""

from __future__ import annotations

import socket
import sys

import pytest
import rcluster
from conftest import fast, worker_argv


def start(**kw):
    return rcluster.Supervisor(worker_argv("echo"), **fast(**kw)).start()


def test_zero_workers_is_a_config_error_naming_the_field():
    with pytest.raises(rcluster.ConfigError, match="workers") as e:
        start(workers=0)
    assert e.value.field == "workers"
    assert isinstance(e.value, ValueError) and isinstance(e.value, rcluster.Error)


def test_wrong_types_are_type_errors_naming_the_option():
    with pytest.raises(TypeError, match="workers must be an int"):
        rcluster.Supervisor(worker_argv("echo"), workers="2")
    with pytest.raises(TypeError, match="kill_timeout"):
        rcluster.Supervisor(worker_argv("echo"), kill_timeout="soon")
    with pytest.raises(TypeError, match="single string"):
        rcluster.Supervisor("python3 worker.py")


def test_bad_values_name_the_field():
    for kw, field in [
        (dict(dispatch="fastest", listen=["127.0.0.1:0"]), "dispatch"),
        (dict(listen=["localhost:http"]), "listen"),
        (dict(restart="sometimes"), "restart"),
        (dict(ready_on="later"), "ready_on"),
        (dict(kill_timeout=-1), "kill_timeout"),
        (dict(restart=rcluster.RestartPolicy(jitter=2.0)), "restart.jitter"),
        (dict(event_queue_limit=100), "event_queue_limit"),
        (dict(max_memory=0), "max_memory"),
        (dict(max_memory=-1), "max_memory"),
        (dict(max_requests=0), "max_requests"),
        (dict(max_requests_jitter=5), "max_requests_jitter"),
    ]:
        with pytest.raises(rcluster.ConfigError, match=field.replace(".", r"\.")):
            start(**kw)


def test_ranges_are_the_cores_and_name_the_field():
    # The same bad values as the CLI, C and Node tests, with the core's words.
    Policy = rcluster.RestartPolicy
    for kw, field, words in [
        (dict(workers=-2), "workers", "1..=4096"),
        (dict(send_queue_limit=10), "send_queue_limit", "largest message"),
        (dict(restart=Policy(no_restart_codes=[256])), "restart.no_restart_codes", "0..=255"),
        (dict(restart=Policy(min_uptime=400 * 86400.0)), "restart.min_uptime", "a year"),
        (dict(ack_timeout=0), "ack_timeout", "more than 0"),
        (dict(max_surge=-1), "max_surge", "1..=4096"),
    ]:
        with pytest.raises(rcluster.ConfigError, match=words) as e:
            start(**kw)
        assert e.value.field == field, (kw, e.value)


def test_scale_to_a_negative_count_is_the_cores_error_naming_workers():
    sup = start(workers=1)
    try:
        with pytest.raises(rcluster.ConfigError, match="1..=4096") as e:
            sup.scale(-1)
        assert e.value.field == "workers"
    finally:
        sup.stop()


def test_missing_program_is_reported_before_anything_starts():
    with pytest.raises(rcluster.ConfigError, match="no-such-program-xyz"):
        rcluster.Supervisor(["no-such-program-xyz"]).start()


def test_address_in_use_is_a_bind_error_naming_it():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    addr = f"127.0.0.1:{taken.getsockname()[1]}"
    with taken, pytest.raises(rcluster.BindError, match=addr) as e:
        start(listen=[addr])
    assert e.value.errno == 98 and isinstance(e.value, OSError)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def supervisor(**kw):
    return rcluster.Supervisor(worker_argv("echo"), **fast(**kw))


def test_a_second_supervisor_on_an_address_fails_naming_it_unless_both_share_it():
    addr = f"127.0.0.1:{free_port()}"
    with supervisor(listen=[addr]):
        with pytest.raises(rcluster.BindError, match=addr):
            start(listen=[addr])
    addr = f"127.0.0.1:{free_port()}"
    shared = rcluster.Listener(addr, share=True)
    with supervisor(listen=[shared]) as a, supervisor(listen=[shared]) as b:
        assert a.address() == b.address() == ("127.0.0.1", int(addr.rsplit(":", 1)[1]))
    with pytest.raises(TypeError, match="share"):
        supervisor(listen=[rcluster.Listener(addr, share="yes")])


def test_ack_timeout_takes_seconds_or_none_and_refuses_nonsense():
    with supervisor(ack_timeout=None), supervisor(ack_timeout=0.5):
        pass
    with pytest.raises((TypeError, rcluster.ConfigError), match="ack_timeout"):
        supervisor(ack_timeout="soon")


def test_messages_over_the_limit_and_unknown_workers():
    with rcluster.Supervisor(worker_argv("echo"), max_message=64, **fast()) as sup:
        sup.wait_for("message")
        with pytest.raises(rcluster.MessageTooLargeError, match="65 bytes") as e:
            sup.send(0, b"x" * 65)
        assert (e.value.size, e.value.limit) == (65, 64)
        with pytest.raises(rcluster.NoSuchWorkerError, match="7"):
            sup.send(7, b"x")
        with pytest.raises(TypeError):
            sup.send(0, 42)  # bytes, or a str (sent as text), only
    with pytest.raises(rcluster.StoppedError):
        sup.reload()


def test_using_a_supervisor_before_start_says_how_to_start_it():
    with pytest.raises(rcluster.StoppedError, match="start"):
        rcluster.Supervisor(worker_argv("echo")).workers()


def test_worker_outside_a_cluster_is_not_a_worker():
    assert not rcluster.is_worker()
    with pytest.raises(rcluster.NotAWorkerError, match="not started by an rcluster primary"):
        rcluster.worker()


def test_default_argv_reruns_this_program():
    argv = rcluster.default_argv()
    assert argv[0] == sys.executable and len(argv) >= 2


def test_a_misspelt_option_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match="dispach"):
        rcluster.Supervisor(worker_argv("echo"), dispach="rr")
    with pytest.raises(TypeError, match="max_restart"):
        rcluster.RestartPolicy(max_restart=3)


def test_help_explains_every_option_of_the_supervisor():
    import inspect

    doc = inspect.getdoc(rcluster.Supervisor) or ""
    params = inspect.signature(rcluster.Supervisor.__init__).parameters
    missing = [n for n in params if n != "self" and f"``{n}``" not in doc]
    assert not missing, f"options without a word in help(rcluster.Supervisor): {missing}"
    assert "docs/operations.md" not in doc


def test_a_max_message_above_the_default_queue_raises_the_queue_as_the_cli_does():
    # The queue towards a worker follows max_message unless it is given: the core's rule.
    sup = start(workers=1, max_message=100 << 20)
    sup.stop()
    with pytest.raises(rcluster.ConfigError, match="largest message") as e:
        start(workers=1, max_message=100 << 20, send_queue_limit=64 << 20)
    assert e.value.field == "send_queue_limit"
