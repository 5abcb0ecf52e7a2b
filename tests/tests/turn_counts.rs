//! Connections the kernel's turns give workers that accept on their own socket: they never
//! pass the primary, and are counted from the turns' own tally (the status, the metrics,
//! `max_requests`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rcluster_core::{Event, ExitReason, ListenAddr, Supervisor};
use rcluster_tests::*;

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map_or("", |x| x.1).to_string()
}

/// The address the `n` workers listen on, once each says it does; None (and the test is
/// skipped) when this process may not load the turns' program (no CAP_BPF: not root).
fn turned_address(sup: &Supervisor, n: usize) -> Option<String> {
    let mut addr = None;
    for _ in 0..n {
        let ev = wait_for(sup, Duration::from_secs(10), |e| {
            matches!(e, Event::Message { .. })
        });
        let Event::Message { data, .. } = ev else {
            unreachable!()
        };
        let text = String::from_utf8_lossy(&data).into_owned();
        assert!(text.starts_with("listening "), "{text}");
        if !text.ends_with(" own-socket") {
            // SAFETY: geteuid has no preconditions.
            assert_ne!(
                unsafe { libc::geteuid() },
                0,
                "as root the kernel turns: {text}"
            );
            eprintln!("skipped: this process may not load BPF programs (CAP_BPF)");
            return None;
        }
        addr = text.split(' ').nth(2).map(str::to_string);
    }
    addr
}

