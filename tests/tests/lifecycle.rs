//! Spawning, stopping, scaling, reloading: the supervisor's life with real workers.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rcluster_core::{Config, Error, Event, ExitReason, ReadyOn, Supervisor, WorkerState};
use rcluster_tests::*;

fn message_text(ev: &Event) -> String {
    match ev {
        Event::Message { data, .. } => String::from_utf8_lossy(data).into_owned(),
        other => panic!("not a message: {other:?}"),
    }
}

#[test]
fn workers_get_their_id_generation_and_exactly_four_descriptors() {
    let sup = Supervisor::start(worker_config(2, &["env"])).unwrap();
    let mut seen = Vec::new();
    for _ in 0..2 {
        let ev = wait_for(&sup, Duration::from_secs(5), |e| {
            matches!(e, Event::Message { .. })
        });
        let Event::Message { id, pid, .. } = ev else {
            unreachable!()
        };
        let text = message_text(&ev);
        assert!(text.starts_with(&format!("{id} 1 {pid} ")), "{text}");
        assert!(
            text.contains(&format!("RCLUSTER_WORKER_ID={id}"))
                && text.contains("RCLUSTER_GENERATION=1"),
            "{text}"
        );
        assert!(
            text.contains("RCLUSTER_IPC_FD=3") && text.contains(&format!("RCLUSTER_PID={pid}")),
            "{text}"
        );
        // stdin, stdout, stderr, the IPC socket, and the directory handle used to count them.
        assert!(
            text.contains("fds=5 "),
            "a worker inherited more than its four descriptors: {text}"
        );
        seen.push(id);
    }
    seen.sort();
    assert_eq!(seen, vec![0, 1]);
}

#[test]
fn stop_returns_with_every_worker_reaped() {
    let sup = Supervisor::start(worker_config(3, &["echo"])).unwrap();
    wait_ready(&sup, 3);
    let pids: Vec<u32> = sup.snapshot().unwrap().iter().map(|w| w.pid).collect();
    assert!(pids.iter().all(|&p| pid_alive(p)));
    let t = Instant::now();
    sup.stop(Duration::from_secs(5)).unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "cooperative workers took {:?} to stop",
        t.elapsed()
    );
    assert!(
        pids.iter().all(|&p| !pid_alive(p)),
        "a worker is still alive or unreaped"
    );
    assert!(sup.is_stopped());
    assert!(matches!(sup.send(0, b"x"), Err(Error::Stopped)));
    let mut reasons = HashSet::new();
    while let Some(ev) = sup.next_event(Some(Duration::from_millis(100))) {
        if let Event::Exit { info, .. } = ev {
            reasons.insert(info.reason);
        }
    }
    assert_eq!(reasons, HashSet::from([ExitReason::Shutdown]));
}

#[test]
fn broadcast_reaches_every_worker() {
    let sup = Supervisor::start(worker_config(3, &["echo"])).unwrap();
    wait_ready(&sup, 3);
    assert_eq!(sup.broadcast(b"to all").unwrap(), 3);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let ev = wait_for(&sup, Duration::from_secs(5), |e| {
            matches!(e, Event::Message { .. })
        });
        assert_eq!(message_text(&ev), "to all");
        if let Event::Message { id, .. } = ev {
            ids.push(id);
        }
    }
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2]);
}

#[test]
fn message_of_16_mib_makes_the_round_trip() {
    let sup = Supervisor::start(worker_config(1, &["echo"])).unwrap();
    wait_ready(&sup, 1);
    let big: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    sup.send(0, &big).unwrap();
    let ev = wait_for(&sup, Duration::from_secs(20), |e| {
        matches!(e, Event::Message { .. })
    });
    let Event::Message { data, .. } = ev else {
        unreachable!()
    };
    assert!(
        data == big,
        "16 MiB message came back different ({} bytes)",
        data.len()
    );
}

#[test]
fn oversized_message_is_refused_on_both_sides() {
    let mut cfg = worker_config(1, &["echo"]);
    cfg.max_message = 1024;
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 1);
    let err = sup.send(0, &[0; 1025]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MessageTooLarge {
                size: 1025,
                limit: 1024
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("1025") && err.to_string().contains("1024"));
    assert!(matches!(
        sup.broadcast(&[0; 1025]),
        Err(Error::MessageTooLarge { .. })
    ));
    sup.send(0, b"!too-big").unwrap();
    let reply = wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::Message { .. })
    });
    assert!(
        message_text(&reply).contains("message too large: 1025 bytes, the limit is 1024"),
        "{}",
        message_text(&reply)
    );
    // The worker is still fine.
    sup.send(0, b"still here").unwrap();
    let ev = wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::Message { .. })
    });
    assert_eq!(message_text(&ev), "still here");
}

