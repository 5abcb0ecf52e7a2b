//! A worker's life as the loop sees it: spawning, readiness, stopping, reaping, and what the
//! restart policy makes of an exit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use super::{unroute, Primary, IPC, PIDFD, STDOUT};
use crate::config::{Output, ReadyOn};
use crate::error::{Error, Result};
use crate::events::{Event, ExitInfo, WorkerState};
use crate::policy::{Decision, ExitReason};
use crate::primary::link::{Limits, Link};
use crate::primary::output::pipe::PrefixPipe;
use crate::primary::process::{Process, Stopping};
use crate::sys::spawn;
use crate::sys::{self, WaitStatus};
use crate::wire::frame::{self, Kind};

/// The error of a spawn that failed. Running out of descriptors (in the primary, or in the
/// child before exec, which has the same table) is the primary's limit, not the worker
/// program's fault, and the error says so.
fn spawn_error(e: Error) -> Error {
    let (Error::Spawn { source, .. } | Error::Io { source, .. }) = &e else {
        return e;
    };
    let why = match source.raw_os_error() {
        Some(libc::EMFILE) => format!(
            "the primary (pid {}) has run out of file descriptors: {} are open and its \
             RLIMIT_NOFILE soft limit is {} (raise it, e.g. `ulimit -n`, or close some)",
            std::process::id(),
            sys::open_fd_count(),
            sys::fd_limit()
        ),
        Some(libc::ENFILE) => {
            "the system-wide limit on open files (fs.file-max) is reached".to_string()
        }
        _ => return e,
    };
    Error::io("spawning a worker", std::io::Error::new(source.kind(), why))
}

impl Primary {
    pub(super) fn spawn_worker(&mut self, slot: u32, generation: u32) -> Option<u64> {
        self.changed = true;
        match self.try_spawn(slot, generation) {
            Ok(key) => {
                self.all_down_said = false;
                Some(key)
            }
            Err(e) => {
                let e = spawn_error(e);
                self.out.push(Event::SpawnFailed {
                    id: slot,
                    error: e.to_string(),
                });
                let info = ExitInfo {
                    pid: 0,
                    code: Some(127),
                    signal: None,
                    reason: ExitReason::Crashed,
                };
                self.after_exit(slot, info, Duration::ZERO);
                None
            }
        }
    }

    pub(super) fn try_spawn(&mut self, slot: u32, generation: u32) -> Result<u64> {
        let (parent, child) = self.open_link(slot, generation)?;
        let (mut pipes, [stdout, stderr]) = self.output_pipes(slot)?;
        let shared = Primary::shared_listeners(&self.listeners);
        let req = spawn::Request {
            shared: &shared,
            id: slot,
            generation,
            ipc: child,
            stdout,
            stderr,
        };
        let (pid, pidfd) = self.workers.spawn(req)?;
        for p in pipes.iter_mut().flatten() {
            p.pid = pid as u32;
            p.tap = self.control.as_ref().and_then(|c| c.logs.clone());
        }
        let key = self.next_key;
        self.next_key += 1;
        let link = Arc::new(Link::new(
            slot,
            key,
            parent,
            pid,
            Limits {
                queue: self.cfg.send_queue_limit,
                message: self.cfg.max_message,
            },
        ));
        if let Err(e) = self.watch(key, &link, &pidfd, &pipes) {
            // Not taken: it must not run on unwatched (or be left a zombie).
            self.workers.abandon(pid);
            return Err(e);
        }
        self.adopt(key, slot, generation, pid, pidfd, link, pipes);
        Ok(key)
    }

    /// The socket pair of a new worker's link, the primary's end non-blocking. The hello is in
    /// the socket before the worker runs, so the worker library can read it at start-up
    /// without waiting.
    fn open_link(&self, slot: u32, generation: u32) -> Result<(OwnedFd, OwnedFd)> {
        let (parent, child) = sys::socketpair().map_err(|e| Error::io("socketpair", e))?;
        sys::set_nonblocking(parent.as_raw_fd(), true).map_err(|e| Error::io("fcntl", e))?;
        sys::send(
            parent.as_raw_fd(),
            &frame::primary_hello(self.cfg.max_message as u32, slot, generation),
        )
        .map_err(|e| Error::io("writing the hello", e))?;
        Ok((parent, child))
    }

