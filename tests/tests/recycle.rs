//! Recycling with real workers and real clients: a worker over `max_memory`, or past its
//! `max_requests` (with jitter), is replaced the way a reload replaces it, one slot at a time,
//! and no request fails.
//!
//! Clients are blocking sockets in threads, on loopback, each request on a new connection,
//! with a timeout on every read and write and a bound on their count.

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rcluster_core::{
    Config, Dispatch, Event, ExitReason, ListenAddr, Listener, ReadyOn, Supervisor, WorkerState,
};
use rcluster_tests::*;

const WAIT: Duration = Duration::from_secs(10);

fn config(workers: usize, args: &[&str]) -> Config {
    let mut cfg = worker_config(workers, args);
    cfg.listeners = vec![Listener::new(
        "web",
        "127.0.0.1:0".parse().unwrap(),
        Dispatch::RoundRobin,
    )];
    // Ready when the worker says so, after its hello: a replacement takes connections only
    // once it really serves.
    cfg.ready_on = ReadyOn::Explicit;
    // A replacement that misses its ready timeout on a loaded machine would end a step
    // early (and the test would say so, not time out): give it room.
    cfg.ready_timeout = Duration::from_secs(20);
    // Likewise a worker starved for seconds must not be taken for hung: that is another
    // test's subject, and it would fail requests here.
    cfg.ack_timeout = Some(Duration::from_secs(30));
    cfg
}

fn tcp(sup: &Supervisor) -> SocketAddr {
    match listener_addr(sup, "web") {
        ListenAddr::Tcp(sa) => sa,
        other => panic!("not a TCP address: {other}"),
    }
}

/// Client threads, each sending one request per new connection until told to stop or
/// `per_thread` requests are done. Failures are kept with what went wrong.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(addr: SocketAddr, threads: usize, per_thread: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
                std::thread::spawn(move || {
                    let mut failed = Vec::new();
                    for _ in 0..per_thread {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        match one_request(addr) {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                failed.push(e.to_string());
                                0
                            }
                        };
                    }
                    failed
                })
            })
            .collect();
        Load { stop, ok, threads }
    }

    fn successes(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients; every failure they saw.
    fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut self.threads)
            .into_iter()
            .flat_map(|t| t.join().expect("client thread"))
            .collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn one_request(addr: SocketAddr) -> std::io::Result<Reply> {
    let s = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)?;
    s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    Reply::parse(&http_exchange(s)?)
}

/// Events until `enough` says so or `within` passes (then panics with what was seen).
fn collect_until(
    sup: &Supervisor,
    within: Duration,
    mut enough: impl FnMut(&[Event]) -> bool,
) -> Vec<Event> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while !enough(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match sup.next_event(Some(left)) {
            Some(ev) => seen.push(ev),
            None => panic!("not enough within {within:?}; saw {seen:#?}"),
        }
    }
    seen
}

fn exits_for(events: &[Event], reason: ExitReason) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::Exit { info, .. } if info.reason == reason))
        .count()
}

/// Checks the order of a recycling: every recycled worker was announced by a `Recycling`
/// event, its replacement was ready before it exited, and no second `Recycling` came while
/// one was under way (between a `Recycling` and the exit of the worker it named).
fn assert_one_at_a_time(events: &[Event], reason: ExitReason) {
    let mut under_way: Option<(u32, u32)> = None;
    let mut replacement_ready = false;
    let mut spawned_in_slot: Option<u32> = None;
    for (i, ev) in events.iter().enumerate() {
        match ev {
            Event::Recycling { id, pid, reason: r } => {
                assert_eq!(*r, reason, "event {i}: {ev:?}");
                assert!(
                    under_way.is_none(),
                    "event {i}: a second recycling while {under_way:?} was under way: {events:#?}"
                );
                under_way = Some((*id, *pid));
                replacement_ready = false;
                spawned_in_slot = None;
            }
            Event::Spawned { id, pid, .. } if under_way.is_some_and(|(s, _)| s == *id) => {
                spawned_in_slot = Some(*pid);
            }
            Event::Ready { pid, .. } if spawned_in_slot == Some(*pid) => replacement_ready = true,
            Event::Exit { info, .. } if info.reason == reason => {
                let Some((_, pid)) = under_way.take() else {
                    panic!("event {i}: exit for {reason} with no recycling announced: {events:#?}");
                };
                assert_eq!(info.pid, pid, "event {i}: the recycled worker exits");
                assert!(
                    replacement_ready,
                    "event {i}: worker {pid} exited before its replacement was ready: {events:#?}"
                );
            }
            _ => {}
        }
    }
}

fn restarts_by(sup: &Supervisor, reason: &str) -> u32 {
    let status = sup.status().unwrap();
    status
        .workers
        .iter()
        .filter(|w| w.state != WorkerState::Draining.as_str())
        .map(|w| w.restarts_by_reason.get(reason).copied().unwrap_or(0))
        .sum()
}