#[test]
fn malformed_frame_ends_only_that_worker_with_protocol_error() {
    let sup = Supervisor::start(worker_config(2, &["echo"])).unwrap();
    wait_ready(&sup, 2);
    sup.send(0, b"!malformed").unwrap();
    let ev = wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::ProtocolError { .. })
    });
    assert!(
        matches!(&ev, Event::ProtocolError { id: 0, detail, .. } if detail.contains("unknown frame kind 200")),
        "{ev:?}"
    );
    let exit = wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::Exit { .. })
    });
    assert!(
        matches!(exit, Event::Exit { id: 0, info, .. } if info.reason == ExitReason::ProtocolError),
        "{exit:?}"
    );
    sup.send(1, b"other one").unwrap();
    let ev = wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::Message { .. })
    });
    assert!(matches!(ev, Event::Message { id: 1, .. }));
    wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::Ready { id: 0, .. })
    });
}

#[test]
fn bad_config_is_an_error_naming_the_field() {
    type Breaker = Box<dyn Fn(&mut Config)>;
    let cases: Vec<(Breaker, &str)> = vec![
        (Box::new(|c| c.workers = 0), "workers"),
        (Box::new(|c| c.workers = 5000), "workers"),
        (Box::new(|c| c.argv = vec![]), "argv"),
        (
            Box::new(|c| c.argv = vec!["/no/such/program".into()]),
            "/no/such/program",
        ),
        (Box::new(|c| c.restart.jitter = 2.0), "restart.jitter"),
        (
            Box::new(|c| c.restart.backoff_multiplier = 0.5),
            "restart.backoff_multiplier",
        ),
        (
            Box::new(|c| c.kill_timeout = Duration::ZERO),
            "kill_timeout",
        ),
        (Box::new(|c| c.max_message = 0), "max_message"),
        (Box::new(|c| c.cwd = Some("/no/such/dir".into())), "cwd"),
        (
            Box::new(|c| c.env = vec![("A=B".into(), "x".into())]),
            "env",
        ),
    ];
    for (break_it, field) in cases {
        let mut cfg = worker_config(1, &["echo"]);
        break_it(&mut cfg);
        let err = Supervisor::start(cfg)
            .err()
            .expect("config should be refused")
            .to_string();
        assert!(err.contains(field), "error {err:?} does not name {field}");
    }
}

#[test]
fn scale_up_and_down_at_runtime() {
    let sup = Supervisor::start(worker_config(1, &["echo"])).unwrap();
    wait_ready(&sup, 1);
    sup.scale(3).unwrap();
    let mut ids = HashSet::new();
    while ids.len() < 2 {
        if let Event::Ready { id, .. } = wait_for(&sup, Duration::from_secs(5), |e| {
            matches!(e, Event::Ready { .. })
        }) {
            ids.insert(id);
        }
    }
    assert_eq!(ids, HashSet::from([1, 2]));
    sup.scale(1).unwrap();
    let mut gone = HashSet::new();
    while gone.len() < 2 {
        if let Event::Exit { id, info, .. } = wait_for(&sup, Duration::from_secs(5), |e| {
            matches!(e, Event::Exit { .. })
        }) {
            assert_eq!(info.reason, ExitReason::Requested);
            gone.insert(id);
        }
    }
    assert_eq!(gone, HashSet::from([1, 2]));
    let snap = sup.snapshot().unwrap();
    assert_eq!(snap.len(), 1, "{snap:?}");
    assert!(matches!(sup.send(2, b"x"), Err(Error::NoSuchWorker(2))));
    assert!(sup.scale(0).unwrap_err().to_string().contains("workers"));
}

