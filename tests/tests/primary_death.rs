//! A primary killed with SIGKILL leaves nothing behind: not its workers (PR_SET_PDEATHSIG),
//! not their children (the sentinel kills their process groups), and, where the cluster has a
//! cgroup of its own, not even descendants that left the group with `setsid`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcluster_tests::procs::{self, MARK_VAR};
use rcluster_tests::*;

/// Starts `rcluster-test-primary N ARGS…` with `mark` in its environment; returns it and the
/// worker pids it printed once they were ready.
fn test_primary(n: usize, args: &[&str], mark: &str) -> (Child, Vec<u32>) {
    let mut primary = Command::new(bin_path("rcluster-test-primary"))
        .arg(n.to_string())
        .args(args)
        .env(MARK_VAR, mark)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(primary.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let pids: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), n, "primary printed {line:?}");
    (primary, pids)
}

/// What a worker started with `procs::worker_with_children` left: the members of its group
/// (itself and a `sleep`), and the `setsid` one.
struct Family {
    group: Vec<u32>,
    escaped: Vec<u32>,
}

/// Waits until every worker has its two children (the shell starts them before exec).
fn families(workers: &[u32], mark: &str) -> Family {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = procs::marked(mark);
        let group: Vec<u32> = all
            .iter()
            .copied()
            .filter(|&p| procs::pgrp(p).is_some_and(|g| workers.contains(&g)))
            .collect();
        let escaped: Vec<u32> = all
            .iter()
            .copied()
            .filter(|&p| procs::session(p) == Some(p) && procs::pgrp(p) == Some(p))
            .filter(|p| !workers.contains(p))
            .collect();
        if group.len() == 2 * workers.len() && escaped.len() == workers.len() {
            return Family { group, escaped };
        }
        assert!(
            Instant::now() < deadline,
            "workers {workers:?} did not start their children: group {group:?}, escaped {escaped:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Kills `primary` with SIGKILL, then checks that the group members are gone within a second
/// and, when the workers ran in a cgroup of the cluster's own, that everything marked is.
fn kill_primary_and_check(mut primary: Child, workers: &[u32], mark: &str, host: &str) {
    let _cleanup = procs::KillMarked(mark.to_string());
    let family = families(workers, mark);
    let in_cgroup = procs::cgroup_available();
    assert_eq!(
        procs::cgroup_of(workers[0]).is_some_and(|c| c.contains("/rcluster.")),
        in_cgroup,
        "{host}: the workers are not in a cgroup of the cluster's own, though one was possible"
    );
    primary.kill().unwrap();
    let killed_at = Instant::now();
    primary.wait().unwrap();
    let deadline = killed_at + Duration::from_secs(5);
    while family.group.iter().any(|&p| procs::running(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = killed_at.elapsed();
    let left: Vec<u32> = family
        .group
        .iter()
        .copied()
        .filter(|&p| procs::running(p))
        .collect();
    procs::kill_all(&left);
    assert!(
        left.is_empty(),
        "{host}: group members {left:?} outlived the primary"
    );
    assert!(
        took < Duration::from_secs(1),
        "{host}: the groups took {took:?} to die"
    );
    eprintln!("{host}: worker groups gone {took:?} after SIGKILL of the primary");
    if in_cgroup {
        match procs::wait_marked_gone(mark, Duration::from_secs(1)) {
            Ok(t) => eprintln!("{host}: everything gone {t:?} after the groups"),
            Err(left) => panic!("{host}: {left:?} outlived the primary and its cgroup"),
        }
    } else {
        // No cgroup of its own here: setsid escapees are out of reach (documented).
        procs::kill_all(&family.escaped);
        procs::wait_marked_gone(mark, Duration::from_secs(5)).ok();
    }
}

#[test]
fn workers_die_within_a_second_of_a_sigkilled_primary() {
    let mark = procs::new_mark("plain");
    let (mut primary, pids) = test_primary(4, &[&test_worker(), "echo"], &mark);
    assert!(pids.iter().all(|&p| procs::running(p)));
    primary.kill().unwrap();
    let killed_at = Instant::now();
    primary.wait().unwrap();
    while pids.iter().any(|&p| procs::running(p)) && killed_at.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = killed_at.elapsed();
    let left: Vec<u32> = pids
        .iter()
        .copied()
        .filter(|&p| procs::running(p))
        .collect();
    procs::kill_all(&left);
    assert!(left.is_empty(), "workers {left:?} outlived the primary");
    assert!(
        took < Duration::from_secs(1),
        "workers took {took:?} to die"
    );
    // Nothing of the cluster, the sentinel included, outlives the primary.
    if let Err(left) = procs::wait_marked_gone(&mark, Duration::from_secs(1)) {
        panic!("{left:?} outlived the primary");
    }
}

#[test]
fn children_of_workers_die_within_a_second_of_a_sigkilled_rust_primary() {
    let mark = procs::new_mark("rust");
    let worker = format!("{} echo", test_worker());
    let script = procs::worker_with_children(&worker);
    let (primary, pids) = test_primary(2, &["sh", "-c", &script], &mark);
    kill_primary_and_check(primary, &pids, &mark, "rust api");
}

#[test]
fn children_of_workers_die_within_a_second_of_a_sigkilled_cli_primary() {
    let mark = procs::new_mark("cli");
    let worker = format!("{} echo", test_worker());
    let script = procs::worker_with_children(&worker);
    let runtime = RuntimeDir::new();
    let mut primary = Command::new(bin_path("rcluster"))
        .env("XDG_RUNTIME_DIR", &runtime.0)
        .args(["run", "-w", "2", "--", "sh", "-c", &script])
        .env(MARK_VAR, &mark)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // "… rcluster: worker ID pid PID: ready", one line per worker.
    let mut pids = Vec::new();
    let mut lines = BufReader::new(primary.stderr.take().unwrap()).lines();
    while pids.len() < 2 {
        let line = lines.next().expect("rcluster run ended early").unwrap();
        if let Some(rest) = line.split(" pid ").nth(1) {
            if let Some(pid) = rest.strip_suffix(": ready") {
                pids.push(pid.parse().unwrap());
            }
        }
    }
    // Keep draining its stderr so that it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    kill_primary_and_check(primary, &pids, &mark, "cli");
}
