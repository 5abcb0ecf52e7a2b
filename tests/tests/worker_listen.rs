//! Listeners that workers ask for at run time, as `server.listen()` does in a Node cluster
//! worker: the primary binds each address once and dispatches to every worker that asked.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use rcluster_core::{Event, Supervisor};
use rcluster_tests::*;

fn text(ev: &Event) -> String {
    match ev {
        Event::Message { data, .. } => String::from_utf8_lossy(data).into_owned(),
        other => panic!("not a message: {other:?}"),
    }
}

fn get(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

fn listening(sup: &Supervisor, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            text(&wait_for(sup, Duration::from_secs(10), |e| {
                matches!(e, Event::Message { .. })
            }))
        })
        .collect()
}

#[test]
fn workers_asking_for_the_same_address_share_one_listener() {
    let sup = Supervisor::start(worker_config(2, &["listen", "127.0.0.1:0", "rr"])).unwrap();
    let answers = listening(&sup, 2);
    let addrs: Vec<&str> = answers
        .iter()
        .map(|a| a.split(' ').nth(2).unwrap())
        .collect();
    assert!(
        answers.iter().all(|a| a.starts_with("listening ")),
        "{answers:?}"
    );
    assert_eq!(
        addrs[0], addrs[1],
        "port 0 must mean one shared port, as in a Node cluster"
    );
    assert!(!addrs[0].ends_with(":0"));
    let mut workers = answered_by(addrs[0], 20);
    workers.sort();
    workers.dedup();
    assert_eq!(
        workers,
        vec!["0", "1"],
        "both workers that asked get connections"
    );
}

#[test]
fn a_bind_error_goes_back_to_the_asking_worker() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let sup = Supervisor::start(worker_config(1, &["listen", &addr, "rr"])).unwrap();
    let answer = listening(&sup, 1).remove(0);
    assert!(
        answer.starts_with("listen-error") && answer.contains(&addr) && answer.contains("in use"),
        "{answer}"
    );
    // Named once: the worker does not wrap the primary's complete message in its own.
    assert_eq!(answer.matches(&addr).count(), 1, "{answer}");
    // The worker and the primary carry on.
    sup.send(0, b"still fine").unwrap();
    wait_for(
        &sup,
        Duration::from_secs(5),
        |e| matches!(e, Event::Message { data, .. } if data == b"still fine"),
    );
}

#[test]
fn a_shared_listener_asked_for_at_run_time_is_handed_to_the_worker() {
    let sup = Supervisor::start(worker_config(1, &["listen", "127.0.0.1:0", "shared"])).unwrap();
    let answer = listening(&sup, 1).remove(0);
    let addr = answer.split(' ').nth(2).unwrap().to_string();
    let body = get(&addr);
    assert!(body.starts_with("0 "), "{body}");
}

#[test]
fn a_restarted_worker_asking_again_gets_the_same_listener() {
    let sup = Supervisor::start(worker_config(1, &["listen", "127.0.0.1:0", "rr"])).unwrap();
    let first = listening(&sup, 1).remove(0);
    sup.restart_worker(0).unwrap();
    let second = listening(&sup, 1).remove(0);
    assert_eq!(
        first, second,
        "the address must survive the worker's restart"
    );
    let addr = second.split(' ').nth(2).unwrap();
    assert!(get(addr).starts_with("0 "));
}

/// The listener's address, and whether the kernel turns it (the worker got a socket of its
/// own), from each worker's "listening NAME ADDR [own-socket]".
fn address(answers: &[String]) -> (String, String, bool) {
    let fields: Vec<&str> = answers[0].split(' ').collect();
    let own = answers.iter().all(|a| a.ends_with(" own-socket"));
    (fields[1].to_string(), fields[2].to_string(), own)
}

