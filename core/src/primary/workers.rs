//! The loop's seam to processes: how it starts, signals and reaps its workers. `Forking` is
//! the real one (fork and exec, process groups, pidfds, the sentinel); the loop's unit tests
//! put a fake in its place, so that its reactions (to a crash during a reload, a stop during
//! a spawn, ...) are tested without a process.

use std::io;
use std::os::fd::{OwnedFd, RawFd};

use crate::error::{Error, Result};
use crate::sys::spawn::{self, Exec, Request};
use crate::sys::{self, WaitStatus};

pub(crate) trait Workers: Send {
    /// Starts a worker; returns its pid and a descriptor that becomes readable once it has
    /// exited (its pidfd).
    fn spawn(&mut self, req: Request) -> Result<(libc::pid_t, OwnedFd)>;
    /// Kills and reaps a worker that was started but that the loop could not take.
    fn abandon(&mut self, pid: libc::pid_t);
    /// Sends `sig` to the worker's process group.
    fn signal_group(&self, pid: libc::pid_t, sig: libc::c_int);
    /// Sends `sig` to the worker process alone.
    fn signal(&self, pid: libc::pid_t, sig: libc::c_int) -> io::Result<()>;
    /// Reaps the worker behind `exit_fd` with what is left of its group, if it has exited.
    fn reap(&self, exit_fd: RawFd, pid: libc::pid_t) -> io::Result<Option<WaitStatus>>;
    /// The worker is gone without the loop reaping it (somebody else did): forget its group.
    fn forget(&self, pid: libc::pid_t);
    /// Called once on the loop's thread before it starts workers.
    fn on_loop_thread(&mut self) {}
}

/// The real processes: fork and exec (`sys::spawn`), each worker its own process group known
/// to the sentinel, watched and reaped through its pidfd.
pub(crate) struct Forking {
    pub exec: Exec,
    /// The program, as errors name it.
    pub program: String,
}

impl Workers for Forking {
    fn spawn(&mut self, req: Request) -> Result<(libc::pid_t, OwnedFd)> {
        let forked = spawn::spawn(&self.exec, req).map_err(|source| Error::Spawn {
            program: self.program.clone(),
            source,
        })?;
        // On an error `forked` is dropped, which kills the worker's group and reaps it.
        let pidfd = sys::pidfd_open(forked.pid()).map_err(|e| Error::io("pidfd_open", e))?;
        Ok((forked.keep(), pidfd))
    }

    fn abandon(&mut self, pid: libc::pid_t) {
        spawn::abandon(pid, &self.exec.sentinel);
    }

    fn signal_group(&self, pid: libc::pid_t, sig: libc::c_int) {
        sys::kill_group(pid, sig);
    }

    fn signal(&self, pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
        sys::signal(pid, sig)
    }

    fn reap(&self, exit_fd: RawFd, pid: libc::pid_t) -> io::Result<Option<WaitStatus>> {
        let sentinel = &self.exec.sentinel;
        sys::reap_group(exit_fd, pid, |pgid, sig| {
            // Leftover children in the worker's group must not outlive it.
            sys::kill_group(pgid, sig);
            sentinel.remove(pgid);
        })
    }

    fn forget(&self, pid: libc::pid_t) {
        self.exec.sentinel.remove(pid);
    }

    fn on_loop_thread(&mut self) {
        self.exec.unbatch = sys::enter_batch_scheduling();
    }
}
