//! The children this process's supervisors started (workers, sentinels), known from the
//! moment they are forked until they are reaped, so that a program that adopts orphans
//! (PID 1 of a container, a subreaper) can reap every other child without ever taking one
//! of them from the supervisor that waits on it (`reap_orphans`).
//!
//! The core itself never waits for a child it did not start: `reap_orphans` runs only when
//! its host calls it.

use std::io;
use std::sync::{Mutex, MutexGuard};

use super::{cvt, retry, WaitStatus};

/// The pids of the children the core started and has not reaped. Held while forking, so a
/// child that dies at once cannot be reaped by `reap_orphans` before it is in the list.
static OWN: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

fn own() -> MutexGuard<'static, Vec<libc::pid_t>> {
    // Only pushes and removals happen under it: a panic cannot leave it inconsistent.
    OWN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Held across a fork: the parent records the child (`Forking::done`) before letting go.
pub struct Forking(MutexGuard<'static, Vec<libc::pid_t>>);

impl Forking {
    pub fn start() -> Forking {
        Forking(own())
    }

    /// The fork returned `pid` (negative: it failed).
    pub fn done(mut self, pid: libc::pid_t) {
        if pid > 0 {
            self.0.push(pid);
        }
    }
}

/// The core reaped `pid` (it is no longer its child).
pub fn forget(pid: libc::pid_t) {
    if pid > 0 {
        own().retain(|&p| p != pid);
    }
}

/// Reaps every exited child of this process that the core did not start: orphans this process
/// adopted as PID 1 or as a subreaper. Returns each with how it ended.
pub fn reap_orphans() -> io::Result<Vec<(libc::pid_t, WaitStatus)>> {
    let own = own();
    let mut reaped = Vec::new();
    for pid in children()? {
        if own.contains(&pid) {
            continue;
        }
        if let Some(status) = reap(pid)? {
            reaped.push((pid, status));
        }
    }
    Ok(reaped)
}

/// The children of every thread of this process (each thread lists the ones it forked).
fn children() -> io::Result<Vec<libc::pid_t>> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")? {
        let path = task?.path().join("children");
        // A thread that ended since the directory was read has no file any more.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<libc::pid_t>().ok()),
        );
    }
    Ok(out)
}

/// Reaps child `pid` if it has exited.
fn reap(pid: libc::pid_t) -> io::Result<Option<WaitStatus>> {
    // SAFETY: siginfo_t is plain data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let r = retry(|| {
        // SAFETY: `info` is a live local for waitid to fill; P_PID names one child only.
        cvt(unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        })
    });
    match r {
        // Gone meanwhile (reaped by a thread of the host that waits for its own children).
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Ok(None),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    // SAFETY: si_pid/si_status are valid for SIGCHLD-style siginfo filled by waitid.
    let (got, status) = unsafe { (info.si_pid(), info.si_status()) };
    if got == 0 {
        return Ok(None);
    }
    Ok(Some(if info.si_code == libc::CLD_EXITED {
        WaitStatus {
            code: Some(status),
            signal: None,
        }
    } else {
        WaitStatus {
            code: None,
            signal: Some(status),
        }
    }))
}