    /// With `Output::Prefix`, a pipe for the new worker's stdout and one for its stderr: the
    /// loop's read ends, and the write ends the worker gets.
    #[allow(clippy::type_complexity)]
    fn output_pipes(&self, slot: u32) -> Result<([Option<PrefixPipe>; 2], [Option<OwnedFd>; 2])> {
        let (mut pipes, mut ends) = ([None, None], [None, None]);
        if self.cfg.output == Output::Prefix {
            for (i, target) in [1, 2].into_iter().enumerate() {
                let (r, w) = sys::pipe().map_err(|e| Error::io("pipe2", e))?;
                sys::set_nonblocking(r.as_raw_fd(), true).map_err(|e| Error::io("fcntl", e))?;
                pipes[i] = Some(PrefixPipe::new(r, target, slot));
                ends[i] = Some(w);
            }
        }
        Ok((pipes, ends))
    }

    /// Puts a new worker's link, pidfd and output pipes in the loop's epoll set.
    fn watch(
        &self,
        key: u64,
        link: &Link,
        pidfd: &OwnedFd,
        pipes: &[Option<PrefixPipe>; 2],
    ) -> Result<()> {
        let add = |fd, what| self.epoll.add(fd, libc::EPOLLIN as u32, key << 2 | what);
        add(link.raw(), IPC)
            .and(add(pidfd.as_raw_fd(), PIDFD))
            .map_err(|e| Error::io("epoll_ctl", e))?;
        for (i, p) in pipes.iter().enumerate() {
            if let Some(p) = p {
                add(p.fd.as_raw_fd(), STDOUT + i as u64).map_err(|e| Error::io("epoll_ctl", e))?;
            }
        }
        #[cfg(test)]
        if self
            .cfg
            .env
            .iter()
            .any(|(k, _)| k == tests::FAIL_AFTER_FORK)
        {
            return Err(Error::io("epoll_ctl", std::io::Error::other("injected")));
        }
        Ok(())
    }

    /// Records a worker that was forked and is watched: its process entry, the Spawned event,
    /// its route for messages, and, when readiness is the spawn itself, its readiness.
    #[allow(clippy::too_many_arguments)]
    fn adopt(
        &mut self,
        key: u64,
        slot: u32,
        generation: u32,
        pid: libc::pid_t,
        pidfd: OwnedFd,
        link: Arc<Link>,
        pipes: [Option<PrefixPipe>; 2],
    ) {
        let now = self.clock.now();
        let ready_deadline =
            (self.cfg.ready_on != ReadyOn::Spawn).then(|| now + self.cfg.ready_timeout);
        let request_limit = super::recycle::limits(&self.cfg).request_limit(self.jitter.as_mut());
        self.procs.insert(
            key,
            Process {
                slot,
                generation,
                pid,
                pidfd,
                link: Arc::clone(&link),
                ipc_open: true,
                host_read: false,
                paused: false,
                out_armed: false,
                hello: false,
                state: WorkerState::Starting,
                spawned_at: now,
                ready_deadline,
                last_seen: now,
                stopping: None,
                cut_short: None,
                pipes,
                unacked: HashMap::new(),
                active: HashSet::new(),
                ahead: 0,
                recent: VecDeque::new(),
                kill_requested: false,
                connections_total: 0,
                stat: std::cell::OnceCell::new(),
                request_limit,
            },
        );
        self.out.push(Event::Spawned {
            id: slot,
            pid: pid as u32,
            generation,
        });
        // A reload's new worker takes messages only once it is ready; any other at once.
        self.shared
            .routes
            .write()
            .unwrap()
            .entry(slot)
            .or_insert(link);
        if self.cfg.ready_on == ReadyOn::Spawn {
            self.out.push(Event::Online {
                id: slot,
                pid: pid as u32,
            });
            self.mark_ready(key);
        }
    }

