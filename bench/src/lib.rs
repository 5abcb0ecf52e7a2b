//! Helpers shared by the benchmark programs.
//!
//! Times that cross a process boundary (a worker's exit versus its replacement's start) are
//! taken with `CLOCK_MONOTONIC` directly: it is system-wide, whereas `Instant` only promises
//! to be comparable within one process.

use std::path::PathBuf;
use std::time::Duration;

use rcluster_core::{Event, Supervisor};

/// Size of one user message in the stream and round-trip benchmarks.
pub const MSG_SIZE: usize = 32;

/// `CLOCK_MONOTONIC` in nanoseconds.
pub fn mono_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid out-parameter; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// The `q`-quantile (0..=1) of sorted samples, picked the way the anchors pick theirs
/// (`lat[n * q]`), so that the figures compare like for like.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[i]
}

/// The bench worker binary, built beside the running benchmark.
pub fn worker_path() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running benchmark");
    exe.with_file_name("bench_worker")
}

/// Waits until worker `id` is ready; panics with the events seen if it does not get there,
/// because every later figure would be meaningless.
pub fn wait_ready(sup: &Supervisor, id: u32, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match sup.next_event(Some(left)) {
            Some(Event::Ready { id: i, .. }) if i == id => return,
            Some(ev) => seen.push(ev),
            None => break,
        }
    }
    panic!("worker {id} not ready within {timeout:?}; events: {seen:?}");
}

/// Sends, retrying while the worker's queue is full: that is back-pressure, not failure.
pub fn send_retrying(sup: &Supervisor, id: u32, data: &[u8]) -> rcluster_core::Result<()> {
    loop {
        match sup.send(id, data) {
            Err(rcluster_core::Error::QueueFull { .. }) => std::thread::yield_now(),
            other => return other,
        }
    }
}
