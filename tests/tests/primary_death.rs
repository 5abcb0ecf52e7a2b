//! A primary killed with SIGKILL leaves no worker behind (PR_SET_PDEATHSIG).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcluster_tests::*;

/// Gone, or a zombie waiting for init: either way no longer running.
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn workers_die_within_a_second_of_a_sigkilled_primary() {
    let mut primary = Command::new(bin_path("rcluster-test-primary"))
        .args(["4", &test_worker(), "echo"])
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
    assert_eq!(pids.len(), 4, "primary printed {line:?}");
    assert!(pids.iter().all(|&p| running(p)));
    primary.kill().unwrap();
    let killed_at = Instant::now();
    primary.wait().unwrap();
    while pids.iter().any(|&p| running(p)) && killed_at.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = killed_at.elapsed();
    let left: Vec<u32> = pids.iter().copied().filter(|&p| running(p)).collect();
    for &p in &left {
        // SAFETY: clean up what the test found, so a failure does not leak processes.
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
    assert!(left.is_empty(), "workers {left:?} outlived the primary");
    assert!(
        took < Duration::from_secs(1),
        "workers took {took:?} to die"
    );
}
