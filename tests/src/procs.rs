//! Finding every process a test started, however far it went: a marker variable in the
//! environment is inherited by every descendant, `setsid` ones included.

use std::time::{Duration, Instant};

/// The environment variable that marks a test's processes.
pub const MARK_VAR: &str = "RCLUSTER_TEST_MARK";

/// A marker value unique to this call.
pub fn new_mark(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{what}-{}-{nanos}", std::process::id())
}

/// The fields of /proc/PID/stat after the command name: state, ppid, pgrp, session, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// True while `pid` runs (a zombie waiting to be reaped no longer counts).
pub fn running(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f[0] != "Z")
}

/// The parent of `pid`.
pub fn ppid(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

/// The process group of `pid`.
pub fn pgrp(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(2)?.parse().ok()
}

/// The session of `pid`.
pub fn session(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(3)?.parse().ok()
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Running processes whose environment carries `MARK_VAR=mark`, except this process.
pub fn marked(mark: &str) -> Vec<u32> {
    let needle = format!("{MARK_VAR}={mark}");
    let me = std::process::id();
    all_pids()
        .into_iter()
        .filter(|&pid| pid != me && running(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == needle.as_bytes()))
        })
        .collect()
}

/// Running members of process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|&pid| running(pid) && pgrp(pid) == Some(pgid))
        .collect()
}

/// Waits up to `within` until no marked process runs; returns how long that took, or the
/// pids still running (which it then kills, so that a failing test leaves nothing behind).
pub fn wait_marked_gone(mark: &str, within: Duration) -> Result<Duration, Vec<u32>> {
    let start = Instant::now();
    loop {
        let left = marked(mark);
        if left.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            kill_all(&left);
            return Err(left);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGKILLs every pid given (cleanup after a failed assertion).
pub fn kill_all(pids: &[u32]) {
    for &p in pids {
        // SAFETY: plain syscall on pids this test started.
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
}

/// The cgroup v2 path of `pid` ("0::" line of /proc/PID/cgroup).
pub fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// A worker command (for `sh -c`) that leaves, before exec'ing `worker`, a child in its group
/// and a grandchild that escaped into a session of its own with `setsid`.
pub fn worker_with_children(worker: &str) -> String {
    format!("sleep 300 & setsid sleep 300 & exec {worker}")
}

/// Kills every process marked with its mark when dropped: a failing test leaves nothing
/// running behind it.
pub struct KillMarked(pub String);

impl Drop for KillMarked {
    fn drop(&mut self) {
        kill_all(&marked(&self.0));
    }
}

/// Children of this process, zombies included.
pub fn children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut pids: Vec<u32> = all_pids()
        .into_iter()
        .filter(|&pid| stat_fields(pid).is_some_and(|f| f.get(1) == Some(&me)))
        .collect();
    pids.sort();
    pids
}

/// True when this process may create a cgroup v2 under its own (root, or a delegated
/// cgroup): then a cluster it starts must have a cgroup of its own.
pub fn cgroup_available() -> bool {
    let Some(own) = cgroup_of(std::process::id()) else {
        return false;
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Some(mount) = mounts.lines().find_map(|l| {
        let (fields, fs) = l.split_once(" - ")?;
        let f: Vec<&str> = fields.split(' ').collect();
        (fs.starts_with("cgroup2 ") && f.get(3) == Some(&"/")).then(|| f[4].to_string())
    }) else {
        return false;
    };
    let probe = format!(
        "{mount}{}/rcluster-probe-{}",
        own.trim_end_matches('/'),
        std::process::id()
    );
    let made = std::fs::create_dir(&probe).is_ok();
    let kill = std::path::Path::new(&probe).join("cgroup.kill").exists();
    if made {
        let _ = std::fs::remove_dir(&probe);
    }
    made && kill
}