#[test]
fn worker_that_grows_past_max_memory_under_load_is_replaced_with_reason_memory_and_no_request_fails(
) {
    // Each connection leaves 256 KiB resident: a worker passes 16 MiB above its start-up
    // size after about 64 connections.
    let mut cfg = config(2, &["leak", "256", "5"]);
    let probe = Supervisor::start(config(1, &["leak", "256", "5"])).unwrap();
    wait_ready(&probe, 1);
    let base = probe.status().unwrap().workers[0].rss_bytes;
    probe.stop(WAIT).unwrap();
    assert!(base > 0, "the test worker's resident size is readable");
    cfg.max_memory = Some(base + (16 << 20));
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 2);
    let load = Load::start(tcp(&sup), 3, 2_000);
    let events = collect_until(&sup, Duration::from_secs(25), |seen| {
        exits_for(seen, ExitReason::Memory) >= 2
    });
    let served = load.successes();
    let failed = load.finish();
    let by_memory = restarts_by(&sup, "memory");
    sup.stop(WAIT).unwrap();
    eprintln!(
        "{served} requests, {} recycled for memory (limit {} bytes)",
        exits_for(&events, ExitReason::Memory),
        base + (16 << 20)
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:#?}",
        failed.len(),
        served + failed.len()
    );
    assert_one_at_a_time(&events, ExitReason::Memory);
    assert!(
        by_memory >= 2,
        "status counts restarts by memory: {by_memory}"
    );
    let crashes = exits_for(&events, ExitReason::Crashed);
    assert_eq!(crashes, 0, "{events:#?}");
}

#[test]
fn max_requests_with_jitter_replaces_workers_one_at_a_time_and_no_request_fails() {
    let mut cfg = config(3, &["drain", "5"]);
    cfg.max_requests = Some(30);
    cfg.max_requests_jitter = 20;
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 3);
    let load = Load::start(tcp(&sup), 3, 3_000);
    let events = collect_until(&sup, Duration::from_secs(25), |seen| {
        exits_for(seen, ExitReason::MaxRequests) >= 5
    });
    let served = load.successes();
    let failed = load.finish();
    let by_requests = restarts_by(&sup, "max_requests");
    sup.stop(WAIT).unwrap();
    eprintln!(
        "{served} requests, {} recycled for max_requests",
        exits_for(&events, ExitReason::MaxRequests)
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:#?}",
        failed.len(),
        served + failed.len()
    );
    assert_one_at_a_time(&events, ExitReason::MaxRequests);
    assert!(by_requests >= 5, "status: {by_requests}");
    // A worker is recycled only after its limit: 5 recycles take at least 5 x 30 requests.
    assert!(served >= 150, "only {served} requests for 5 recycles");
    let slots: std::collections::BTreeSet<u32> = events
        .iter()
        .filter_map(|e| match e {
            Event::Recycling { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert!(
        slots.len() >= 2,
        "recycling reached several slots: {slots:?}"
    );
}

#[test]
fn worker_under_its_limits_is_never_recycled() {
    let mut cfg = config(2, &["drain", "1"]);
    cfg.max_requests = Some(1_000_000);
    cfg.max_memory = Some(1 << 40);
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 2);
    let addr = tcp(&sup);
    for i in 0..50 {
        one_request(addr).unwrap_or_else(|e| panic!("request {i}: {e}"));
    }
    // Past a couple of memory checks.
    std::thread::sleep(Duration::from_millis(2_500));
    let mut seen = Vec::new();
    while let Some(ev) = sup.try_next_event() {
        seen.push(ev);
    }
    sup.stop(WAIT).unwrap();
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Recycling { .. })),
        "{seen:#?}"
    );
    // The primary hands every connection over: nothing to warn about.
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Warning { .. })),
        "{seen:#?}"
    );
}

#[test]
fn max_requests_with_a_worker_that_asks_for_its_own_socket_warns_that_it_is_not_counted() {
    let mut cfg = worker_config(1, &["listen", "127.0.0.1:0", "shared"]);
    cfg.max_requests = Some(100);
    let sup = Supervisor::start(cfg).unwrap();
    let ev = wait_for(&sup, WAIT, |e| matches!(e, Event::Warning { .. }));
    sup.stop(WAIT).unwrap();
    let Event::Warning { detail } = ev else {
        unreachable!()
    };
    assert!(
        detail.contains("max_requests") && detail.contains("not counted"),
        "{detail}"
    );
}

#[test]
fn max_requests_with_a_listener_the_workers_accept_on_themselves_warns_that_it_is_not_counted() {
    let mut cfg = worker_config(1, &["echo"]);
    cfg.listeners = vec![Listener::new(
        "direct",
        "127.0.0.1:0".parse().unwrap(),
        Dispatch::Shared,
    )];
    cfg.max_requests = Some(100);
    let sup = Supervisor::start(cfg).unwrap();
    let ev = wait_for(&sup, WAIT, |e| matches!(e, Event::Warning { .. }));
    sup.stop(WAIT).unwrap();
    let Event::Warning { detail } = ev else {
        unreachable!()
    };
    assert!(
        detail.contains("max_requests") && detail.contains("direct"),
        "{detail}"
    );
}
