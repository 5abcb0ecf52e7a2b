//! `rcluster run` as PID 1 of a container (a new PID namespace) or with `--subreaper`:
//! orphaned descendants of the workers are adopted and reaped, and no zombie remains.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{RuntimeDir, RCLUSTER};
const WAIT: Duration = Duration::from_secs(15);
/// A worker that leaves an orphan: the inner shell starts `sleep 1.25` and exits at once, so
/// the sleep is adopted by the nearest subreaper, and exits a little later.
const ORPHANING_WORKER: &str = "sh -c 'sleep 1.25 &'; exec sleep 300";

/// The parent and state of process `pid`, if it exists.
fn stat(pid: u32) -> Option<(u32, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.rsplit_once(')')?.1;
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    Some((f.next()?.parse().ok()?, state))
}

/// Processes whose command line is `sleep 1.25`.
fn orphans() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == b"sleep\x001.25\x00")
        })
        .collect()
}

/// Waits until the orphan adopted by `parent` appears, then until it is gone altogether
/// (reaped: a zombie would stay listed with state Z).
fn orphan_of_is_reaped(parent: u32) {
    let deadline = Instant::now() + WAIT;
    let orphan = loop {
        if let Some(p) = orphans()
            .into_iter()
            .find(|&p| stat(p).is_some_and(|(pp, _)| pp == parent))
        {
            break p;
        }
        assert!(Instant::now() < deadline, "no orphan adopted by {parent}");
        std::thread::sleep(Duration::from_millis(10));
    };
    while let Some((ppid, state)) = stat(orphan) {
        assert!(
            Instant::now() < deadline,
            "orphan {orphan} not reaped: parent {ppid}, state {state}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills the child if a test fails before stopping it.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn stop(child: &mut Child, pid: u32) {
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let deadline = Instant::now() + WAIT;
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "rcluster did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn rcluster_with_subreaper_reaps_the_orphan_a_worker_leaves() {
    let runtime = RuntimeDir::new();
    let child = Command::new(RCLUSTER)
        .env("XDG_RUNTIME_DIR", &runtime.0)
        .args([
            "run",
            "-w",
            "1",
            "--subreaper",
            "--kill-timeout",
            "2s",
            "--",
        ])
        .args(["sh", "-c", ORPHANING_WORKER])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let child = &mut guard.0;
    let pid = child.id();
    orphan_of_is_reaped(pid);
    // The worker is still the supervisor's: running, and stopped by it.
    assert!(
        children_of(pid)
            .iter()
            .any(|&c| stat(c).is_some_and(|(_, s)| s != 'Z')),
        "the worker is gone"
    );
    stop(child, pid);
    assert!(child.wait().unwrap().success());
}

#[test]
fn rcluster_as_pid_1_of_a_new_pid_namespace_reaps_orphans_and_leaves_no_zombie() {
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .stderr(Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("unshare --pid is not permitted here: not run");
        return;
    }
    let runtime = RuntimeDir::new();
    let child = Command::new("unshare")
        .env("XDG_RUNTIME_DIR", &runtime.0)
        .args(["--pid", "--fork", "--mount-proc", "--kill-child"])
        .args([RCLUSTER, "run", "-w", "2", "--kill-timeout", "2s", "--"])
        .args(["sh", "-c", ORPHANING_WORKER])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let child = &mut guard.0;
    // rcluster is the child unshare forked into the namespace (PID 1 there).
    let deadline = Instant::now() + WAIT;
    let init = loop {
        if let Some(&p) = children_of(child.id()).first() {
            break p;
        }
        assert!(Instant::now() < deadline, "unshare started nothing");
        std::thread::sleep(Duration::from_millis(10));
    };
    orphan_of_is_reaped(init);
    let zombies: Vec<u32> = children_of(init)
        .into_iter()
        .filter(|&c| stat(c).is_some_and(|(_, s)| s == 'Z'))
        .collect();
    assert!(zombies.is_empty(), "zombies under PID 1: {zombies:?}");
    stop(child, init);
}