#[test]
fn reload_replaces_every_worker_one_at_a_time() {
    let mut cfg = worker_config(2, &["echo"]);
    cfg.ready_on = ReadyOn::Explicit;
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 2);
    let old: Vec<u32> = sup.snapshot().unwrap().iter().map(|w| w.pid).collect();
    assert_eq!(sup.reload().unwrap(), 2);
    let mut live = 2;
    let mut max_live = 2;
    loop {
        let ev = wait_for(&sup, Duration::from_secs(10), |_| true);
        match ev {
            Event::Spawned { generation, .. } => {
                assert_eq!(generation, 2);
                live += 1;
            }
            Event::Exit {
                info, generation, ..
            } => {
                assert_eq!((generation, info.reason), (1, ExitReason::Requested));
                live -= 1;
            }
            Event::ReloadDone { generation: 2 } => break,
            Event::ReloadFailed { reason, .. } => panic!("reload failed: {reason}"),
            _ => {}
        }
        max_live = max_live.max(live);
    }
    assert_eq!(max_live, 3, "more than one extra worker at a time");
    let snap = sup.snapshot().unwrap();
    assert!(
        snap.iter()
            .all(|w| w.generation == 2 && w.state == WorkerState::Ready && !old.contains(&w.pid)),
        "{snap:?}"
    );
    sup.send(1, b"new").unwrap();
    wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::Message { id: 1, .. })
    });
}

#[test]
fn reload_whose_new_workers_never_get_ready_keeps_the_old_ones() {
    let mut cfg = worker_config(2, &["gen-fail"]);
    cfg.ready_on = ReadyOn::Explicit;
    cfg.ready_timeout = Duration::from_millis(400);
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 2);
    let old: Vec<u32> = sup.snapshot().unwrap().iter().map(|w| w.pid).collect();
    sup.reload().unwrap();
    let ev = wait_for(&sup, Duration::from_secs(10), |e| {
        matches!(e, Event::ReloadFailed { .. })
    });
    assert!(
        matches!(&ev, Event::ReloadFailed { generation: 2, reason } if reason.contains("missed its ready timeout")),
        "{ev:?}"
    );
    let snap = sup.snapshot().unwrap();
    assert_eq!(
        snap.iter().map(|w| w.pid).collect::<Vec<_>>(),
        old,
        "{snap:?}"
    );
    for id in 0..2 {
        sup.send(id, b"old still serves").unwrap();
        wait_for(&sup, Duration::from_secs(5), |e| {
            matches!(e, Event::Message { .. })
        });
    }
    // The old generation is still supervised as before: a crash restarts it.
    sup.send(0, b"!exit 1").unwrap();
    wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::Restarting { id: 0, .. })
    });
    let ev = wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::Spawned { id: 0, .. })
    });
    assert!(matches!(ev, Event::Spawned { generation: 1, .. }), "{ev:?}");
}

#[test]
fn restart_worker_replaces_its_process() {
    let sup = Supervisor::start(worker_config(2, &["echo"])).unwrap();
    wait_ready(&sup, 2);
    let before = sup.snapshot().unwrap();
    sup.restart_worker(1).unwrap();
    wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::Ready { id: 1, .. })
    });
    let after = sup.snapshot().unwrap();
    assert_eq!(before[0].pid, after[0].pid);
    assert_ne!(before[1].pid, after[1].pid);
    assert!(matches!(sup.restart_worker(7), Err(Error::NoSuchWorker(7))));
}

#[test]
fn event_fd_is_readable_while_events_wait() {
    let sup = Supervisor::start(worker_config(1, &["echo"])).unwrap();
    wait_ready(&sup, 1);
    while sup.try_next_event().is_some() {}
    let readable = |ms| {
        let mut p = libc::pollfd {
            fd: sup.event_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, ms) == 1 }
    };
    assert!(!readable(0), "readable with an empty queue");
    sup.send(0, b"wake").unwrap();
    assert!(readable(5000), "not readable after a message arrived");
    assert!(matches!(sup.try_next_event(), Some(Event::Message { .. })));
    assert!(!readable(0), "still readable after the queue was drained");
}

#[test]
fn full_queue_of_a_worker_that_does_not_read_is_reported_and_blocks_nobody() {
    let mut cfg = worker_config(2, &["ignore-term"]);
    cfg.max_message = 1024;
    cfg.send_queue_limit = 64 * 1024;
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 2);
    // Worker 0 never reads: the socket buffer fills, then the bounded queue.
    let mut sent = 0;
    let err = loop {
        match sup.send(0, &[7; 1000]) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 100_000, "queue never reported full");
    };
    assert!(
        matches!(
            err,
            Error::QueueFull {
                worker: 0,
                limit: 65536
            }
        ),
        "{err}"
    );
    // The loop is not blocked: snapshots and stops still work promptly.
    let t = Instant::now();
    assert_eq!(sup.snapshot().unwrap().len(), 2);
    assert!(t.elapsed() < Duration::from_millis(500));
    sup.stop(Duration::from_millis(300)).unwrap();
}

