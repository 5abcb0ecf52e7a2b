//! The worker side of the benchmarks: `bench_worker count|echo|restart`.
//!
//! - `count`: counts user messages; answers `end` with the count (decimal) and starts again.
//! - `echo`: sends every message straight back.
//! - `echo-stamp`: like `echo`, but the reply starts with two CLOCK_MONOTONIC readings (u64 LE):
//!   when the message was received and when the reply was sent, to split a round trip into legs.
//! - `restart`: reports `start <ns>` (CLOCK_MONOTONIC at the top of `main`), and on `die`
//!   reports `exit <ns>` and exits, so that the primary can measure exit → replacement start.
//! - `floor`: no rcluster at all; prints `<start ns> <exit ns>` and exits. The restart
//!   benchmark runs it in a plain wait-then-spawn loop to measure what any supervisor pays.

use rcluster_bench::mono_ns;
use rcluster_core::{Worker, WorkerEvent};

fn main() {
    // First thing, before any set-up: everything between the predecessor's exit and this line
    // is restart overhead.
    let started = mono_ns();
    let mode = std::env::args().nth(1).unwrap_or_default();
    if mode == "floor" {
        println!("{started} {}", mono_ns());
        std::process::exit(0);
    }
    let worker = match Worker::from_env() {
        Ok(Some(w)) => w,
        Ok(None) => fail("not started by rcluster (no RCLUSTER_* environment)"),
        Err(e) => fail(&format!("cannot connect to the primary: {e}")),
    };
    match mode.as_str() {
        "count" => count(&worker),
        "echo" => echo(&worker),
        "echo-stamp" => echo_stamp(&worker),
        "restart" => restart(&worker, started),
        other => fail(&format!(
            "unknown mode {other:?}; expected count, echo or restart"
        )),
    }
}

fn fail(why: &str) -> ! {
    eprintln!("bench_worker: {why}");
    std::process::exit(2)
}

/// The next user message; exits when the primary asks this worker to go.
fn next_message(worker: &Worker) -> Vec<u8> {
    loop {
        match worker.next_event(None) {
            Ok(Some(WorkerEvent::Message { data, .. })) => return data,
            Ok(Some(WorkerEvent::Disconnect | WorkerEvent::PrimaryGone)) => std::process::exit(0),
            Ok(Some(
                WorkerEvent::Connection(_) | WorkerEvent::Task(_) | WorkerEvent::TaskCancelled(_),
            )) => {}
            Ok(None) => {}
            Err(e) => fail(&format!("receiving: {e}")),
        }
    }
}

fn send(worker: &Worker, data: &[u8]) {
    if let Err(e) = worker.send(data) {
        fail(&format!("sending: {e}"));
    }
}

fn count(worker: &Worker) -> ! {
    let mut n: u64 = 0;
    loop {
        let m = next_message(worker);
        if m == b"end" {
            send(worker, n.to_string().as_bytes());
            n = 0;
        } else {
            n += 1;
        }
    }
}

fn echo(worker: &Worker) -> ! {
    loop {
        let m = next_message(worker);
        send(worker, &m);
    }
}

fn echo_stamp(worker: &Worker) -> ! {
    loop {
        let mut m = next_message(worker);
        let received = mono_ns();
        m.resize(m.len().max(16), 0);
        m[..8].copy_from_slice(&received.to_le_bytes());
        m[8..16].copy_from_slice(&mono_ns().to_le_bytes());
        send(worker, &m);
    }
}

fn restart(worker: &Worker, started: u64) -> ! {
    send(worker, format!("start {started}").as_bytes());
    loop {
        if next_message(worker) == b"die" {
            // Taken before the send, so the send's own cost counts as overhead: the figure
            // errs on the high side.
            let t = mono_ns();
            send(worker, format!("exit {t}").as_bytes());
            std::process::exit(0);
        }
    }
}
