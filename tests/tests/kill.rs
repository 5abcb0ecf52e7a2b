//! Signals sent to a worker through its supervisor (`Supervisor::kill`): the exit that follows
//! is reported as asked for, not as a crash, and only a worker of the cluster can be reached.

use std::time::Duration;

use rcluster_core::{Error, Event, ExitReason, RestartMode, Supervisor};
use rcluster_tests::*;

#[test]
fn a_worker_killed_through_the_supervisor_exits_with_reason_requested() {
    let mut cfg = worker_config(1, &["echo"]);
    cfg.restart.mode = RestartMode::Never;
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 1);
    sup.kill(0, libc::SIGKILL).unwrap();
    let exit = wait_for(&sup, Duration::from_secs(10), |e| {
        matches!(e, Event::Exit { .. })
    });
    assert!(
        matches!(exit, Event::Exit { id: 0, info, .. }
            if info.signal == Some(libc::SIGKILL) && info.reason == ExitReason::Requested),
        "{exit:?}"
    );
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_signal_the_worker_survives_leaves_it_running() {
    let mut cfg = worker_config(1, &["echo"]);
    cfg.restart.mode = RestartMode::Never;
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 1);
    // SIGCONT stops nothing: the worker carries on and answers.
    sup.kill(0, libc::SIGCONT).unwrap();
    sup.send(0, b"still there").unwrap();
    let echo = wait_for(&sup, Duration::from_secs(10), |e| {
        matches!(e, Event::Message { .. } | Event::Exit { .. })
    });
    assert!(
        matches!(&echo, Event::Message { id: 0, data, .. } if data == b"still there"),
        "{echo:?}"
    );
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn killing_an_unknown_worker_or_with_an_invalid_signal_is_refused() {
    let sup = Supervisor::start(worker_config(1, &["echo"])).unwrap();
    wait_ready(&sup, 1);
    assert!(matches!(
        sup.kill(7, libc::SIGTERM),
        Err(Error::NoSuchWorker(7))
    ));
    assert!(matches!(
        sup.kill(0, 0),
        Err(Error::Config {
            field: "signal",
            ..
        })
    ));
    assert!(matches!(
        sup.kill(0, 65),
        Err(Error::Config {
            field: "signal",
            ..
        })
    ));
    sup.stop(Duration::from_secs(5)).unwrap();
}
