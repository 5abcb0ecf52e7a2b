//! The primary against a worker written from `docs/protocol.md` alone, in Python
//! (`tests/python/conformance_worker.py`): if the document were incomplete or wrong, that
//! worker would not interoperate. Skipped (with a note) when `python3` is not on PATH.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcluster_core::frame;
use rcluster_core::{
    Config, ContentType, Event, ExitInfo, ExitReason, ReadyOn, RestartMode, Supervisor, WorkerState,
};
use rcluster_tests::wait_for;

/// Bound for each wait; generous because python3 start-up is slow on a loaded machine.
const WAIT: Duration = Duration::from_secs(15);

fn python3_on_path() -> bool {
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| dir.join("python3").is_file())
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join("conformance_worker.py")
}

/// A one-worker config running the Python worker in `mode`, or None (after a note) when there
/// is no python3. Restarts are off so that a misbehaving worker is not started again and again
/// while a test looks at its first run.
fn python_config(mode: &str) -> Option<Config> {
    if !python3_on_path() {
        eprintln!("note: python3 is not on PATH; skipping this protocol conformance test");
        return None;
    }
    let argv: Vec<OsString> = vec!["python3".into(), script().into(), mode.into()];
    let mut c = Config::new(argv);
    c.workers = 1;
    c.ready_on = ReadyOn::Explicit;
    c.ready_timeout = Duration::from_secs(10);
    c.kill_timeout = Duration::from_secs(3);
    c.restart.mode = RestartMode::Never;
    Some(c)
}

fn next_message(sup: &Supervisor) -> Vec<u8> {
    match wait_for(sup, WAIT, |e| matches!(e, Event::Message { .. })) {
        Event::Message { data, .. } => data,
        _ => unreachable!(),
    }
}

fn next_exit(sup: &Supervisor) -> ExitInfo {
    match wait_for(sup, WAIT, |e| matches!(e, Event::Exit { .. })) {
        Event::Exit { info, .. } => info,
        _ => unreachable!(),
    }
}

fn next_protocol_error(sup: &Supervisor) -> (u32, String) {
    match wait_for(sup, WAIT, |e| matches!(e, Event::ProtocolError { .. })) {
        Event::ProtocolError { id, detail, .. } => (id, detail),
        _ => unreachable!(),
    }
}

fn wait_ready(sup: &Supervisor) {
    wait_for(sup, WAIT, |e| matches!(e, Event::Ready { .. }));
}

/// The same pattern the Python worker fills large messages with.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[test]
fn the_byte_examples_in_the_protocol_document_match_the_encoder() {
    // Kept in step with section 6 of docs/protocol.md by hand; a change here means the
    // document must change too.
    let primary_hello = [
        0x10, 0, 0, 0, 1, 0, 0, 0, //
        1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0,
    ];
    assert_eq!(frame::primary_hello(16 << 20, 0, 1), primary_hello);
    assert_eq!(
        frame::worker_hello(4242),
        [8, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0x92, 0x10, 0, 0]
    );
    let mut message = Vec::new();
    frame::encode(&mut message, frame::Kind::Message, 0, b"ping");
    assert_eq!(message, [4, 0, 0, 0, 4, 0, 0, 0, 0x70, 0x69, 0x6e, 0x67]);
    let mut json = Vec::new();
    frame::encode(
        &mut json,
        frame::Kind::Message,
        ContentType::Json.flags(),
        b"{}",
    );
    assert_eq!(json, [2, 0, 0, 0, 4, 4, 0, 0, 0x7b, 0x7d]);
    let mut ready = Vec::new();
    frame::encode(&mut ready, frame::Kind::Ready, 0, b"");
    assert_eq!(ready, [0, 0, 0, 0, 2, 0, 0, 0]);
}

