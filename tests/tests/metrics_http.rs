//! `Config::metrics` in an embedding host: the loop answers `/healthz`, `/readyz` and
//! `/metrics` whatever the host does with its events, and a stop signal with `drain_delay`
//! fails `/readyz` before the stop begins.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rcluster_core::{Event, ListenAddr, Supervisor};
use rcluster_tests::*;

fn get(addr: &ListenAddr, path: &str) -> (u16, String) {
    let ListenAddr::Tcp(sa) = addr else {
        panic!("{addr}")
    };
    let mut s = TcpStream::connect_timeout(sa, CLIENT_TIMEOUT).unwrap();
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a full answer");
    (head[9..12].parse().unwrap(), body.to_string())
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[test]
fn healthz_and_metrics_answer_while_the_host_reads_no_events_from_a_flooding_worker() {
    let mut cfg = worker_config(1, &["flood", "3000"]);
    cfg.metrics = Some("127.0.0.1:0".parse().unwrap());
    let sup = Supervisor::start(cfg).unwrap();
    let addr = sup.metrics_addr().unwrap().clone();
    // The host reads nothing: the event queue fills and the worker is paused, not the loop.
    std::thread::sleep(Duration::from_millis(700));
    let started = Instant::now();
    assert_eq!(get(&addr, "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(get(&addr, "/readyz").0, 200);
    let (status, text) = get(&addr, "/metrics");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status, 200);
    assert!(sample(&text, "rcluster_ipc_messages_total{direction=\"in\"}") > 0.0);
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn stop_signal_with_drain_delay_fails_readyz_and_stops_only_after_the_delay() {
    let mut cfg = worker_config(2, &["echo"]);
    cfg.metrics = Some("127.0.0.1:0".parse().unwrap());
    cfg.drain_delay = Duration::from_millis(800);
    let sup = Supervisor::start(cfg).unwrap();
    let addr = sup.metrics_addr().unwrap().clone();
    wait_ready(&sup, 2);
    assert_eq!(get(&addr, "/readyz").0, 200);
    let signalled = Instant::now();
    sup.on_signal(libc::SIGTERM).unwrap();
    let (status, body) = get(&addr, "/readyz");
    assert_eq!((status, body.as_str()), (503, "not ready: stopping\n"));
    assert_eq!(get(&addr, "/healthz").0, 200);
    let exit = wait_for(&sup, Duration::from_secs(10), |e| {
        matches!(e, Event::Exit { .. })
    });
    assert!(
        signalled.elapsed() >= Duration::from_millis(800),
        "{exit:?} after {:?}",
        signalled.elapsed()
    );
    sup.stop(Duration::from_secs(5)).unwrap();
}
