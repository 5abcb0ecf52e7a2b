//! Workers that break the protocol: malformed and oversized frames, stray descriptors.
//!
//! Slot 1 of a two-worker cluster breaks the protocol on command (`!raw HEX` and friends of
//! the test worker: bytes written behind the library's back); slot 0 must keep serving
//! messages and connections through every one of those faults, and each fault must end slot 1
//! alone, with reason `protocol_error` and an event that names the cause.

use std::time::Duration;

use rcluster_core::frame::{self, Kind, FLAG_FD, MAX_CONTROL_BODY};
use rcluster_core::{
    Config, ContentType, Dispatch, Error, Event, ExitInfo, ExitReason, ListenAddr, Listener,
    RestartMode, Supervisor, WorkerState,
};
use rcluster_tests::*;

const WAIT: Duration = Duration::from_secs(15);
/// An odd limit, so that a size in a message can only come from it.
const MAX_MESSAGE: usize = 1009;

/// A frame header with every field chosen by hand (so that it may be wrong), then `body`.
fn raw(len: u32, kind: u8, flags: u8, reserved: [u8; 2], body: &[u8]) -> Vec<u8> {
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(&[kind, flags, reserved[0], reserved[1]]);
    out.extend_from_slice(body);
    out
}

/// A well-formed frame of `kind` with `body` (which may be the wrong body for that kind).
fn framed(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode(&mut out, kind, 0, body);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn config(args: &[&str]) -> Config {
    let mut c = worker_config(2, args);
    c.max_message = MAX_MESSAGE;
    c.listeners = vec![Listener::new(
        "web",
        "127.0.0.1:0".parse().unwrap(),
        Dispatch::RoundRobin,
    )];
    // Slot 1 is ended on purpose again and again: it must come back every time.
    c.restart.max_restarts = 1000;
    c
}

/// Waits for the protocol error of slot 1 and its exit; returns the event's detail.
fn protocol_error_of_slot_1(sup: &Supervisor) -> String {
    let detail = match wait_for(sup, WAIT, |e| matches!(e, Event::ProtocolError { .. })) {
        Event::ProtocolError { id, detail, .. } => {
            assert_eq!(id, 1, "only slot 1 misbehaved: {detail}");
            detail
        }
        _ => unreachable!(),
    };
    let exit = wait_for(sup, WAIT, |e| matches!(e, Event::Exit { .. }));
    assert!(
        matches!(
            exit,
            Event::Exit {
                id: 1,
                info: ExitInfo {
                    reason: ExitReason::ProtocolError,
                    ..
                },
                ..
            }
        ),
        "{exit:?} after {detail:?}"
    );
    // The event says what was wrong once, without the error type's own prefix (a log line
    // adds "protocol error: " itself).
    assert!(
        !detail.starts_with("protocol error"),
        "the detail repeats its prefix: {detail:?}"
    );
    detail
}

/// Slot 0 still answers a message, and the listener still serves a request.
fn cluster_still_serves(sup: &Supervisor, addr: &ListenAddr, round: usize) {
    let text = format!("still here {round}");
    sup.send(0, text.as_bytes()).unwrap();
    let got = wait_for(
        sup,
        WAIT,
        |e| matches!(e, Event::Message { id: 0, data, .. } if *data == text.as_bytes()),
    );
    assert!(matches!(got, Event::Message { id: 0, .. }));
    let reply = request(addr).expect("a request through the listener is served");
    assert_eq!(reply.listener, "web");
}

fn wait_slot_ready(sup: &Supervisor, slot: u32) {
    wait_for(
        sup,
        WAIT,
        |e| matches!(e, Event::Ready { id, .. } if *id == slot),
    );
}

/// Like `wait_slot_ready`, for when its Ready event may have been passed over already.
fn until_slot_ready(sup: &Supervisor, slot: u32) {
    let deadline = std::time::Instant::now() + WAIT;
    while !sup
        .snapshot()
        .unwrap()
        .iter()
        .any(|w| w.id == slot && w.state == WorkerState::Ready)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "slot {slot} never ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn every_malformed_frame_from_a_worker_ends_only_that_worker_naming_the_cause() {
    let ack_of_7_bytes = framed(Kind::ConnectionAck, &[0; 7]);
    let closed_of_9_bytes = framed(Kind::ConnectionClosed, &[0; 9]);
    let mut unlisten_cut = Vec::new();
    frame::put_str(&mut unlisten_cut, "web");
    unlisten_cut.pop();
    let mut listen_trailing = 1u32.to_le_bytes().to_vec();
    listen_trailing.push(0);
    frame::put_str(&mut listen_trailing, "127.0.0.1:0");
    // After the address comes at most one flags byte, with only the flags the protocol defines.
    listen_trailing.extend_from_slice(&[0, 0]);
    let cases: Vec<(&str, Vec<u8>, String)> = vec![
        (
            "unknown kind",
            raw(0, 200, 0, [0, 0], &[]),
            "unknown frame kind 200".into(),
        ),
        (
            "kind 0",
            raw(0, 0, 0, [0, 0], &[]),
            "unknown frame kind 0".into(),
        ),
        (
            "a flag bit that is not defined",
            raw(1, Kind::Message as u8, 0x10, [0, 0], b"x"),
            "reserved header bits set in a Message frame".into(),
        ),
        (
            "a content type on a frame that is not a message",
            raw(0, Kind::Ready as u8, ContentType::Text.flags(), [0, 0], &[]),
            "reserved header bits set in a Ready frame".into(),
        ),
        (
            "a message of a content type this version does not know",
            raw(1, Kind::Message as u8, 6 << 1, [0, 0], b"x"),
            "unknown message content type 6".into(),
        ),
        (
            "a reserved header byte that is not zero",
            raw(0, Kind::Ready as u8, 0, [0, 1], &[]),
            "reserved header bits set in a Ready frame".into(),
        ),
        (
            "the descriptor flag on a kind that never carries one",
            raw(0, Kind::Heartbeat as u8, FLAG_FD, [0, 0], &[]),
            "a Heartbeat frame may not carry a file descriptor".into(),
        ),
        (
            "a control frame longer than the control limit",
            raw(5000, Kind::Heartbeat as u8, 0, [0, 0], &[]),
            format!("Heartbeat frame of 5000 bytes exceeds the limit of {MAX_CONTROL_BODY} bytes"),
        ),
        (
            "a message announced one byte over max_message",
            raw(MAX_MESSAGE as u32 + 1, Kind::Message as u8, 0, [0, 0], &[]),
            format!(
                "Message frame of {} bytes exceeds the limit of {MAX_MESSAGE} bytes",
                MAX_MESSAGE + 1
            ),
        ),
        (
            "a message announced at 4 GiB - 1",
            raw(u32::MAX, Kind::Message as u8, 0, [0, 0], &[]),
            format!("Message frame of {} bytes", u32::MAX),
        ),
        (
            "a Ready with a body",
            framed(Kind::Ready, b"x"),
            "Ready frame with a 1-byte body (must be empty)".into(),
        ),
        (
            "a Heartbeat with a body",
            framed(Kind::Heartbeat, &[0; 3]),
            "Heartbeat frame with a 3-byte body".into(),
        ),
        (
            "a Disconnect with a body",
            framed(Kind::Disconnect, &[0; 2]),
            "Disconnect frame with a 2-byte body".into(),
        ),
        (
            "an acknowledgement of 7 bytes",
            ack_of_7_bytes,
            "ConnectionAck frame body must be an 8-byte id, got 7 bytes".into(),
        ),
        (
            "a close report of 9 bytes",
            closed_of_9_bytes,
            "ConnectionClosed frame body must be an 8-byte id, got 9 bytes".into(),
        ),
        (
            "an acknowledgement of a connection never handed over",
            framed(Kind::ConnectionAck, &77u64.to_le_bytes()),
            "acknowledgement of connection 77, which was not handed to this worker".into(),
        ),
        (
            "a Listen with two bytes after the address",
            framed(Kind::Listen, &listen_trailing),
            format!("malformed Listen frame of {} bytes", listen_trailing.len()),
        ),
        (
            "a Listen too short for its request id",
            framed(Kind::Listen, &[1, 0]),
            "malformed Listen frame of 2 bytes".into(),
        ),
        (
            "an Unlisten whose name is cut",
            framed(Kind::Unlisten, &unlisten_cut),
            format!("malformed Unlisten frame of {} bytes", unlisten_cut.len()),
        ),
        (
            "a Connection frame, which only a primary sends",
            framed(Kind::Connection, &[0; 9]),
            "unexpected Connection frame from a worker".into(),
        ),
        (
            "a ListenResult frame, which only a primary sends",
            framed(Kind::ListenResult, &[0; 5]),
            "unexpected ListenResult frame from a worker".into(),
        ),
        (
            "a second Hello",
            frame::worker_hello(std::process::id()),
            "second Hello".into(),
        ),
    ];
    let sup = Supervisor::start(config(&["echo"])).unwrap();
    wait_ready(&sup, 2);
    let addr = listener_addr(&sup, "web");
    for (round, (what, bytes, cause)) in cases.iter().enumerate() {
        sup.send(1, format!("!raw {}", hex(bytes)).as_bytes())
            .unwrap();
        let detail = protocol_error_of_slot_1(&sup);
        assert!(
            detail.contains(cause.as_str()),
            "{what}: expected {cause:?} in {detail:?}"
        );
        cluster_still_serves(&sup, &addr, round);
        wait_slot_ready(&sup, 1);
    }
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_descriptor_sent_by_a_worker_is_a_protocol_error_and_the_others_keep_serving() {
    let sup = Supervisor::start(config(&["echo"])).unwrap();
    wait_ready(&sup, 2);
    let addr = listener_addr(&sup, "web");
    let heartbeat = hex(&framed(Kind::Heartbeat, &[]));
    sup.send(1, format!("!raw-fds 1 {heartbeat}").as_bytes())
        .unwrap();
    let detail = protocol_error_of_slot_1(&sup);
    assert!(detail.contains("worker sent a file descriptor"), "{detail}");
    cluster_still_serves(&sup, &addr, 0);
    sup.stop(Duration::from_secs(5)).unwrap();
}

/// Descriptors piled on the start of a frame given back: the primary keeps those that may wait
/// for the rest of their frame (16 at most), and one more than that is a protocol error, not
/// descriptors held for a worker that never finishes its frame.
#[test]
fn descriptors_piled_on_a_frame_given_back_are_a_protocol_error_past_one_writes_worth() {
    let sup = Supervisor::start(config(&["echo"])).unwrap();
    wait_ready(&sup, 2);
    let addr = listener_addr(&sup, "web");
    let back = framed(Kind::ConnectionBack, &7u64.to_le_bytes());
    // Three bytes of the header, with 17 descriptors; the rest never comes.
    sup.send(1, format!("!raw-fds 17 {}", hex(&back[..3])).as_bytes())
        .unwrap();
    let detail = protocol_error_of_slot_1(&sup);
    assert!(detail.contains("worker sent a file descriptor"), "{detail}");
    cluster_still_serves(&sup, &addr, 0);
    sup.stop(Duration::from_secs(5)).unwrap();
}

/// More descriptors than the primary has room for in one read: the kernel closes the ones
/// that do not fit and says so with MSG_CTRUNC. That is a broken worker, not an end of file.
#[test]
fn descriptors_overflowing_the_control_buffer_are_a_protocol_error_not_an_end_of_file() {
    let sup = Supervisor::start(config(&["echo"])).unwrap();
    wait_ready(&sup, 2);
    let addr = listener_addr(&sup, "web");
    let heartbeat = hex(&framed(Kind::Heartbeat, &[]));
    sup.send(1, format!("!raw-fds 200 {heartbeat}").as_bytes())
        .unwrap();
    let detail = protocol_error_of_slot_1(&sup);
    assert!(detail.contains("MSG_CTRUNC"), "{detail}");
    cluster_still_serves(&sup, &addr, 0);
    sup.stop(Duration::from_secs(5)).unwrap();
}

/// A worker that dies after half a frame: the rest will never come.
#[test]
fn a_worker_that_dies_in_the_middle_of_a_frame_ends_with_reason_protocol_error() {
    let sup = Supervisor::start(config(&["echo"])).unwrap();
    wait_ready(&sup, 2);
    let addr = listener_addr(&sup, "web");
    let mut cut = framed(Kind::Message, &[7; 100]);
    cut.truncate(frame::HEADER_LEN + 40);
    sup.send(1, format!("!raw-exit {}", hex(&cut)).as_bytes())
        .unwrap();
    let detail = protocol_error_of_slot_1(&sup);
    assert!(
        detail.contains("in the middle of a Message frame") && detail.contains("40 of its 100"),
        "{detail}"
    );
    cluster_still_serves(&sup, &addr, 0);
    // A header cut short is as broken as a body cut short.
    wait_slot_ready(&sup, 1);
    sup.send(1, format!("!raw-exit {}", hex(&cut[..5])).as_bytes())
        .unwrap();
    let detail = protocol_error_of_slot_1(&sup);
    assert!(
        detail.contains("in the middle of a frame header (5 of its 8 bytes)"),
        "{detail}"
    );
    cluster_still_serves(&sup, &addr, 1);
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_worker_that_crashes_in_the_middle_of_writing_a_frame_is_a_crash_not_a_protocol_error() {
    let sup = Supervisor::start(config(&["echo"])).unwrap();
    wait_ready(&sup, 2);
    let addr = listener_addr(&sup, "web");
    let mut cut = framed(Kind::Message, &[7; 100]);
    cut.truncate(frame::HEADER_LEN + 40);
    sup.send(1, format!("!raw-segv {}", hex(&cut)).as_bytes())
        .unwrap();
    let mut seen = Vec::new();
    let exit = wait_for(&sup, WAIT, |e| {
        seen.push(e.clone());
        matches!(e, Event::Exit { id: 1, .. })
    });
    let Event::Exit { info, .. } = exit else {
        unreachable!()
    };
    assert_eq!(info.reason, ExitReason::Crashed, "{info:?}");
    assert_eq!(info.signal, Some(libc::SIGSEGV), "{info:?}");
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, Event::ProtocolError { .. })),
        "a crash is not a protocol error: {seen:?}"
    );
    cluster_still_serves(&sup, &addr, 0);
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_frame_before_hello_ends_that_worker_and_the_other_keeps_serving() {
    let ready = hex(&framed(Kind::Ready, &[]));
    let mut c = config(&["raw-first", "1", &ready]);
    c.restart.mode = RestartMode::Never;
    let sup = Supervisor::start(c).unwrap();
    let detail = protocol_error_of_slot_1(&sup);
    assert!(
        detail.contains("first frame is Ready, expected Hello"),
        "{detail}"
    );
    until_slot_ready(&sup, 0);
    let addr = listener_addr(&sup, "web");
    cluster_still_serves(&sup, &addr, 0);
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_hello_of_the_wrong_size_or_pid_ends_that_worker() {
    let cases = [
        (
            framed(Kind::Hello, &[1, 0, 0, 0, 9, 9]),
            "hello body of 6 bytes is malformed",
        ),
        (framed(Kind::Hello, &[1, 0, 0, 0]), "must carry its pid"),
        (
            framed(Kind::Hello, &[1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
            "must carry its pid",
        ),
        (
            framed(Kind::Hello, &[1, 0, 7, 0, 0, 0, 0, 0]),
            "reserved bytes of the hello",
        ),
    ];
    for (bytes, cause) in cases {
        let mut c = config(&["raw-first", "1", &hex(&bytes)]);
        c.restart.mode = RestartMode::Never;
        let sup = Supervisor::start(c).unwrap();
        let detail = protocol_error_of_slot_1(&sup);
        assert!(detail.contains(cause), "expected {cause:?} in {detail:?}");
        until_slot_ready(&sup, 0);
        let addr = listener_addr(&sup, "web");
        cluster_still_serves(&sup, &addr, 0);
        sup.stop(Duration::from_secs(5)).unwrap();
    }
}

#[test]
fn a_host_message_over_max_message_is_refused_with_message_too_large_and_sends_nothing() {
    let sup = Supervisor::start(config(&["echo"])).unwrap();
    wait_ready(&sup, 2);
    let addr = listener_addr(&sup, "web");
    match sup.send(0, &vec![0; MAX_MESSAGE + 1]) {
        Err(Error::MessageTooLarge { size, limit }) => {
            assert_eq!((size, limit), (MAX_MESSAGE + 1, MAX_MESSAGE))
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
    // Exactly the limit goes through, and the worker's answer too.
    let full = vec![b'a'; MAX_MESSAGE];
    sup.send(0, &full).unwrap();
    wait_for(
        &sup,
        WAIT,
        |e| matches!(e, Event::Message { id: 0, data, .. } if *data == full),
    );
    // A worker asked to send one byte over the limit is refused by its library, too.
    sup.send(1, b"!too-big").unwrap();
    let answer = wait_for(&sup, WAIT, |e| matches!(e, Event::Message { id: 1, .. }));
    let Event::Message { data, .. } = answer else {
        unreachable!()
    };
    let text = String::from_utf8_lossy(&data);
    assert!(
        text.contains(&format!(
            "{} bytes, the limit is {MAX_MESSAGE} bytes",
            MAX_MESSAGE + 1
        )),
        "{text}"
    );
    cluster_still_serves(&sup, &addr, 0);
    sup.stop(Duration::from_secs(5)).unwrap();
}

/// A raw message that looks like a tagged one stays raw, and every type comes back as it went.
#[test]
fn every_content_type_reaches_a_worker_and_comes_back_with_its_bytes_and_its_type() {
    let sup = Supervisor::start(config(&["echo"])).unwrap();
    wait_ready(&sup, 2);
    for content in ContentType::ALL {
        for body in [&b"J{\"a\":1}"[..], b"V\xff\x0f", b"C", b""] {
            sup.send_as(0, content, body).unwrap();
            let got = wait_for(&sup, WAIT, |e| matches!(e, Event::Message { id: 0, .. }));
            assert_eq!(
                got,
                Event::Message {
                    id: 0,
                    pid: got_pid(&got),
                    data: body.to_vec(),
                    content
                },
                "{content} {body:?}"
            );
        }
    }
    // The limit counts the body alone, whatever the type.
    let full = vec![b'a'; MAX_MESSAGE];
    sup.send_as(0, ContentType::Json, &full).unwrap();
    wait_for(
        &sup,
        WAIT,
        |e| matches!(e, Event::Message { id: 0, data, content: ContentType::Json, .. } if *data == full),
    );
    assert!(matches!(
        sup.send_as(0, ContentType::Text, &vec![b'a'; MAX_MESSAGE + 1]),
        Err(Error::MessageTooLarge { .. })
    ));
    sup.stop(Duration::from_secs(5)).unwrap();
}

fn got_pid(e: &Event) -> u32 {
    match e {
        Event::Message { pid, .. } => *pid,
        _ => unreachable!(),
    }
}

/// The second call must not wrap the same descriptor in a second owner: dropping that owner
/// would close the first one's link.
#[test]
fn a_second_worker_from_env_fails_cleanly_and_leaves_the_first_link_working() {
    let sup = Supervisor::start(config(&["echo"])).unwrap();
    wait_ready(&sup, 2);
    sup.send(0, b"!from-env-again").unwrap();
    let answer = wait_for(&sup, WAIT, |e| matches!(e, Event::Message { id: 0, .. }));
    let Event::Message { data, .. } = answer else {
        unreachable!()
    };
    let text = String::from_utf8_lossy(&data);
    assert!(
        text.starts_with("error: ") && text.contains("already") && text.contains("RCLUSTER_IPC_FD"),
        "{text}"
    );
    // The first link still works both ways.
    sup.send(0, b"after").unwrap();
    wait_for(
        &sup,
        WAIT,
        |e| matches!(e, Event::Message { id: 0, data, .. } if data == b"after"),
    );
    sup.stop(Duration::from_secs(5)).unwrap();
    let exits: Vec<ExitInfo> = std::iter::from_fn(|| sup.next_event(Some(Duration::ZERO)))
        .filter_map(|e| match e {
            Event::Exit { info, .. } => Some(info),
            _ => None,
        })
        .collect();
    assert!(
        exits.iter().all(|i| i.reason == ExitReason::Shutdown),
        "{exits:?}"
    );
}
