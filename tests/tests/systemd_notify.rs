//! A service manager's view of an embedded primary: a datagram socket of the test is the
//! `NOTIFY_SOCKET` (one test in this file, since it sets the process's environment).

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use rcluster_core::{Event, Supervisor};
use rcluster_tests::*;

/// Every notification received until `done` holds for them or `within` passes.
fn notifications_until(
    rx: &UnixDatagram,
    got: &mut Vec<String>,
    within: Duration,
    done: impl Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 4096];
    while !done(got) {
        assert!(Instant::now() < deadline, "timed out; got {got:#?}");
        if let Ok(n) = rx.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

fn position(got: &[String], from: usize, key: &str) -> Option<usize> {
    got.iter()
        .skip(from)
        .position(|m| m.lines().any(|l| l == key))
        .map(|i| i + from)
}

#[test]
fn embedded_primary_notifies_ready_reloading_ready_stopping_and_the_watchdog_in_order() {
    let name = format!("rcluster-test-notify-{}", std::process::id());
    let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // SAFETY: this test is alone in its process (one test in this file) and no other thread
    // reads the environment while it is set.
    unsafe {
        std::env::set_var("NOTIFY_SOCKET", format!("@{name}"));
        std::env::set_var("WATCHDOG_USEC", "200000");
        std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
    }
    let sup = Supervisor::start(worker_config(2, &["echo"])).unwrap();
    let mut got = Vec::new();
    let wait = Duration::from_secs(10);
    notifications_until(&rx, &mut got, wait, |g| position(g, 0, "READY=1").is_some());
    assert!(
        got.iter()
            .any(|m| m.contains("STATUS=2/2 workers ready, generation 1")),
        "{got:#?}"
    );
    sup.reload().unwrap();
    wait_for(&sup, wait, |e| matches!(e, Event::ReloadDone { .. }));
    notifications_until(&rx, &mut got, wait, |g| {
        position(g, 0, "RELOADING=1").is_some_and(|r| position(g, r, "READY=1").is_some())
    });
    sup.stop(Duration::from_secs(5)).unwrap();
    notifications_until(&rx, &mut got, wait, |g| {
        position(g, 0, "STOPPING=1").is_some()
    });

    let ready = position(&got, 0, "READY=1").unwrap();
    let reloading = position(&got, ready, "RELOADING=1").expect("RELOADING after READY");
    assert!(
        got[reloading].contains("MONOTONIC_USEC="),
        "{}",
        got[reloading]
    );
    let ready_again = position(&got, reloading, "READY=1").expect("READY after RELOADING");
    let stopping = position(&got, ready_again, "STOPPING=1").expect("STOPPING after READY");
    assert!(
        position(&got, 0, "WATCHDOG=1").is_some_and(|w| w < stopping),
        "no WATCHDOG=1 while running: {got:#?}"
    );
    assert!(got
        .iter()
        .any(|m| m.contains("STATUS=2/2 workers ready, generation 2")));
}