/// Whether the kernel turns the listener (`own`: every worker got its own socket). As root the
/// program loads, and a worker without its own socket is a failure; elsewhere the primary
/// accepts round-robin connections itself, and the tests that need the kernel's turns say so
/// and stop.
fn kernel_turns(own: bool, test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(
            own,
            "{test}: as root, each worker gets its own socket of the group"
        );
    }
    if !own {
        eprintln!("{test}: skipped, this process may not load BPF programs (CAP_BPF)");
    }
    own
}

/// A round-robin listener of the configuration named `web`, on a free loopback port.
fn web_listener() -> rcluster_core::Listener {
    rcluster_core::Listener::new(
        "web",
        "127.0.0.1:0".parse().unwrap(),
        rcluster_core::Dispatch::RoundRobin,
    )
}

/// The ids of the workers that answer `n` connections in a row.
fn answered_by(addr: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| get(addr).split(' ').next().unwrap().to_string())
        .collect()
}

/// `n` connections in a row reach the workers strictly in turn.
fn assert_turns(addr: &str, n: usize) {
    let by = answered_by(addr, n);
    for pair in by.windows(2) {
        assert_ne!(pair[0], pair[1], "strict turns, got {by:?}");
    }
}

#[test]
fn a_round_robin_listener_is_turned_by_the_kernel_one_worker_after_the_other() {
    let sup = Supervisor::start(worker_config(2, &["listen", "127.0.0.1:0", "rr"])).unwrap();
    let (_, addr, own) = address(&listening(&sup, 2));
    if kernel_turns(own, "turned by the kernel") {
        assert_turns(&addr, 20);
    }
}

#[test]
fn the_primary_accepts_round_robin_connections_itself_when_told_to() {
    let mut c = worker_config(2, &["listen", "127.0.0.1:0", "rr"]);
    c.kernel_round_robin = false;
    let sup = Supervisor::start(c).unwrap();
    let (_, addr, own) = address(&listening(&sup, 2));
    assert!(
        !own,
        "no socket for the workers: the primary hands connections over"
    );
    let mut by = answered_by(&addr, 10);
    by.sort();
    by.dedup();
    assert_eq!(by, vec!["0", "1"]);
}

/// Worker 0 never accepts on its socket (too busy), so its turns wait there; when it exits,
/// the primary accepts them and hands them to worker 1: not one client is dropped.
#[test]
fn connections_waiting_for_a_worker_that_dies_are_served_by_another() {
    let mut c = worker_config(2, &["listen", "127.0.0.1:0", "rr", "0"]);
    c.restart.mode = rcluster_core::RestartMode::Never;
    let sup = Supervisor::start(c).unwrap();
    let (_, addr, own) = address(&listening(&sup, 2));
    if !kernel_turns(own, "waiting for a worker that dies") {
        return;
    }
    let clients: Vec<TcpStream> = (0..6)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            s
        })
        .collect();
    // Worker 1 answers its three; worker 0's three wait in its socket.
    std::thread::sleep(Duration::from_millis(300));
    sup.send(0, b"!exit 1").unwrap();
    let mut by = Vec::new();
    for mut s in clients {
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        by.push(body.split(' ').next().unwrap_or("none").to_string());
    }
    assert_eq!(
        by,
        vec!["1"; 6],
        "every client answered, by the worker left"
    );
}

#[test]
fn a_worker_that_stops_listening_gets_no_more_turns() {
    let sup = Supervisor::start(worker_config(2, &["listen", "127.0.0.1:0", "rr"])).unwrap();
    let (name, addr, own) = address(&listening(&sup, 2));
    if !kernel_turns(own, "stops listening") {
        return;
    }
    sup.send(0, format!("!unlisten {name}").as_bytes()).unwrap();
    let answer = listening(&sup, 1).remove(0);
    assert_eq!(answer, "unlistened");
    // The message may come through this thread's own read of the worker's socket, the
    // UNLISTEN before it through the loop: a command answered by the loop comes after it.
    sup.snapshot().unwrap();
    let by = answered_by(&addr, 10);
    assert_eq!(by, vec!["1"; 10]);
}