#[test]
fn stop_kills_workers_that_ignore_sigterm_when_the_timeout_passes() {
    let mut cfg = worker_config(2, &["ignore-term"]);
    cfg.kill_timeout = Duration::from_secs(30);
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 2);
    let pids: Vec<u32> = sup.snapshot().unwrap().iter().map(|w| w.pid).collect();
    let t = Instant::now();
    sup.stop(Duration::from_millis(300)).unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(3),
        "stop took {took:?}"
    );
    assert!(pids.iter().all(|&p| !pid_alive(p)));
    let mut signals = Vec::new();
    while let Some(ev) = sup.next_event(Some(Duration::from_millis(50))) {
        if let Event::Exit { info, .. } = ev {
            signals.push((info.signal, info.reason));
        }
    }
    assert_eq!(
        signals,
        vec![(Some(libc::SIGKILL), ExitReason::Shutdown); 2]
    );
}

#[test]
fn messages_sent_right_before_exit_are_delivered() {
    let sup = Supervisor::start(worker_config(1, &["env"])).unwrap();
    wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::Message { .. })
    });
    for i in 0..100 {
        sup.send(0, format!("m{i}").as_bytes()).unwrap();
    }
    sup.send(0, b"!exit 0").unwrap();
    let mut got = 0;
    let is_message_or_exit = |e: &Event| matches!(e, Event::Message { .. } | Event::Exit { .. });
    while let Event::Message { .. } = wait_for(&sup, Duration::from_secs(5), is_message_or_exit) {
        got += 1;
    }
    assert_eq!(got, 100, "echoes lost around the exit");
}

#[test]
fn batches_and_streams_of_messages_arrive_in_order_both_ways() {
    let mut cfg = worker_config(1, &["echo"]);
    cfg.max_message = 1024;
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 1);
    let next = || {
        message_text(&wait_for(&sup, Duration::from_secs(10), |e| {
            matches!(e, Event::Message { .. })
        }))
    };
    // A batch too large as a whole message by message is refused whole: nothing of it goes.
    let big = [0u8; 1025];
    assert!(matches!(
        sup.send_many(0, &[b"not sent", &big]),
        Err(Error::MessageTooLarge { size: 1025, .. })
    ));
    // Batches, and single sends close together (which the loop gathers), keep their order.
    let texts: Vec<String> = (0..3000).map(|i| format!("m{i}")).collect();
    for chunk in texts.chunks(500) {
        let parts: Vec<&[u8]> = chunk.iter().map(|t| t.as_bytes()).collect();
        sup.send_many(0, &parts).unwrap();
    }
    for t in &texts {
        sup.send(0, t.as_bytes()).unwrap();
    }
    for i in 0..6000 {
        assert_eq!(next(), format!("m{}", i % 3000));
    }
    // The worker side: a batch in one write, and a batch with one too large refused whole.
    sup.send(0, b"!burst 2000").unwrap();
    for i in 0..2000 {
        assert_eq!(next(), format!("b{i}"));
    }
    let refused = next();
    assert!(refused.contains("message too large"), "{refused}");
}

#[test]
fn a_second_shorter_stop_brings_the_kill_forward() {
    let mut cfg = worker_config(2, &["ignore-term"]);
    cfg.kill_timeout = Duration::from_secs(60);
    let sup = std::sync::Arc::new(Supervisor::start(cfg).unwrap());
    wait_ready(&sup, 2);
    let t = Instant::now();
    let first = {
        let sup = std::sync::Arc::clone(&sup);
        std::thread::spawn(move || sup.stop(Duration::from_secs(60)))
    };
    std::thread::sleep(Duration::from_millis(100));
    sup.stop(Duration::from_millis(10)).unwrap();
    first.join().unwrap().unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the second stop did not shorten the first: {:?}",
        t.elapsed()
    );
    assert!(sup.snapshot().is_err());
}

