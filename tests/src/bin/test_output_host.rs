//! A host for tests of worker output, whose own stdout the test controls (a pipe nobody reads,
//! a closed pipe, a non-blocking pipe):
//! `rcluster-test-output-host SECONDS [nonblocking] [sigpipe] -- WORKER-ARGV…`
//!
//! Runs a supervisor with prefixed output, one round-robin listener on 127.0.0.1:0 and
//! ready-on-spawn workers (slot count from `RCLUSTER_TEST_WORKERS`, default 1) for SECONDS,
//! then stops it and exits 0. Everything it says goes to stderr, one line each:
//! `listening ADDR`, every event in its `Debug` form, `echo ID` for each message a worker
//! echoed, and `stopped` at the end. It sends "ping" to slot 1 every 100 ms.
//! `nonblocking` sets O_NONBLOCK on its stdout first (as Node does to a pipe); `sigpipe`
//! restores the default SIGPIPE action (as a C program has), which Rust ignores otherwise.

use std::io::Write;
use std::time::{Duration, Instant};

use rcluster_core::{Config, Dispatch, Event, ListenAddr, Listener, ReadyOn, Supervisor};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args
        .iter()
        .position(|a| a == "--")
        .expect("-- before the worker");
    let seconds: f64 = args[0].parse().expect("seconds");
    let flags = &args[1..split];
    if flags.iter().any(|f| f == "nonblocking") {
        // SAFETY: fcntl on fd 1 with valid flags.
        unsafe {
            let fl = libc::fcntl(1, libc::F_GETFL);
            libc::fcntl(1, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
    if flags.iter().any(|f| f == "sigpipe") {
        // SAFETY: restores the default action, before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let mut cfg = Config::new(&args[split + 1..]);
    cfg.workers = std::env::var("RCLUSTER_TEST_WORKERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    cfg.output = rcluster_core::Output::Prefix;
    cfg.ready_on = ReadyOn::Spawn;
    cfg.kill_timeout = Duration::from_secs(1);
    cfg.restart.backoff_initial = Duration::from_millis(100);
    cfg.restart.backoff_max = Duration::from_millis(200);
    cfg.restart.max_restarts = 1000;
    let any = ListenAddr::Tcp("127.0.0.1:0".parse().unwrap());
    cfg.listeners = vec![Listener::new("http", any, Dispatch::RoundRobin)];
    let sup = Supervisor::start(cfg).expect("start");
    let mut err = std::io::stderr();
    writeln!(err, "listening {}", sup.listeners()[0].1).unwrap();
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut next_ping = Instant::now();
    while Instant::now() < end {
        if Instant::now() >= next_ping {
            let _ = sup.send(1, b"ping");
            next_ping += Duration::from_millis(100);
        }
        match sup.next_event(Some(Duration::from_millis(20))) {
            Some(Event::Message { id, .. }) => writeln!(err, "echo {id}").unwrap(),
            Some(ev) => writeln!(err, "{ev:?}").unwrap(),
            None => {}
        }
    }
    sup.stop(Duration::from_secs(1)).expect("stop");
    while let Some(ev) = sup.next_event(Some(Duration::ZERO)) {
        writeln!(err, "{ev:?}").unwrap();
    }
    writeln!(err, "stopped").unwrap();
}
