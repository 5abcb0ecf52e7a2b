use std::time::Duration;

use rcluster_core::{Event, Supervisor};
use rcluster_tests::*;

#[test]
fn echo_round_trip_and_stop() {
    let sup = Supervisor::start(worker_config(2, &["echo"])).unwrap();
    let ids = wait_ready(&sup, 2);
    assert_eq!(ids, vec![0, 1]);
    sup.send(1, b"ping").unwrap();
    let ev = wait_for(&sup, Duration::from_secs(5), |e| matches!(e, Event::Message { .. }));
    assert!(matches!(ev, Event::Message { id: 1, ref data, .. } if data == b"ping"));
    let snap = sup.snapshot().unwrap();
    assert_eq!(snap.len(), 2);
    sup.stop(Duration::from_secs(5)).unwrap();
    assert!(snap.iter().all(|w| !pid_alive(w.pid)));
}
