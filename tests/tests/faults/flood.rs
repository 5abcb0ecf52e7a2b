//! Floods: workers that send without pause to a host that does not read, crash storms.

use std::time::{Duration, Instant};

use rcluster_core::{open_fd_count, Event, ExitReason, Supervisor, WorkerState};
use rcluster_tests::*;

/// The resident memory of this process, in bytes.
fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

const MB: usize = 1 << 20;

/// How long the flooding worker sends.
const FLOOD: Duration = Duration::from_secs(5);

/// A worker floods for `FLOOD` while the host reads nothing; then the host drains the queue.
fn flood_into_a_host_that_does_not_read(host_reads_itself: bool) {
    let ms = FLOOD.as_millis().to_string();
    let sup = Supervisor::start(worker_config(1, &["flood", &ms])).unwrap();
    if host_reads_itself {
        // From now on the host thread reads chatty workers itself (`reader::HostRead`).
        let _ = sup.event_fd();
    }
    let Event::Ready { pid, .. } = wait_for(&sup, Duration::from_secs(10), |e| {
        matches!(e, Event::Ready { .. })
    }) else {
        unreachable!()
    };
    let before = rss();
    std::thread::sleep(FLOOD + Duration::from_secs(1));
    let after = rss();
    println!(
        "flood of {FLOOD:?} (host reads itself: {host_reads_itself}): RSS {} kB -> {} kB",
        before / 1024,
        after / 1024
    );
    assert!(
        after.saturating_sub(before) < 20 * MB,
        "the primary grew from {} kB to {} kB while a worker flooded it",
        before / 1024,
        after / 1024
    );

    // Every message arrives, in order, and the worker was only slowed down, never killed.
    let mut next = 0u64;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match sup.next_event(Some(left)) {
            Some(Event::Message { data, .. }) => {
                let text = String::from_utf8(data).unwrap();
                if let Some(n) = text.strip_prefix("flood-done ") {
                    assert_eq!(n.parse::<u64>().unwrap(), next, "messages were lost");
                    break;
                }
                assert_eq!(text, format!("m{next}"), "messages out of order");
                next += 1;
            }
            Some(Event::Exit { info, .. }) => panic!("the flooding worker exited: {info:?}"),
            Some(_) => {}
            None => panic!("no flood-done within 20 s; {next} messages taken"),
        }
    }
    println!("{next} messages delivered in order");
    let live: Vec<_> = sup
        .snapshot()
        .unwrap()
        .into_iter()
        .filter(|w| w.state == WorkerState::Ready)
        .map(|w| w.pid)
        .collect();
    assert_eq!(
        live,
        vec![pid],
        "the flooding worker is still the one running"
    );
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_worker_flooding_a_host_that_does_not_read_leaves_memory_flat_and_loses_nothing() {
    flood_into_a_host_that_does_not_read(false);
}

#[test]
fn a_worker_flooding_a_host_that_reads_itself_leaves_memory_flat_and_loses_nothing() {
    flood_into_a_host_that_does_not_read(true);
}

