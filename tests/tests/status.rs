//! The status object a running cluster gives (`Supervisor::status`), with real workers.

use std::time::Duration;

use rcluster_core::{Event, Supervisor};
use rcluster_tests::{wait_for, wait_ready, worker_config};

#[test]
fn status_reports_every_worker_with_its_process_usage_and_restarts_by_reason() {
    let mut cfg = worker_config(2, &["echo"]);
    cfg.name = Some("status-test".into());
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 2);
    sup.send(1, b"!exit 3").unwrap();
    wait_for(&sup, Duration::from_secs(10), |e| {
        matches!(e, Event::Exit { id: 1, .. })
    });
    wait_ready(&sup, 1);
    let st = sup.status().unwrap();
    assert_eq!(st.name, "status-test");
    assert_eq!(st.pid, std::process::id());
    assert_eq!(st.workers_desired, 2);
    assert_eq!(st.generation, 1);
    assert!(!st.reloading);
    assert_eq!(st.workers.len(), 2, "{st:#?}");
    for w in &st.workers {
        assert_eq!(w.state, "ready");
        assert!(w.pid > 0);
        assert!(w.rss_bytes > 64 * 1024, "{w:?}");
        assert!(w.heartbeat_age_s.is_some());
    }
    let w1 = &st.workers[1];
    assert_eq!(w1.restarts, 1);
    assert_eq!(w1.restarts_by_reason.get("crashed"), Some(&1), "{w1:?}");
    let last = w1.last_exit.as_ref().unwrap();
    assert_eq!((last.code, last.reason.as_str()), (Some(3), "crashed"));
    // The key names scripts rely on.
    let json: serde_json::Value = serde_json::from_str(&st.to_json()).unwrap();
    for key in [
        "name",
        "pid",
        "version",
        "uptime_s",
        "generation",
        "workers_desired",
        "listeners",
        "reloading",
        "workers",
    ] {
        assert!(json.get(key).is_some(), "{key} missing in {json}");
    }
    for key in [
        "slot",
        "pid",
        "generation",
        "state",
        "uptime_s",
        "restarts",
        "restarts_by_reason",
        "last_exit",
        "cpu_s",
        "rss_bytes",
        "connections_active",
        "connections_total",
        "heartbeat_age_s",
        "queue_bytes",
    ] {
        assert!(json["workers"][0].get(key).is_some(), "{key} missing");
    }
    sup.stop(Duration::from_secs(5)).unwrap();
}
