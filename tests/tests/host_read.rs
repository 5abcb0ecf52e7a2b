//! A host that waits on `event_fd` reads the messages of chatty workers itself: replies come
//! in order, messages sent before an exit come before it, and the loop still sees heartbeats
//! while the host is busy elsewhere.

use std::time::{Duration, Instant};

use rcluster_core::{Event, ExitReason, Supervisor};
use rcluster_tests::*;

/// The next event the way a host loop gets it: wait for the descriptor, then take.
fn next_via_fd(sup: &Supervisor, within: Duration) -> Event {
    let fd = sup.event_fd();
    let deadline = Instant::now() + within;
    loop {
        if let Some(ev) = sup.try_next_event() {
            return ev;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no event within {within:?}");
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, left.as_millis().max(1) as i32) };
    }
}

fn next_message(sup: &Supervisor) -> String {
    loop {
        match next_via_fd(sup, Duration::from_secs(5)) {
            Event::Message { data, .. } => return String::from_utf8(data).unwrap(),
            Event::Exit { info, .. } => panic!("the worker exited: {info:?}"),
            _ => {}
        }
    }
}

#[test]
fn a_host_on_event_fd_gets_replies_in_order_and_heartbeats_still_count() {
    let mut cfg = worker_config(1, &["echo-beat"]);
    cfg.heartbeat_timeout = Some(Duration::from_millis(400));
    let sup = Supervisor::start(cfg).unwrap();
    sup.event_fd();
    while !matches!(
        next_via_fd(&sup, Duration::from_secs(5)),
        Event::Ready { .. }
    ) {}
    // Round trips for longer than the heartbeat timeout, with a pause in the middle where the
    // host takes nothing (as a busy event loop would): the worker must live through both.
    let mut sent = 0;
    for phase in 0..2 {
        let until = Instant::now() + Duration::from_millis(600);
        while Instant::now() < until {
            sup.send(0, format!("m{sent}").as_bytes()).unwrap();
            assert_eq!(next_message(&sup), format!("m{sent}"));
            sent += 1;
        }
        if phase == 0 {
            std::thread::sleep(Duration::from_millis(700));
        }
    }
    assert!(sent > 50, "only {sent} round trips");
    // A burst, then an exit: every message comes before the exit event.
    for i in 0..300 {
        sup.send(0, format!("x{i}").as_bytes()).unwrap();
    }
    sup.send(0, b"!exit 0").unwrap();
    let mut got = 0;
    loop {
        match next_via_fd(&sup, Duration::from_secs(5)) {
            Event::Message { data, .. } => {
                assert_eq!(String::from_utf8(data).unwrap(), format!("x{got}"));
                got += 1;
            }
            Event::Exit { info, .. } => {
                assert_eq!(info.reason, ExitReason::Exited, "{info:?}");
                break;
            }
            _ => {}
        }
    }
    assert_eq!(got, 300, "messages lost before the exit");
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn next_event_still_serves_a_host_that_took_event_fd() {
    let sup = Supervisor::start(worker_config(1, &["echo"])).unwrap();
    sup.event_fd();
    wait_ready(&sup, 1);
    // The worker sends messages, so the host thread reads it from now on; a blocking
    // next_event is such a thread too.
    for i in 0..200 {
        sup.send(0, format!("n{i}").as_bytes()).unwrap();
        let ev = wait_for(&sup, Duration::from_secs(5), |e| {
            matches!(e, Event::Message { .. })
        });
        let Event::Message { data, .. } = ev else {
            unreachable!()
        };
        assert_eq!(data, format!("n{i}").into_bytes());
    }
    sup.stop(Duration::from_secs(5)).unwrap();
    // Once stopped, it hands out what is left, then None at once (it does not wait forever).
    let t = Instant::now();
    let left = std::iter::from_fn(|| sup.next_event(None))
        .take(100)
        .count();
    assert!(
        left < 100 && t.elapsed() < Duration::from_secs(5),
        "{left} events after stop"
    );
}