#[test]
fn reload_with_max_surge_two_replaces_two_slots_at_a_time() {
    let mut cfg = worker_config(4, &["echo"]);
    cfg.ready_on = ReadyOn::Explicit;
    cfg.max_surge = 2;
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 4);
    sup.reload().unwrap();
    let (mut live, mut max_live) = (4, 4);
    loop {
        match wait_for(&sup, Duration::from_secs(10), |_| true) {
            Event::Spawned { .. } => live += 1,
            Event::Exit { .. } => live -= 1,
            Event::ReloadDone { .. } => break,
            Event::ReloadFailed { reason, .. } => panic!("reload failed: {reason}"),
            _ => {}
        }
        max_live = max_live.max(live);
    }
    assert_eq!(
        max_live, 6,
        "expected exactly two extra workers at the peak"
    );
    assert!(sup.snapshot().unwrap().iter().all(|w| w.generation == 2));
}

#[test]
fn reload_of_programs_ready_at_spawn_completes() {
    let mut cfg = Config::new(["sh", "-c", "sleep 300"]);
    cfg.workers = 2;
    cfg.ready_on = ReadyOn::Spawn;
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 2);
    sup.reload().unwrap();
    wait_for(&sup, Duration::from_secs(10), |e| {
        matches!(e, Event::ReloadDone { generation: 2 })
    });
    assert!(sup.snapshot().unwrap().iter().all(|w| w.generation == 2));
}

/// A host may mark its stdio close-on-exec for its own children (libuv does); workers must
/// still inherit it. Runs in a child process of the test so that the flag change stays there.
#[test]
fn workers_inherit_stdout_even_when_the_host_marked_it_close_on_exec() {
    if std::env::var_os("RCLUSTER_CLOEXEC_CHILD").is_some() {
        // SAFETY: changes only this process's FD_CLOEXEC flag on its stdout.
        unsafe { libc::fcntl(1, libc::F_SETFD, libc::FD_CLOEXEC) };
        let mut cfg = Config::new(["sh", "-c", "echo worker-wrote-this"]);
        cfg.workers = 1;
        cfg.ready_on = ReadyOn::Spawn;
        cfg.restart.mode = rcluster_core::RestartMode::Never;
        let sup = Supervisor::start(cfg).unwrap();
        wait_for(&sup, Duration::from_secs(5), |e| {
            matches!(e, Event::Exit { .. })
        });
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "workers_inherit_stdout_even_when_the_host_marked_it_close_on_exec",
            "--nocapture",
        ])
        .env("RCLUSTER_CLOEXEC_CHILD", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("worker-wrote-this"),
        "the worker's stdout was lost:\n{stdout}"
    );
}

#[test]
fn workers_are_told_how_often_to_send_heartbeats() {
    let mut cfg = worker_config(1, &["env"]);
    cfg.heartbeat_timeout = Some(Duration::from_secs(2));
    let sup = Supervisor::start(cfg).unwrap();
    let ev = wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::Message { .. })
    });
    assert!(
        message_text(&ev).contains("RCLUSTER_HEARTBEAT_MS=500"),
        "{}",
        message_text(&ev)
    );
}

/// The scheduling policy in a `stat` file (field 41; the name before it may hold spaces).
fn policy(stat_path: &str) -> u32 {
    let stat = std::fs::read_to_string(stat_path).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    // Field 3 (the state) is the first after the name.
    after_name.split(' ').nth(41 - 3).unwrap().parse().unwrap()
}

#[test]
fn the_loop_thread_runs_as_a_batch_thread_and_workers_under_the_host_policy() {
    let host = policy("/proc/thread-self/stat");
    let sup = Supervisor::start(worker_config(2, &["echo"])).unwrap();
    wait_ready(&sup, 2);
    let loop_threads: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|t| t.unwrap().path())
        .filter(|t| std::fs::read_to_string(t.join("comm")).unwrap().trim() == "rcluster")
        .map(|t| policy(t.join("stat").to_str().unwrap()))
        .collect();
    let batch = libc::SCHED_BATCH as u32;
    // Only a thread under the normal policy is moved; one the host put under another keeps it.
    let want = if host == libc::SCHED_OTHER as u32 {
        batch
    } else {
        host
    };
    assert!(!loop_threads.is_empty(), "no thread named rcluster");
    assert!(loop_threads.iter().all(|&p| p == want), "{loop_threads:?}");
    assert_eq!(
        policy("/proc/thread-self/stat"),
        host,
        "the host's thread changed"
    );
    for w in sup.snapshot().unwrap() {
        assert_eq!(
            policy(&format!("/proc/{}/stat", w.pid)),
            host,
            "worker {} did not get the host's policy back",
            w.id
        );
    }
}