/// A listener of the configuration serves every worker, but one that stops listening on it
/// (its server closed) is handed none of its connections by the primary until it asks for the
/// listener again: they would wait in a worker that has nothing to serve them with.
#[test]
fn a_worker_that_unlistens_a_configured_listener_is_handed_none_of_its_connections_until_it_asks_again(
) {
    let mut c = worker_config(2, &["listen", "web", "rr"]);
    c.kernel_round_robin = false;
    c.listeners.push(web_listener());
    let sup = Supervisor::start(c).unwrap();
    let (name, addr, _) = address(&listening(&sup, 2));
    let both: std::collections::BTreeSet<String> = answered_by(&addr, 6).into_iter().collect();
    assert_eq!(both.len(), 2, "{both:?}");
    sup.send(0, format!("!unlisten {name}").as_bytes()).unwrap();
    assert_eq!(listening(&sup, 1).remove(0), "unlistened");
    sup.snapshot().unwrap(); // the UNLISTEN, read by the loop, came before
    let by = answered_by(&addr, 10);
    assert_eq!(by, vec!["1"; 10]);
    sup.send(0, format!("!listen {name}").as_bytes()).unwrap();
    let again = listening(&sup, 1).remove(0);
    assert!(again.starts_with("listening web "), "{again}");
    let both: std::collections::BTreeSet<String> = answered_by(&addr, 6).into_iter().collect();
    assert_eq!(
        both.len(),
        2,
        "worker 0 is handed connections again: {both:?}"
    );
}

/// When every worker has left a configured listener, its connections wait in the primary for
/// one, and are closed after `queue_timeout`: the primary keeps serving, and nothing piles up.
#[test]
fn connections_of_a_configured_listener_every_worker_left_are_closed_after_queue_timeout() {
    let mut c = worker_config(2, &["listen", "web", "rr"]);
    c.kernel_round_robin = false;
    c.queue_timeout = Duration::from_millis(300);
    c.listeners.push(web_listener());
    let sup = Supervisor::start(c).unwrap();
    let (name, addr, _) = address(&listening(&sup, 2));
    for id in 0..2 {
        sup.send(id, format!("!unlisten {name}").as_bytes())
            .unwrap();
    }
    assert_eq!(listening(&sup, 2), vec!["unlistened"; 2]);
    sup.snapshot().unwrap();
    let t0 = std::time::Instant::now();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = Vec::new();
    let end = s.read_to_end(&mut out);
    let waited = t0.elapsed();
    // Closed (or reset) unanswered, not left open until the client's own timeout.
    let closed = match &end {
        Ok(n) => *n == 0,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    assert!(closed, "{end:?} {out:?}");
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    assert_eq!(sup.snapshot().unwrap().len(), 2, "both workers still run");
}

/// A listener of the configuration: workers learn its name from RCLUSTER_TURNS, and one that
/// asks for it by that name gets its own socket of the group and takes turns; the others are
/// handed their connections by the primary as before.
#[test]
fn a_configured_listener_takes_turns_for_workers_that_ask_for_it_by_name() {
    let mut c = worker_config(2, &["listen", "web", "rr"]);
    c.listeners.push(web_listener());
    let sup = Supervisor::start(c).unwrap();
    let (name, addr, own) = address(&listening(&sup, 2));
    assert_eq!(name, "web");
    if !kernel_turns(own, "configured listener") {
        return;
    }
    assert_turns(&addr, 12);

    let mut c = worker_config(1, &["env"]);
    c.listeners.push(web_listener());
    let sock = std::env::temp_dir().join(format!("rcluster-turns-{}.sock", std::process::id()));
    c.listeners.push(rcluster_core::Listener::new(
        "api",
        format!("unix:{}", sock.display()).parse().unwrap(),
        rcluster_core::Dispatch::Shared,
    ));
    let sup = Supervisor::start(c).unwrap();
    let env = listening(&sup, 1).remove(0);
    assert!(env.contains(" RCLUSTER_TURNS=web"), "{env}");
    assert!(
        !env.contains("api"),
        "a shared listener takes no turns: {env}"
    );
}