#[test]
fn connections_the_kernel_turns_give_workers_are_counted_in_status_and_metrics() {
    let mut cfg = worker_config(2, &["listen", "127.0.0.1:0", "rr"]);
    cfg.metrics = Some("127.0.0.1:0".parse().unwrap());
    let sup = Supervisor::start(cfg).unwrap();
    let Some(addr) = turned_address(&sup, 2) else {
        return;
    };
    for _ in 0..10 {
        assert!(!get(&addr, "/").is_empty());
    }
    let st = sup.status().unwrap();
    let totals: Vec<u64> = st.workers.iter().map(|w| w.connections_total).collect();
    // Turns between two workers: each has its share, and every connection is counted once
    // (one the primary accepted itself while the turns were being set is counted as handed).
    assert_eq!(totals.iter().sum::<u64>(), 10, "{st:?}");
    assert!(totals.iter().all(|&n| n >= 3), "{st:?}");
    let Some(ListenAddr::Tcp(metrics)) = sup.metrics_addr().cloned() else {
        panic!("no metrics address")
    };
    let text = get(&metrics.to_string(), "/metrics");
    let dispatched: f64 = text
        .lines()
        .filter(|l| l.starts_with("rcluster_connections_dispatched_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(dispatched, 10.0, "{text}");
}

#[test]
fn max_requests_replaces_a_worker_the_kernel_turns_gave_that_many_connections() {
    let mut cfg = worker_config(2, &["listen", "127.0.0.1:0", "rr"]);
    cfg.max_requests = Some(5);
    let sup = Supervisor::start(cfg).unwrap();
    let Some(addr) = turned_address(&sup, 2) else {
        return;
    };
    // Six each: both past their limit. The turns are looked at every 100 ms.
    for _ in 0..12 {
        assert!(!get(&addr, "/").is_empty());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let recycled = loop {
        assert!(Instant::now() < deadline, "no recycling; saw {seen:?}");
        match sup.next_event(Some(Duration::from_millis(100))) {
            Some(Event::Recycling { id, reason, .. }) => break (id, reason),
            Some(Event::Warning { detail }) => panic!("warned: {detail}"),
            Some(ev) => seen.push(ev),
            None => {}
        }
    };
    assert_eq!(recycled.1, ExitReason::MaxRequests);
}

/// The address of the `shared` listener the `n` workers listen on, once each says it does
/// (with the socket itself in hand).
fn shared_address(sup: &Supervisor, n: usize) -> String {
    let mut addr = String::new();
    for _ in 0..n {
        let ev = wait_for(sup, Duration::from_secs(10), |e| {
            matches!(e, Event::Message { .. })
        });
        let Event::Message { data, .. } = ev else {
            unreachable!()
        };
        let text = String::from_utf8_lossy(&data).into_owned();
        assert!(text.ends_with(" own-socket"), "{text}");
        addr = text.split(' ').nth(2).unwrap().to_string();
    }
    addr
}

#[test]
fn connections_workers_take_from_a_shared_socket_are_counted_when_they_count_them() {
    let cfg = worker_config(2, &["listen-counting", "127.0.0.1:0", "shared"]);
    let sup = Supervisor::start(cfg).unwrap();
    let addr = shared_address(&sup, 2);
    for _ in 0..10 {
        assert!(!get(&addr, "/").is_empty());
    }
    // Looked at when the status is made: each worker's tally in the share map.
    let st = sup.status().unwrap();
    let total: u64 = st.workers.iter().map(|w| w.connections_total).sum();
    assert_eq!(total, 10, "{st:?}");
}

#[test]
fn a_worker_that_writes_nonsense_in_the_share_map_breaks_no_count_of_the_primary() {
    // Worker 1 writes i64::MAX and 0 in turn as its count after every connection it takes:
    // the primary's totals saturate instead of overflowing, and it keeps serving and answering.
    let mut cfg = worker_config(2, &["listen-lying", "127.0.0.1:0", "shared"]);
    cfg.metrics = Some("127.0.0.1:0".parse().unwrap());
    let sup = Supervisor::start(cfg).unwrap();
    let addr = shared_address(&sup, 2);
    let Some(ListenAddr::Tcp(metrics)) = sup.metrics_addr().cloned() else {
        panic!("no metrics address")
    };
    for round in 0..12 {
        for _ in 0..5 {
            assert!(!get(&addr, "/").is_empty(), "round {round}");
        }
        // Each status and scrape harvests the map again.
        let st = sup.status().unwrap();
        assert_eq!(st.workers.len(), 2, "{st:?}");
        assert!(get(&metrics.to_string(), "/metrics").contains("rcluster_workers"));
    }
    let st = sup.status().unwrap();
    assert!(st.workers.iter().all(|w| w.state == "ready"), "{st:?}");
}

/// Descriptors of this process (the primary).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_worker_that_asks_for_a_shared_listener_again_and_again_stays_one_member_and_leaks_nothing() {
    // Each worker asks 300 times before it serves: each answer carries a copy of the socket
    // and of the share map, which the primary must not keep, and the same member each time.
    let baseline = {
        let sup = Supervisor::start(worker_config(
            2,
            &["listen-counting", "127.0.0.1:0", "shared"],
        ))
        .unwrap();
        shared_address(&sup, 2);
        open_fds()
    };
    let cfg = worker_config(2, &["listen-repeat", "127.0.0.1:0", "shared"]);
    let sup = Supervisor::start(cfg).unwrap();
    // Each worker says which members it was given, then that it listens.
    let (mut members, mut addr) = (Vec::new(), String::new());
    while members.len() < 2 || addr.is_empty() {
        let ev = wait_for(&sup, Duration::from_secs(20), |e| {
            matches!(e, Event::Message { .. })
        });
        let Event::Message { data, .. } = ev else {
            unreachable!()
        };
        let text = String::from_utf8_lossy(&data).into_owned();
        match text.strip_prefix("members ") {
            Some(m) => members.push(m.to_string()),
            None => addr = text.split(' ').nth(2).unwrap().to_string(),
        }
    }
    members.sort();
    assert_eq!(members, ["{0}", "{1}"]);
    assert!(
        open_fds() <= baseline + 2,
        "the primary holds {} descriptors, {baseline} with workers that ask once",
        open_fds()
    );
    for _ in 0..10 {
        assert!(!get(&addr, "/").is_empty());
    }
    let st = sup.status().unwrap();
    let total: u64 = st.workers.iter().map(|w| w.connections_total).sum();
    assert_eq!(total, 10, "{st:?}");
}