#[test]
fn hello_makes_the_worker_online_and_its_ready_frame_makes_it_ready() {
    let Some(c) = python_config("echo") else {
        return;
    };
    let sup = Supervisor::start(c).unwrap();
    // Online must come first: it is the hello, and in explicit mode only READY makes it ready.
    let ev = wait_for(&sup, WAIT, |e| {
        matches!(e, Event::Online { .. } | Event::Ready { .. })
    });
    assert!(matches!(ev, Event::Online { id: 0, .. }), "{ev:?}");
    wait_ready(&sup);
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn messages_of_every_size_echo_back_in_order() {
    let Some(c) = python_config("echo") else {
        return;
    };
    let sup = Supervisor::start(c).unwrap();
    wait_ready(&sup);
    let messages = [
        b"ping".to_vec(),
        Vec::new(),
        pattern(1 << 20),
        vec![0; 1],
        pattern(70_000),
        b"last".to_vec(),
    ];
    for m in &messages {
        sup.send(0, m).unwrap();
    }
    for m in &messages {
        let got = next_message(&sup);
        assert!(
            got == *m,
            "expected {} bytes, got {} bytes",
            m.len(),
            got.len()
        );
    }
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_worker_written_from_the_document_echoes_every_content_type_with_its_type() {
    let Some(c) = python_config("echo") else {
        return;
    };
    let sup = Supervisor::start(c).unwrap();
    wait_ready(&sup);
    for content in ContentType::ALL {
        sup.send_as(0, content, b"J{}").unwrap();
        let got = wait_for(&sup, WAIT, |e| matches!(e, Event::Message { .. }));
        assert!(
            matches!(&got, Event::Message { data, content: c, .. } if data == b"J{}" && *c == content),
            "{content}: {got:?}"
        );
    }
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn stop_sends_disconnect_and_the_worker_exits_zero_with_reason_shutdown() {
    let Some(c) = python_config("echo") else {
        return;
    };
    let sup = Supervisor::start(c).unwrap();
    wait_ready(&sup);
    // The worker ignores SIGTERM and exits only on the DISCONNECT frame (status 5 if the frame
    // does not follow the signal), so status 0 proves the frame arrived.
    sup.stop(Duration::from_secs(5)).unwrap();
    let info = next_exit(&sup);
    assert_eq!(
        (info.code, info.signal, info.reason),
        (Some(0), None, ExitReason::Shutdown),
        "{info:?}"
    );
}

#[test]
fn hello_with_another_version_is_a_protocol_error_naming_that_version() {
    let Some(c) = python_config("bad-version") else {
        return;
    };
    let sup = Supervisor::start(c).unwrap();
    let (id, detail) = next_protocol_error(&sup);
    assert_eq!(id, 0);
    assert!(detail.contains("version 99"), "{detail}");
    let info = next_exit(&sup);
    assert_eq!(
        (info.signal, info.reason),
        (Some(libc::SIGKILL), ExitReason::ProtocolError),
        "{info:?}"
    );
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_first_frame_other_than_hello_is_a_protocol_error() {
    let Some(c) = python_config("no-hello") else {
        return;
    };
    let sup = Supervisor::start(c).unwrap();
    let (_, detail) = next_protocol_error(&sup);
    assert!(detail.contains("expected Hello"), "{detail}");
    assert_eq!(next_exit(&sup).reason, ExitReason::ProtocolError);
    sup.stop(Duration::from_secs(5)).unwrap();
}

/// An odd limit, far from the default, so that a worker that ignored the hello's max_message
/// would be caught.
const SMALL_MAX: usize = 100_003;

#[test]
fn a_message_of_exactly_max_message_bytes_is_delivered() {
    let Some(mut c) = python_config("big") else {
        return;
    };
    c.max_message = SMALL_MAX;
    let sup = Supervisor::start(c).unwrap();
    wait_ready(&sup);
    let got = next_message(&sup);
    assert!(
        got == pattern(SMALL_MAX),
        "expected the {SMALL_MAX}-byte pattern, got {} bytes",
        got.len()
    );
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_message_announced_one_byte_over_max_message_is_a_protocol_error() {
    let Some(mut c) = python_config("big") else {
        return;
    };
    c.max_message = SMALL_MAX;
    let sup = Supervisor::start(c).unwrap();
    let (_, detail) = next_protocol_error(&sup);
    assert!(
        detail.contains(&format!(
            "{} bytes exceeds the limit of {SMALL_MAX}",
            SMALL_MAX + 1
        )),
        "{detail}"
    );
    assert_eq!(next_exit(&sup).reason, ExitReason::ProtocolError);
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_protocol_error_ends_only_the_worker_that_made_it() {
    let Some(mut c) = python_config("echo,bad-version") else {
        return;
    };
    c.workers = 2;
    let sup = Supervisor::start(c).unwrap();
    let (id, _) = next_protocol_error(&sup);
    assert_eq!(id, 1);
    let ev = wait_for(&sup, WAIT, |e| matches!(e, Event::Exit { .. }));
    assert!(
        matches!(
            ev,
            Event::Exit {
                id: 1,
                info: ExitInfo {
                    reason: ExitReason::ProtocolError,
                    ..
                },
                ..
            }
        ),
        "{ev:?}"
    );
    // Worker 0 may have become ready before or after that (its Ready event may have been
    // passed over above); either way it must still work.
    let snapshot_ready = || {
        sup.snapshot()
            .unwrap()
            .iter()
            .any(|w| w.id == 0 && w.state == WorkerState::Ready)
    };
    if !snapshot_ready() {
        wait_ready(&sup);
    }
    sup.send(0, b"still here").unwrap();
    assert_eq!(next_message(&sup), b"still here");
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn heartbeats_alone_keep_a_ready_worker_alive() {
    let Some(mut c) = python_config("heartbeat") else {
        return;
    };
    c.heartbeat_timeout = Some(Duration::from_millis(500));
    let sup = Supervisor::start(c).unwrap();
    wait_ready(&sup);
    // The worker sends nothing but a heartbeat every 50 ms: only they can keep it alive for
    // ten timeouts.
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Some(ev) = sup.next_event(Some(deadline.saturating_duration_since(Instant::now()))) {
        assert!(
            !matches!(ev, Event::Exit { .. }),
            "a heartbeating worker was ended: {ev:?}"
        );
    }
    sup.stop(Duration::from_secs(5)).unwrap();
}
