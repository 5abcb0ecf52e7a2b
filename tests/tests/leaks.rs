//! Long crash loops leak nothing: no zombie, no descriptor. (Alone in its binary, so that no
//! other test's processes or descriptors disturb the counts.)

use std::time::Duration;

use rcluster_core::{open_fd_count, Event, Supervisor};
use rcluster_tests::*;

#[test]
fn two_hundred_crash_restart_cycles_leave_no_zombie_and_no_descriptor() {
    let before = open_fd_count();
    let mut cfg = worker_config(2, &["exit", "0", "1"]);
    cfg.restart.backoff_initial = Duration::ZERO;
    cfg.restart.backoff_max = Duration::ZERO;
    cfg.restart.max_restarts = 10_000;
    let sup = Supervisor::start(cfg).unwrap();
    let mut exits = 0;
    let mut fd_samples = Vec::new();
    while exits < 200 {
        if let Event::Exit { .. } = wait_for(&sup, Duration::from_secs(10), |e| {
            matches!(e, Event::Exit { .. })
        }) {
            exits += 1;
            if exits % 50 == 0 {
                fd_samples.push(open_fd_count());
            }
        }
    }
    // While running: 2 workers × (IPC socket + pidfd), epoll and two eventfds, the few
    // descriptors of a spawn in progress (socket end, exec-error pipe), and the sentinel's
    // socket and pidfd with the cluster's cgroup.procs and cgroup.kill. A leak of one per
    // cycle would show as +200.
    assert!(
        fd_samples.iter().all(|&n| n <= before + 3 + 4 + 4 + 4),
        "descriptors grew: before {before}, samples {fd_samples:?}"
    );
    sup.stop(Duration::from_secs(5)).unwrap();
    assert_eq!(zombie_children(), 0, "zombies left after stop");
    // The handle keeps its two eventfds until dropped.
    assert_eq!(open_fd_count(), before + 2, "descriptors left after stop");
    drop(sup);
    assert_eq!(open_fd_count(), before, "descriptors left after drop");
}