    pub(super) fn mark_ready(&mut self, key: u64) {
        self.changed = true;
        let now = self.clock.now();
        let Some(p) = self.procs.get_mut(&key) else {
            return;
        };
        if p.state == WorkerState::Ready || p.stopping.is_some() {
            return;
        }
        p.state = WorkerState::Ready;
        p.ready_deadline = None;
        p.last_seen = now;
        self.out.push(Event::Ready {
            id: p.slot,
            pid: p.pid as u32,
        });
        if p.generation == self.slots[p.slot as usize].generation {
            self.shared
                .routes
                .write()
                .unwrap()
                .insert(p.slot, Arc::clone(&p.link));
        }
    }

    /// Asks a worker to stop, or kills it at once when `graceful` is false.
    ///
    /// A worker that speaks the protocol gets a DISCONNECT frame first, SIGTERM to its group
    /// at half of `kill_timeout` and SIGKILL at `kill_timeout`: the frame lets a library worker
    /// finish its work and exit 0, the signal reaches one whose loop does not read. Any other
    /// program gets SIGTERM at once.
    pub(super) fn stop_worker(&mut self, key: u64, reason: ExitReason, graceful: bool) {
        self.changed = true;
        let now = self.clock.now();
        let grace = match self.stop_deadline {
            Some(d) => d.saturating_duration_since(now).min(self.cfg.kill_timeout),
            None => self.cfg.kill_timeout,
        };
        let Some(p) = self.procs.get_mut(&key) else {
            return;
        };
        match &mut p.stopping {
            Some(s) if s.killed => return,
            Some(s) if graceful => {
                // Asked again (e.g. a stop after the worker's own disconnect): keep the earlier
                // deadlines unless this one is sooner, and take the supervisor's reason.
                s.reason = s.reason.or(Some(reason));
                s.kill_at = s.kill_at.min(now + grace);
                s.term_at = s.term_at.map(|t| t.min(now + grace / 2));
                return;
            }
            Some(s) => s.killed = true,
            None if graceful => {
                let term_at = if p.hello {
                    let _ = p
                        .link
                        .send_frame(&self.shared.waker, Kind::Disconnect, &[], None);
                    Some(now + grace / 2)
                } else {
                    self.workers.signal_group(p.pid, libc::SIGTERM);
                    None
                };
                p.stopping = Some(Stopping {
                    reason: Some(reason),
                    term_at,
                    kill_at: now + grace,
                    killed: false,
                });
                p.state = WorkerState::Draining;
                unroute(&self.shared, p);
                return;
            }
            None => {
                p.stopping = Some(Stopping {
                    reason: Some(reason),
                    term_at: None,
                    kill_at: now,
                    killed: true,
                });
                p.state = WorkerState::Draining;
                unroute(&self.shared, p);
            }
        }
        self.workers.signal_group(p.pid, libc::SIGKILL);
    }

    /// The worker said it is leaving on its own: no new work, and it has `kill_timeout` to go.
    pub(super) fn worker_disconnected(&mut self, key: u64) {
        let now = self.clock.now();
        let Some(p) = self.procs.get_mut(&key) else {
            return;
        };
        if p.stopping.is_none() {
            let kill_at = now + self.cfg.kill_timeout;
            p.stopping = Some(Stopping {
                reason: None,
                term_at: None,
                kill_at,
                killed: false,
            });
            p.state = WorkerState::Draining;
            unroute(&self.shared, p);
        }
    }