#[test]
fn a_flooding_worker_does_not_hold_back_the_exit_of_another_worker_from_a_slow_host() {
    // Slot 0 floods for longer than the test runs; slot 1 echoes.
    let mut cfg = worker_config(2, &["flood", "60000", "0"]);
    cfg.event_queue_limit = 64 << 10;
    cfg.restart.mode = rcluster_core::RestartMode::Never;
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 2);
    std::thread::sleep(Duration::from_secs(1)); // The queue fills up.
    sup.send(1, b"!exit 7").unwrap();
    // A host that takes one event a millisecond still sees the exit soon.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut taken = 0;
    let info = loop {
        assert!(
            Instant::now() < deadline,
            "no exit of worker 1 within 15 s ({taken} events taken)"
        );
        match sup.next_event(Some(Duration::from_secs(5))) {
            Some(Event::Exit { id: 1, info, .. }) => break info,
            Some(Event::Exit { id, info, .. }) => panic!("worker {id} exited: {info:?}"),
            Some(_) => taken += 1,
            None => panic!("no event within 5 s"),
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    println!("exit of worker 1 seen after {taken} other events");
    assert_eq!((info.code, info.reason), (Some(7), ExitReason::Crashed));
    let flooding = sup.snapshot().unwrap();
    assert!(
        flooding
            .iter()
            .any(|w| w.id == 0 && w.state == WorkerState::Ready && pid_alive(w.pid)),
        "the flooding worker runs on: {flooding:?}"
    );
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_crash_storm_of_thirty_seconds_leaks_no_zombie_no_descriptor_and_no_memory() {
    const STORM: Duration = Duration::from_secs(30);
    const WARM_UP: Duration = Duration::from_secs(5);
    let fds_before = open_fd_count();
    let mut cfg = worker_config(1, &["exit", "0", "1"]);
    cfg.restart.backoff_initial = Duration::ZERO;
    cfg.restart.backoff_max = Duration::ZERO;
    cfg.restart.max_restarts = u32::MAX;
    let sup = Supervisor::start(cfg).unwrap();
    let start = Instant::now();
    let (mut exits, mut warm) = (0u64, None);
    let mut fd_samples = Vec::new();
    while start.elapsed() < STORM {
        match sup.next_event(Some(Duration::from_secs(5))) {
            Some(Event::Exit { info, .. }) => {
                assert_eq!(info.reason, ExitReason::Crashed, "{info:?}");
                exits += 1;
                if exits % 500 == 0 {
                    fd_samples.push(open_fd_count());
                }
            }
            Some(Event::GaveUp { .. }) => panic!("the slot gave up"),
            Some(_) => {}
            None => panic!("no event for 5 s during the crash storm"),
        }
        if warm.is_none() && start.elapsed() >= WARM_UP {
            warm = Some((rss(), exits));
        }
    }
    let rss_end = rss();
    let (rss_warm, exits_warm) = warm.unwrap();
    let rate = exits as f64 / start.elapsed().as_secs_f64();
    println!(
        "crash storm: {exits} restarts in {STORM:?} ({rate:.0}/s); RSS after warm-up {} kB, \
         at the end {} kB ({} restarts later); descriptors {fds_before} before, samples {:?}",
        rss_warm / 1024,
        rss_end / 1024,
        exits - exits_warm,
        fd_samples
    );
    assert!(exits >= 100, "only {exits} restarts in {STORM:?}");
    // While running: the worker's IPC socket, pidfd, the epoll set and two eventfds, the
    // few descriptors of a spawn in progress, and for a moment the output pipes of the worker
    // that just exited, read to their end, beside those of the next (seen on a loaded run).
    assert!(
        fd_samples.iter().all(|&n| n <= fds_before + 3 + 2 + 4 + 2),
        "descriptors grew: before {fds_before}, samples {fd_samples:?}"
    );
    // And no growth over the storm: a descriptor lost per restart would be thousands.
    let quarter = (fd_samples.len() / 4).max(1);
    let first = fd_samples[..quarter].iter().max().copied().unwrap_or(0);
    let last = fd_samples[fd_samples.len() - quarter..]
        .iter()
        .min()
        .copied()
        .unwrap_or(0);
    assert!(
        last <= first,
        "descriptors grew over the storm: {fd_samples:?}"
    );
    assert!(
        rss_end.saturating_sub(rss_warm) <= MB,
        "RSS grew from {} kB to {} kB during the storm",
        rss_warm / 1024,
        rss_end / 1024
    );
    sup.stop(Duration::from_secs(5)).unwrap();
    assert_eq!(zombie_children(), 0, "zombies left after stop");
    drop(sup);
    assert_eq!(open_fd_count(), fds_before, "descriptors left after drop");
}

#[test]
fn an_exit_code_in_no_restart_codes_is_reported_as_no_restart_and_not_as_a_crash() {
    let mut cfg = worker_config(1, &["exit", "50", "3"]);
    cfg.restart.no_restart_codes = vec![3];
    let sup = Supervisor::start(cfg).unwrap();
    let Event::Exit { info, .. } = wait_for(&sup, Duration::from_secs(10), |e| {
        matches!(e, Event::Exit { .. })
    }) else {
        unreachable!()
    };
    assert_eq!(info.code, Some(3));
    assert_eq!(info.reason.as_str(), "no_restart", "{info:?}");
    assert!(!info.reason.is_failure());
    // Nothing restarts it: the cluster is down.
    wait_for(&sup, Duration::from_secs(10), |e| {
        assert!(!matches!(e, Event::Restarting { .. }), "restarted: {e:?}");
        matches!(e, Event::AllDown)
    });
    sup.stop(Duration::from_secs(5)).unwrap();
}
