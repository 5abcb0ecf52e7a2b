//! Restart overhead: time from a worker's exit to its replacement's `main`, with the restart
//! policy's delay configured to zero so that only the supervisor's own cost is measured.
//!
//! Usage: `restart [restarts]` (default 200). Both ends are CLOCK_MONOTONIC readings taken by
//! the workers themselves (see `bench_worker restart`), so the host's event delivery is not
//! part of the figure.
//!
//! For scale it first measures the floor on this machine: the same worker binary restarted by
//! a plain loop (`std::process::Command`, wait, spawn again) with no supervisor in between.

use std::time::{Duration, Instant};

use rcluster_bench::{mono_ns, quantile, send_retrying, worker_path};
use rcluster_core::{Config, Event, RestartMode, Supervisor};

const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Restarts before measuring: the first exec of a binary pays for page-cache and loader work
/// that later ones do not.
const WARMUP: usize = 5;
/// Gives the loop time to finish the previous restart's bookkeeping, so that each restart is
/// measured on its own rather than overlapping the last one.
const SETTLE: Duration = Duration::from_millis(2);

fn config(restarts: usize) -> Config {
    let worker = worker_path();
    let mut cfg = Config::new([worker.as_os_str(), "restart".as_ref()]);
    cfg.workers = 1;
    cfg.restart.mode = RestartMode::Always;
    cfg.restart.backoff_initial = Duration::ZERO;
    cfg.restart.backoff_max = Duration::ZERO;
    cfg.restart.jitter = 0.0;
    cfg.restart.min_uptime = Duration::from_millis(1);
    cfg.restart.max_restarts = (restarts * 10 + 100) as u32;
    cfg
}

/// Waits for a message `"<tag> <ns>"` and returns the number; other events are skipped, but
/// the time a `Spawned` event reached this thread is kept in `spawned_seen`.
fn next_stamp(sup: &Supervisor, tag: &str, spawned_seen: &mut u64) -> u64 {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("no {tag:?} within {STEP_TIMEOUT:?}"));
        match sup.next_event(Some(left)) {
            Some(Event::Message { data, .. }) => {
                let text = String::from_utf8_lossy(&data);
                let (t, ns) = text
                    .split_once(' ')
                    .expect("bench worker stamps are \"tag ns\"");
                assert_eq!(t, tag, "unexpected message {text:?}");
                return ns.parse().expect("stamp is a number");
            }
            Some(ev @ (Event::GaveUp { .. } | Event::AllDown | Event::SpawnFailed { .. })) => {
                panic!("the supervisor stopped restarting the bench worker: {ev:?}")
            }
            Some(Event::Spawned { .. }) => *spawned_seen = mono_ns(),
            Some(_) => {}
            None => panic!("no {tag:?} within {STEP_TIMEOUT:?}"),
        }
    }
}

/// Exit → next `main` when the parent does nothing but wait and spawn again.
fn floor(restarts: usize) -> Vec<f64> {
    let worker = worker_path();
    let stamps = || {
        let out = std::process::Command::new(&worker)
            .arg("floor")
            .output()
            .expect("running bench_worker floor");
        let text = String::from_utf8(out.stdout).expect("stamps are text");
        let (a, b) = text.trim().split_once(' ').expect("two stamps");
        (
            a.parse::<u64>().expect("start stamp"),
            b.parse::<u64>().expect("exit stamp"),
        )
    };
    let mut last_exit = stamps().1;
    let mut out = Vec::with_capacity(restarts);
    for i in 0..WARMUP + restarts {
        let (start, exit) = stamps();
        if i >= WARMUP {
            out.push((start - last_exit) as f64 / 1e6);
        }
        last_exit = exit;
    }
    out
}

fn print_ms(label: &str, ms: &mut [f64]) {
    ms.sort_by(f64::total_cmp);
    println!(
        "{label}: p50 {:.3} ms p90 {:.3} ms p99 {:.3} ms max {:.3} ms ({} restarts, exit -> replacement main)",
        quantile(ms, 0.5),
        quantile(ms, 0.9),
        quantile(ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN),
        ms.len()
    );
}

fn main() {
    let restarts: usize = std::env::args()
        .nth(1)
        .map_or(200, |a| a.parse().expect("restarts must be a number"));
    let sup = Supervisor::start(config(restarts)).expect("starting the supervisor");
    let mut overhead_ms = Vec::with_capacity(restarts);
    // Legs: worker exit -> `Spawned` seen here (reap, fork, exec, event delivery), and
    // `Spawned` seen -> replacement's `main` (may be negative: the two run in parallel).
    let (mut to_spawned, mut to_main) = (Vec::new(), Vec::new());
    let mut spawned_seen = 0;
    let mut started = next_stamp(&sup, "start", &mut spawned_seen);
    for i in 0..WARMUP + restarts {
        std::thread::sleep(SETTLE);
        send_retrying(&sup, 0, b"die").expect("sending die");
        let exited = next_stamp(&sup, "exit", &mut spawned_seen);
        let next = next_stamp(&sup, "start", &mut spawned_seen);
        assert!(
            exited >= started && next >= exited,
            "clock readings out of order"
        );
        if i >= WARMUP {
            overhead_ms.push((next - exited) as f64 / 1e6);
            to_spawned.push((spawned_seen as f64 - exited as f64) / 1e6);
            to_main.push((next as f64 - spawned_seen as f64) / 1e6);
        }
        started = next;
    }
    sup.stop(STOP_TIMEOUT).expect("stopping the supervisor");
    print_ms("restart", &mut overhead_ms);
    to_spawned.sort_by(f64::total_cmp);
    to_main.sort_by(f64::total_cmp);
    println!(
        "restart-diag: legs p50: exit -> Spawned event seen {:.3} ms, Spawned seen -> replacement main {:.3} ms",
        quantile(&to_spawned, 0.5),
        quantile(&to_main, 0.5)
    );
    print_ms(
        "restart-diag: floor, plain wait-and-spawn loop without rcluster",
        &mut floor(restarts),
    );
}
