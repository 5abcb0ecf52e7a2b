//! Reloads under load and reloads that overlap.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcluster_core::{Error, Event, Supervisor, WorkerState};
use rcluster_tests::*;

#[test]
fn a_reload_requested_during_a_reload_runs_after_it_and_every_worker_ends_on_the_newest_generation()
{
    let sup = Supervisor::start(worker_config(2, &["echo"])).unwrap();
    wait_ready(&sup, 2);
    assert_eq!(sup.reload().unwrap(), 2);
    // A deploy that lands while generation 2 rolls out: a reload of its own, after that one.
    assert_eq!(sup.reload().unwrap(), 3, "the second reload is queued");
    assert_eq!(sup.reload().unwrap(), 3, "at most one reload waits");
    let mut done = Vec::new();
    wait_for(&sup, Duration::from_secs(20), |e| {
        match e {
            Event::ReloadDone { generation } => done.push(*generation),
            Event::ReloadFailed { .. } => panic!("a reload failed: {e:?}"),
            _ => {}
        }
        matches!(e, Event::ReloadDone { generation: 3 })
    });
    assert_eq!(done, vec![2, 3], "both generations rolled out, in order");
    let workers = sup.snapshot().unwrap();
    let live: Vec<_> = workers
        .iter()
        .filter(|w| w.state != WorkerState::Exited && w.state != WorkerState::Draining)
        .map(|w| (w.id, w.generation, w.state))
        .collect();
    assert_eq!(
        live,
        vec![(0, 3, WorkerState::Ready), (1, 3, WorkerState::Ready)],
        "{workers:?}"
    );
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_reload_whose_new_worker_misses_its_ready_timeout_says_so_naming_the_timeout() {
    let mut cfg = worker_config(1, &["gen-fail"]);
    cfg.ready_on = rcluster_core::ReadyOn::Explicit;
    cfg.ready_timeout = Duration::from_secs(1);
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 1);
    assert_eq!(sup.reload().unwrap(), 2);
    let Event::ReloadFailed { generation, reason } = wait_for(&sup, Duration::from_secs(10), |e| {
        matches!(e, Event::ReloadFailed { .. })
    }) else {
        unreachable!()
    };
    assert_eq!(generation, 2);
    assert!(
        reason.contains("ready timeout") && reason.contains("ready_timeout = 1s"),
        "{reason}"
    );
    assert!(!reason.contains("exited before"), "{reason}");
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn commands_racing_with_stop_all_return_in_bounded_time() {
    const ROUNDS: usize = 400;
    const THREADS: usize = 12;
    let started = Instant::now();
    // The race is narrow: it takes rounds to hit it (about twenty on a loaded 2-core
    // machine before the fix), so run as many as fit in a few seconds.
    let mut rounds = 0;
    for round in 0..ROUNDS {
        if started.elapsed() > Duration::from_secs(12) {
            break;
        }
        rounds += 1;
        let sup = Arc::new(Supervisor::start(worker_config(1, &["echo"])).unwrap());
        let (tx, rx) = mpsc::channel();
        for t in 0..THREADS {
            let (sup, tx) = (Arc::clone(&sup), tx.clone());
            std::thread::spawn(move || {
                for i in 0..100_000usize {
                    let r = match (t + i) % 4 {
                        0 => sup.snapshot().map(drop),
                        1 => sup.scale(1),
                        2 => sup.reload().map(drop),
                        _ => sup.restart_worker(0),
                    };
                    // While the stop is under way, commands are refused with `Stopped`; keep
                    // asking until the loop has ended, so that some land right at its end.
                    if matches!(r, Err(Error::Stopped)) && sup.is_stopped() {
                        break;
                    }
                }
                let _ = tx.send(());
            });
        }
        std::thread::sleep(Duration::from_millis(1 + (round as u64 * 7) % 20));
        sup.stop(Duration::from_secs(2)).unwrap();
        for _ in 0..THREADS {
            rx.recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| {
                    panic!("round {round}: a command racing with stop never returned")
                });
        }
    }
    println!("{rounds} rounds in {:?}", started.elapsed());
}
