//! A primary out of descriptors cannot start a worker: the error names the primary's
//! RLIMIT_NOFILE, not the worker program, which is not at fault.
//!
//! The primary is this test process, so the test lowers its own RLIMIT_NOFILE and fills the
//! descriptor table. Limits are process-wide: this file holds exactly one test, so that no
//! other test shares the process while the table is full.

use std::time::Duration;

use rcluster_core::{Event, Supervisor};
use rcluster_tests::*;

/// Puts the soft descriptor limit back when dropped, also when the test fails.
struct RestoreLimit(libc::rlimit);

impl Drop for RestoreLimit {
    fn drop(&mut self) {
        // SAFETY: sets a limit from a valid struct.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.0) };
    }
}

#[test]
fn spawn_out_of_descriptors_names_the_primarys_fd_limit_not_the_program() {
    let sup = Supervisor::start(worker_config(1, &["echo"])).unwrap();
    wait_ready(&sup, 1);
    // SAFETY: getrlimit/setrlimit with valid structs.
    let mut old: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `old` is a live local rlimit that getrlimit fills.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) };
    let restore = RestoreLimit(old);
    let highest = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap();
    let low = libc::rlimit {
        rlim_cur: highest + 16,
        rlim_max: old.rlim_max,
    };
    // SAFETY: `low` is a live local rlimit that setrlimit only reads.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }, 0);
    // Fill every free slot below the limit.
    let mut hold = Vec::new();
    while let Ok(f) = std::fs::File::open("/dev/null") {
        hold.push(f);
        assert!(hold.len() < 1000, "the lowered limit does not hold");
    }
    // A new slot: nothing of an exiting worker frees descriptors for it.
    sup.scale(2).unwrap();
    let error = match wait_for(&sup, Duration::from_secs(10), |e| {
        matches!(e, Event::SpawnFailed { .. })
    }) {
        Event::SpawnFailed { error, .. } => error,
        _ => unreachable!(),
    };
    drop(hold);
    drop(restore);
    assert!(
        error.contains("RLIMIT_NOFILE") && error.contains(&format!("{}", highest + 16)),
        "{error}"
    );
    assert!(
        !error.contains("rcluster-test-worker"),
        "blames the program: {error}"
    );
    sup.stop(Duration::from_secs(2)).unwrap();
}