    pub(super) fn reap_worker(&mut self, key: u64) {
        self.changed = true;
        let Some(status) = self.reap_status(key) else {
            return;
        };
        let Some(p) = self.procs.get(&key) else {
            return;
        };
        // Messages sent just before exiting are still in the socket: deliver them first.
        if p.ipc_open
            && p.stopping
                .as_ref()
                .is_none_or(|s| s.reason != Some(ExitReason::ProtocolError))
        {
            // Bounded by the socket's buffer: the worker can send no more.
            self.read_worker_to_end(key);
        }
        let Some(mut p) = self.procs.remove(&key) else {
            return;
        };
        self.release(key, &mut p);
        let reason = self.exit_reason(&mut p, &status);
        let info = ExitInfo {
            pid: p.pid as u32,
            code: status.code,
            signal: status.signal,
            reason,
        };
        self.out.push(Event::Exit {
            id: p.slot,
            generation: p.generation,
            info,
        });
        let uptime = self.clock.now().saturating_duration_since(p.spawned_at);
        let slot_is_current =
            p.generation == self.slots.get(p.slot as usize).map_or(0, |s| s.generation);
        let replaced = self.procs.values().any(|o| o.slot == p.slot && o.is_live());
        if !replaced && slot_is_current {
            self.after_exit(p.slot, info, uptime);
        } else if let Some(s) = self.slots.get_mut(p.slot as usize) {
            s.last_exit = Some(info);
            if matches!(reason, ExitReason::Memory | ExitReason::MaxRequests) {
                // Recycled: its replacement already runs, so no restart follows the exit,
                // but the slot did restart, for this reason.
                s.restarts += 1;
                *s.counters
                    .restarts_by_reason
                    .entry(reason.as_str())
                    .or_default() += 1;
            }
        }
    }

    /// Sends `signal` to every process of slot `id` (`Supervisor::kill`). They are unreaped
    /// (the loop reaps them), so their pids are still theirs.
    pub(super) fn kill(&mut self, id: u32, signal: i32) -> Result<()> {
        let mut found = false;
        for p in self.procs.values_mut().filter(|p| p.slot == id) {
            self.workers
                .signal(p.pid, signal)
                .map_err(|e| Error::io("kill", e))?;
            p.kill_requested = true;
            found = true;
        }
        if found {
            Ok(())
        } else {
            Err(Error::NoSuchWorker(id))
        }
    }

    /// Reaps worker `key` with what is left of its group, if it has exited: its status, or
    /// none at all when somebody else reaped it. None while it runs (or if it is unknown).
    fn reap_status(&mut self, key: u64) -> Option<WaitStatus> {
        let p = self.procs.get(&key)?;
        match self.workers.reap(p.pidfd_raw(), p.pid) {
            Ok(status) => status,
            Err(e) => {
                // ECHILD: somebody else reaped it (a host calling waitpid(-1)); the exit status
                // is lost but the process is gone, and its group number may be reused: the
                // sentinel must forget it.
                self.workers.forget(p.pid);
                self.out.push(Event::Warning {
                    detail: format!("waitid for worker {} (pid {}) failed: {e}", p.slot, p.pid),
                });
                Some(WaitStatus {
                    code: None,
                    signal: None,
                })
            }
        }
    }

    /// Lets go of everything a reaped worker had in the loop: its place in the epoll set and
    /// among the paused, its pipes, its route, its link, and the connections it had not taken.
    fn release(&mut self, key: u64, p: &mut Process) {
        if p.paused {
            self.paused.retain(|&k| k != key);
        }
        self.epoll.delete(p.link.raw());
        self.epoll.delete(p.pidfd_raw());
        // Read what the worker left in its pipes, without waiting for their EOF: a descendant
        // that left its process group (setsid) may hold them open for as long as it lives.
        let pipes = std::mem::take(&mut p.pipes);
        self.release_pipes(key, pipes);
        if p.host_read {
            self.shared.host.remove(&p.link);
        }
        unroute(&self.shared, p);
        p.link.close();
        self.take_back(key, p);
    }

    /// Why a reaped worker exited: the reason of the stop that ended it, or else what its
    /// status says.
    fn exit_reason(&mut self, p: &mut Process, status: &WaitStatus) -> ExitReason {
        let no_restart = |c| self.cfg.restart.no_restart_codes.contains(&c);
        match p.stopping.as_ref().and_then(|s| s.reason) {
            Some(r) => r,
            None if p.kill_requested => ExitReason::Requested,
            // It exited on its own, not killed by a signal, after half a frame.
            None if status.signal.is_none() && p.cut_short.is_some() => {
                let detail = p.cut_short.take().unwrap_or_default();
                self.out.push(Event::ProtocolError {
                    id: p.slot,
                    pid: p.pid as u32,
                    detail,
                });
                ExitReason::ProtocolError
            }
            None if status.code.is_some_and(no_restart) => ExitReason::NoRestart,
            None if status.code == Some(0) => ExitReason::Exited,
            None => ExitReason::Crashed,
        }
    }

