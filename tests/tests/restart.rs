//! Restart policy with real processes: crashes, backoff, giving up, exit codes, timeouts.

use std::time::{Duration, Instant};

use rcluster_core::{Event, ExitReason, ReadyOn, RestartMode, Supervisor};
use rcluster_tests::*;

fn exit_reason(ev: &Event) -> Option<ExitReason> {
    match ev {
        Event::Exit { info, .. } => Some(info.reason),
        _ => None,
    }
}

#[test]
fn crashed_worker_is_restarted_after_backoff() {
    let mut cfg = worker_config(1, &["exit", "50", "1"]);
    cfg.restart.backoff_initial = Duration::from_millis(150);
    let sup = Supervisor::start(cfg).unwrap();
    let first = wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::Spawned { .. })
    });
    let exit = wait_for(&sup, Duration::from_secs(5), |e| exit_reason(e).is_some());
    let exited_at = Instant::now();
    assert!(
        matches!(exit, Event::Exit { id: 0, info, .. } if info.code == Some(1) && info.reason == ExitReason::Crashed),
        "{exit:?}"
    );
    let restarting = wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::Restarting { .. })
    });
    assert!(
        matches!(restarting, Event::Restarting { id: 0, delay, attempt: 1 } if delay == Duration::from_millis(150))
    );
    let second = wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::Spawned { .. })
    });
    assert!(
        exited_at.elapsed() >= Duration::from_millis(120),
        "restarted before the backoff passed"
    );
    let pid = |e: &Event| match e {
        Event::Spawned { pid, .. } => *pid,
        _ => 0,
    };
    assert_ne!(pid(&first), pid(&second));
}

/// The worker lives long only on its 4th start, which must reset the backoff.
#[test]
fn backoff_grows_and_resets_after_min_uptime() {
    let dir = std::env::temp_dir().join(format!("rcluster-backoff-{}", std::process::id()));
    let counter = dir.to_string_lossy().into_owned();
    let script = format!("n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; [ $n -eq 3 ] && sleep 0.6; exit 1");
    let mut cfg = rcluster_core::Config::new(["sh", "-c", &script]);
    cfg.workers = 1;
    cfg.ready_on = ReadyOn::Spawn;
    cfg.restart.backoff_initial = Duration::from_millis(20);
    cfg.restart.backoff_max = Duration::from_secs(5);
    cfg.restart.jitter = 0.0;
    cfg.restart.min_uptime = Duration::from_millis(400);
    let sup = Supervisor::start(cfg).unwrap();
    let mut delays = Vec::new();
    while delays.len() < 5 {
        if let Event::Restarting { delay, attempt, .. } =
            wait_for(&sup, Duration::from_secs(10), |e| {
                matches!(e, Event::Restarting { .. })
            })
        {
            delays.push((delay.as_millis(), attempt));
        }
    }
    sup.stop(Duration::from_secs(2)).unwrap();
    let _ = std::fs::remove_file(&dir);
    assert_eq!(delays, vec![(20, 1), (40, 2), (80, 3), (20, 1), (40, 2)]);
}

#[test]
fn too_many_restarts_within_the_window_gives_up() {
    let mut cfg = worker_config(2, &["exit", "0", "1"]);
    cfg.restart.max_restarts = 3;
    cfg.restart.window = Duration::from_secs(30);
    cfg.restart.backoff_initial = Duration::from_millis(1);
    cfg.restart.backoff_max = Duration::from_millis(1);
    let sup = Supervisor::start(cfg).unwrap();
    let mut gave_up = Vec::new();
    while gave_up.len() < 2 {
        if let Event::GaveUp { id, restarts, .. } = wait_for(&sup, Duration::from_secs(10), |e| {
            matches!(e, Event::GaveUp { .. })
        }) {
            assert_eq!(restarts, 3);
            gave_up.push(id);
        }
    }
    gave_up.sort();
    assert_eq!(gave_up, vec![0, 1]);
    wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::AllDown)
    });
    assert!(sup
        .snapshot()
        .unwrap()
        .iter()
        .all(|w| w.pid == 0 && w.restarts == 3));
}

#[test]
fn exit_code_listed_as_no_restart_is_not_restarted() {
    let mut cfg = worker_config(1, &["exit", "0", "3"]);
    cfg.restart.no_restart_codes = vec![3];
    let sup = Supervisor::start(cfg).unwrap();
    let exit = wait_for(&sup, Duration::from_secs(5), |e| exit_reason(e).is_some());
    assert!(matches!(exit, Event::Exit { info, .. } if info.code == Some(3)));
    let next = wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(
            e,
            Event::AllDown | Event::Restarting { .. } | Event::Spawned { .. }
        )
    });
    assert_eq!(next, Event::AllDown);
}

#[test]
fn on_failure_policy_leaves_a_clean_exit_down() {
    let mut cfg = worker_config(1, &["exit", "0", "0"]);
    cfg.restart.mode = RestartMode::OnFailure;
    let sup = Supervisor::start(cfg).unwrap();
    let exit = wait_for(&sup, Duration::from_secs(5), |e| exit_reason(e).is_some());
    assert_eq!(exit_reason(&exit), Some(ExitReason::Exited));
    let next = wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::AllDown | Event::Restarting { .. })
    });
    assert_eq!(next, Event::AllDown);
}

#[test]
fn worker_ignoring_sigterm_is_killed_after_kill_timeout() {
    let mut cfg = worker_config(1, &["ignore-term"]);
    cfg.kill_timeout = Duration::from_millis(300);
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 1);
    let asked = Instant::now();
    sup.restart_worker(0).unwrap();
    let exit = wait_for(&sup, Duration::from_secs(5), |e| exit_reason(e).is_some());
    let took = asked.elapsed();
    assert!(
        matches!(exit, Event::Exit { info, .. } if info.signal == Some(libc::SIGKILL) && info.reason == ExitReason::Requested),
        "{exit:?}"
    );
    assert!(
        took >= Duration::from_millis(280),
        "killed after {took:?}, before kill_timeout"
    );
    assert!(took < Duration::from_secs(2), "killed only after {took:?}");
    // A requested restart comes back at once, without backoff.
    wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::Ready { id: 0, .. })
    });
}

#[test]
fn worker_that_stops_heartbeating_is_killed() {
    let mut cfg = worker_config(1, &["heartbeat", "400"]);
    cfg.heartbeat_timeout = Some(Duration::from_millis(250));
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 1);
    let since = Instant::now();
    let exit = wait_for(&sup, Duration::from_secs(5), |e| exit_reason(e).is_some());
    assert!(
        matches!(exit, Event::Exit { info, .. } if info.reason == ExitReason::Heartbeat && info.signal == Some(libc::SIGKILL)),
        "{exit:?}"
    );
    // It heartbeated for 400 ms, so it must not have been killed before that.
    assert!(
        since.elapsed() >= Duration::from_millis(500),
        "killed after {:?}",
        since.elapsed()
    );
}

#[test]
fn worker_not_ready_in_time_is_killed_with_ready_timeout() {
    let mut cfg = worker_config(1, &["never-ready"]);
    cfg.ready_on = ReadyOn::Explicit;
    cfg.ready_timeout = Duration::from_millis(300);
    let sup = Supervisor::start(cfg).unwrap();
    wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::Online { .. })
    });
    let exit = wait_for(&sup, Duration::from_secs(5), |e| exit_reason(e).is_some());
    assert_eq!(exit_reason(&exit), Some(ExitReason::ReadyTimeout));
    wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::Restarting { id: 0, .. })
    });
}