    /// Decides what follows the exit of a slot's worker.
    pub(super) fn after_exit(&mut self, slot: u32, info: ExitInfo, uptime: Duration) {
        if self.stop_deadline.is_some() || slot as usize >= self.desired {
            return;
        }
        let now = self.clock.now();
        let s = &mut self.slots[slot as usize];
        s.last_exit = Some(info);
        // A recycled worker whose replacement could not start is restarted like one stopped
        // on request: it did nothing wrong, and what comes next goes through the policy.
        let requested = matches!(
            info.reason,
            ExitReason::Requested | ExitReason::MaxRequests | ExitReason::Memory
        );
        let decision = if requested {
            Decision::Restart {
                delay: Duration::ZERO,
                attempt: 0,
            }
        } else {
            s.history.decide(
                &self.cfg.restart,
                info.reason,
                info.code,
                uptime,
                now,
                self.jitter.as_mut(),
            )
        };
        match decision {
            Decision::Restart { delay, attempt } => {
                s.start_at = Some(now + delay);
                s.restarts += 1;
                *s.counters
                    .restarts_by_reason
                    .entry(info.reason.as_str())
                    .or_default() += 1;
                if !requested {
                    self.out.push(Event::Restarting {
                        id: slot,
                        delay,
                        attempt,
                    });
                }
            }
            Decision::Stay => s.start_at = None,
            Decision::GiveUp { restarts } => {
                s.start_at = None;
                s.gave_up = true;
                self.out.push(Event::GaveUp {
                    id: slot,
                    restarts,
                    window: self.cfg.restart.window,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::config::{Config, ReadyOn};
    use crate::events::Event;
    use crate::primary::supervisor::Supervisor;

    /// Set in a config's `env`: every spawn fails after the fork, as when epoll_ctl fails.
    pub const FAIL_AFTER_FORK: &str = "RCLUSTER_TEST_FAIL_AFTER_FORK";

    /// Processes whose parent is this process: (pid, state, command line).
    fn children() -> Vec<(u32, char, String)> {
        let me = std::process::id().to_string();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let mut f = stat.rsplit_once(')')?.1.split_whitespace();
                let state = f.next()?.chars().next()?;
                (f.next()? == me).then_some(())?;
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                Some((pid, state, String::from_utf8_lossy(&cmd).replace('\0', " ")))
            })
            .collect()
    }

    #[test]
    fn worker_forked_by_a_spawn_that_fails_after_the_fork_is_killed_and_reaped() {
        let marker = format!("{}.{}", 1000 + std::process::id() % 1000, 4321);
        let mut cfg = Config::new(["sleep", marker.as_str()]);
        cfg.workers = 1;
        cfg.ready_on = ReadyOn::Spawn;
        cfg.env.push((FAIL_AFTER_FORK.into(), "1".into()));
        cfg.restart.backoff_initial = Duration::from_secs(60);
        cfg.restart.backoff_max = Duration::from_secs(60);
        let sup = Supervisor::start(cfg).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match sup.next_event(Some(deadline.saturating_duration_since(Instant::now()))) {
                Some(Event::SpawnFailed { error, .. }) => {
                    assert!(error.contains("epoll_ctl"), "{error}");
                    break;
                }
                Some(_) => {}
                None => panic!("no SpawnFailed event"),
            }
        }
        let left: Vec<_> = children()
            .into_iter()
            .filter(|(_, state, cmd)| *state == 'Z' || cmd.contains(&marker))
            .collect();
        for (pid, _, _) in &left {
            // SAFETY: cleanup of what the test found.
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
        sup.stop(Duration::from_secs(1)).unwrap();
        assert!(left.is_empty(), "left behind by the failed spawn: {left:?}");
    }
}
