//! The supervisor loop: one thread, one epoll over worker IPC sockets, pidfds, output pipes
//! and the command waker. Each turn it handles what is ready, then reconciles the cluster
//! toward what is wanted (`manage_workers`), gunicorn-arbiter style.

mod handoff;
mod reload;

use reload::Reload;

use handoff::LISTENER;
pub(crate) use handoff::{conn_id, Bound, Waiting};

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, Output, ReadyOn};
use crate::conn::{Conn, Flush};
use crate::error::{Error, Result};
use crate::events::{Event, ExitInfo, WorkerInfo, WorkerState};
use crate::frame::{self, Decoder, Kind};
use crate::output::PrefixPipe;
use crate::policy::{Clock, Decision, ExitReason, History, Jitter, SystemClock, XorShift};
use crate::process::{Incoming, Process, ReadEnd, Stopping};
use crate::spawn::{self, Exec};
use crate::supervisor::{Command, Shared};
use crate::sys::{self, Epoll, WaitStatus};

const WAKER: u64 = u64::MAX;
// Token = key << 2 | what.
const IPC: u64 = 0;
const PIDFD: u64 = 1;
const STDOUT: u64 = 2; // and STDERR = 3

struct Slot {
    generation: u32,
    history: History,
    /// When to start this slot's worker; None: nothing planned (running, given up, or stays down).
    start_at: Option<Instant>,
    gave_up: bool,
    restarts: u32,
    last_exit: Option<ExitInfo>,
}

impl Slot {
    fn new(generation: u32, now: Instant) -> Slot {
        Slot {
            generation,
            history: History::default(),
            start_at: Some(now),
            gave_up: false,
            restarts: 0,
            last_exit: None,
        }
    }
}

pub(crate) struct Primary {
    cfg: Config,
    exec: Exec,
    shared: Arc<Shared>,
    epoll: Epoll,
    procs: BTreeMap<u64, Process>,
    next_key: u64,
    slots: Vec<Slot>,
    desired: usize,
    generation: u32,
    reload: Option<Reload>,
    stop_deadline: Option<Instant>,
    all_down_said: bool,
    /// Something happened that `manage_workers`/`murder_workers` must look at.
    changed: bool,
    clock: Box<dyn Clock>,
    jitter: Box<dyn Jitter>,
    out: Vec<Event>,
    listeners: Vec<Bound>,
    /// Accepted connections waiting for a worker with room, oldest first.
    waiting: VecDeque<Waiting>,
    /// The worker round-robin chose last.
    rr_cursor: u64,
    next_conn_id: u64,
    /// When the oldest waiting connection reaches `queue_timeout`.
    queue_deadline: Option<Instant>,
}

impl Primary {
    pub fn new(
        cfg: Config,
        program: &Path,
        shared: Arc<Shared>,
        listeners: Vec<Bound>,
    ) -> Result<Primary> {
        let epoll = Epoll::new().map_err(|e| Error::io("epoll_create1", e))?;
        epoll
            .add(shared.waker.raw(), libc::EPOLLIN as u32, WAKER)
            .map_err(|e| Error::io("epoll_ctl", e))?;
        let exec = Exec::new(program, &cfg.argv, &cfg.env, cfg.cwd.as_deref());
        let clock: Box<dyn Clock> = Box::new(SystemClock);
        let now = clock.now();
        let desired = cfg.workers;
        Ok(Primary {
            exec,
            shared,
            epoll,
            procs: BTreeMap::new(),
            next_key: 1,
            slots: (0..desired).map(|_| Slot::new(1, now)).collect(),
            desired,
            generation: 1,
            reload: None,
            stop_deadline: None,
            all_down_said: false,
            changed: true,
            clock,
            jitter: Box::new(XorShift::seeded()),
            out: Vec::new(),
            listeners,
            waiting: VecDeque::new(),
            rr_cursor: 0,
            next_conn_id: 1,
            queue_deadline: None,
            cfg,
        })
    }

    pub fn run(mut self) {
        // Dropped last (after `self`, which owns the epoll fd), even on a panic: from then on
        // the supervisor counts as stopped and every `stop` caller may return.
        let _done = Done(Arc::clone(&self.shared));
        let mut ready = Vec::with_capacity(256);
        let mut dirty = Vec::new();
        let mut deadline = None;
        loop {
            // Reconciling is O(workers): do it when something changed or a timer is due, not
            // for every message that passes through.
            let now = self.clock.now();
            let queue_due = self.queue_deadline.is_some_and(|d| now >= d);
            if self.changed || queue_due || deadline.is_some_and(|d| now >= d) {
                self.changed = false;
                self.manage_workers(now);
                self.murder_workers(now);
                self.arm_listeners(now);
                self.distribute();
                let queue = self.expire_waiting(now);
                deadline = match (self.next_deadline(), queue) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            self.shared.events.push_all(&mut self.out);
            if self.stop_deadline.is_some() && self.procs.is_empty() {
                break;
            }
            // A pass that changed something (a spawn, a worker ready) may enable another step
            // (the next slot of a reload): run it at once rather than after the next event.
            let timeout = if self.changed {
                Some(Duration::ZERO)
            } else {
                let next = match (deadline, self.queue_deadline) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                next.map(|d: Instant| d.saturating_duration_since(self.clock.now()))
            };
            if let Err(e) = self.epoll.wait(&mut ready, timeout) {
                // Cannot happen with a valid epoll fd; do not spin if it does.
                eprintln!("rcluster: epoll_wait failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            for ev in ready.iter().copied() {
                let (token, flags) = (ev.u64, ev.events);
                if token == WAKER {
                    self.shared.waker.take(&mut dirty);
                    self.handle_commands();
                    for conn in dirty.drain(..) {
                        self.flush(&conn);
                    }
                } else if token & LISTENER != 0 {
                    self.accept_ready((token & !LISTENER) as usize);
                } else {
                    self.handle_io(token >> 2, token & 3, flags);
                }
            }
        }
        self.shutdown();
    }

    fn handle_io(&mut self, key: u64, what: u64, flags: u32) {
        match what {
            IPC => {
                if flags & libc::EPOLLOUT as u32 != 0 {
                    if let Some(conn) = self.procs.get(&key).map(|p| Arc::clone(&p.conn)) {
                        self.flush(&conn);
                    }
                }
                if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                    self.read_worker(key);
                }
            }
            PIDFD => self.reap_worker(key),
            _ => self.pump_output(key, (what - STDOUT) as usize),
        }
    }

    // ---- commands ----

    fn handle_commands(&mut self) {
        loop {
            let cmd = self.shared.cmds.lock().unwrap().pop_front();
            let Some(cmd) = cmd else { return };
            self.changed = true;
            match cmd {
                Command::Snapshot(tx) => drop(tx.send(self.snapshot())),
                Command::Scale(n, tx) => drop(tx.send(self.scale(n))),
                Command::Restart(id, tx) => drop(tx.send(self.restart(id))),
                Command::Reload(tx) => drop(tx.send(self.start_reload())),
                Command::Stop(timeout) => self.begin_stop(timeout),
            }
        }
    }

    fn snapshot(&self) -> Vec<WorkerInfo> {
        let now = self.clock.now();
        let mut list: Vec<WorkerInfo> = self
            .procs
            .values()
            .map(|p| WorkerInfo {
                id: p.slot,
                pid: p.pid as u32,
                generation: p.generation,
                state: p.state,
                uptime: now.saturating_duration_since(p.spawned_at),
                restarts: self.slots.get(p.slot as usize).map_or(0, |s| s.restarts),
                last_exit: self.slots.get(p.slot as usize).and_then(|s| s.last_exit),
            })
            .collect();
        for (id, slot) in self.slots.iter().enumerate().take(self.desired) {
            if !self.procs.values().any(|p| p.slot == id as u32) {
                list.push(WorkerInfo {
                    id: id as u32,
                    pid: 0,
                    generation: slot.generation,
                    state: WorkerState::Exited,
                    uptime: Duration::ZERO,
                    restarts: slot.restarts,
                    last_exit: slot.last_exit,
                });
            }
        }
        list.sort_by_key(|w| (w.id, w.generation, w.pid));
        list
    }

    fn scale(&mut self, n: usize) -> Result<()> {
        if self.stop_deadline.is_some() {
            return Err(Error::Stopped);
        }
        let now = self.clock.now();
        while self.slots.len() < n {
            self.slots.push(Slot::new(self.generation, now));
        }
        for slot in self.desired..n {
            let s = &mut self.slots[slot];
            s.generation = self.generation;
            s.gave_up = false;
            s.history.reset();
            s.start_at = Some(now);
        }
        self.desired = n;
        let extra: Vec<u64> = self
            .procs
            .iter()
            .filter(|(_, p)| p.slot as usize >= n)
            .map(|(k, _)| *k)
            .collect();
        for key in extra {
            self.stop_worker(key, ExitReason::Requested, true);
        }
        self.slots.truncate(n);
        self.all_down_said = false;
        self.out.push(Event::Scaled { workers: n });
        Ok(())
    }

    fn restart(&mut self, id: u32) -> Result<()> {
        if self.stop_deadline.is_some() {
            return Err(Error::Stopped);
        }
        if id as usize >= self.desired {
            return Err(Error::NoSuchWorker(id));
        }
        let live: Vec<u64> = self
            .procs
            .iter()
            .filter(|(_, p)| p.slot == id && p.is_live())
            .map(|(k, _)| *k)
            .collect();
        let slot = &mut self.slots[id as usize];
        slot.history.reset();
        slot.gave_up = false;
        if live.is_empty() {
            slot.start_at = Some(self.clock.now());
            self.all_down_said = false;
        }
        for key in live {
            self.stop_worker(key, ExitReason::Requested, true);
        }
        Ok(())
    }

    fn begin_stop(&mut self, timeout: Duration) {
        let now = self.clock.now();
        let deadline = now + timeout;
        // A second stop can only bring the deadline forward.
        self.stop_deadline = Some(self.stop_deadline.map_or(deadline, |d| d.min(deadline)));
        if let Some(r) = self.reload.take() {
            self.out.push(Event::ReloadFailed {
                generation: r.generation,
                reason: "the supervisor is stopping".into(),
            });
        }
        // Connections not yet handed to a worker are closed; the listeners stop accepting.
        self.waiting.clear();
        self.arm_listeners(now);
        let keys: Vec<u64> = self.procs.keys().copied().collect();
        for key in keys {
            self.stop_worker(key, ExitReason::Shutdown, true);
        }
    }

    // ---- converging toward the wanted state ----

    /// Starts what should run: due restarts, the first workers, the next step of a reload.
    fn manage_workers(&mut self, now: Instant) {
        if self.stop_deadline.is_some() {
            return;
        }
        self.step_reload();
        let mut live = vec![false; self.desired];
        for p in self.procs.values().filter(|p| p.is_live()) {
            if let Some(l) = live.get_mut(p.slot as usize) {
                *l = true;
            }
        }
        for id in 0..self.desired as u32 {
            let due = self.slots[id as usize].start_at.is_some_and(|t| t <= now);
            if due && !live[id as usize] {
                let generation = self.slots[id as usize].generation;
                self.slots[id as usize].start_at = None;
                self.spawn_worker(id, generation);
            }
        }
        self.check_all_down();
    }

    fn check_all_down(&mut self) {
        let down = self.procs.is_empty()
            && self
                .slots
                .iter()
                .take(self.desired)
                .all(|s| s.start_at.is_none());
        if down && !self.all_down_said && self.reload.is_none() {
            self.all_down_said = true;
            self.out.push(Event::AllDown);
        }
    }

    /// Kills workers whose time is up: not ready in time, silent too long, or past kill_timeout.
    fn murder_workers(&mut self, now: Instant) {
        let mut due = Vec::new();
        for (key, p) in self.procs.iter_mut() {
            if let Some(s) = &mut p.stopping {
                if s.term_at.is_some_and(|t| now >= t) {
                    s.term_at = None;
                    sys::kill_group(p.pid, libc::SIGTERM);
                }
                if !s.killed && now >= s.kill_at {
                    due.push((*key, ExitReason::Shutdown));
                }
            } else if p.ready_deadline.is_some_and(|d| now >= d) {
                due.push((*key, ExitReason::ReadyTimeout));
            } else if let Some(hb) = self.cfg.heartbeat_timeout {
                if p.state == WorkerState::Ready && now.duration_since(p.last_seen) >= hb {
                    due.push((*key, ExitReason::Heartbeat));
                }
            }
        }
        for (key, reason) in due {
            self.stop_worker(key, reason, false);
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.stop_deadline;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for p in self.procs.values() {
            match &p.stopping {
                Some(s) if !s.killed => {
                    consider(s.kill_at);
                    if let Some(t) = s.term_at {
                        consider(t);
                    }
                }
                Some(_) => {}
                None => {
                    if let Some(d) = p.ready_deadline {
                        consider(d);
                    }
                    if let (Some(hb), WorkerState::Ready) = (self.cfg.heartbeat_timeout, p.state) {
                        consider(p.last_seen + hb);
                    }
                }
            }
        }
        if self.stop_deadline.is_none() {
            for s in self.slots.iter().take(self.desired) {
                if let Some(t) = s.start_at {
                    consider(t);
                }
            }
        }
        next
    }

    // ---- worker lifecycle: spawn, stop, reap ----

    fn spawn_worker(&mut self, slot: u32, generation: u32) -> Option<u64> {
        self.changed = true;
        match self.try_spawn(slot, generation) {
            Ok(key) => {
                self.all_down_said = false;
                Some(key)
            }
            Err(e) => {
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

    fn try_spawn(&mut self, slot: u32, generation: u32) -> Result<u64> {
        let (parent, child) = sys::socketpair().map_err(|e| Error::io("socketpair", e))?;
        sys::set_nonblocking(parent.as_raw_fd(), true).map_err(|e| Error::io("fcntl", e))?;
        // The hello is in the socket before the worker runs, so the worker library can read it
        // at start-up without waiting.
        sys::send(
            parent.as_raw_fd(),
            &frame::primary_hello(self.cfg.max_message as u32, slot, generation),
        )
        .map_err(|e| Error::io("writing the hello", e))?;
        let (mut pipes, mut ends) = ([None, None], [None, None]);
        if self.cfg.output == Output::Prefix {
            for (i, target) in [1, 2].into_iter().enumerate() {
                let (r, w) = sys::pipe().map_err(|e| Error::io("pipe2", e))?;
                sys::set_nonblocking(r.as_raw_fd(), true).map_err(|e| Error::io("fcntl", e))?;
                pipes[i] = Some(PrefixPipe::new(r, target, slot));
                ends[i] = Some(w);
            }
        }
        let [stdout, stderr] = ends;
        let shared = self.shared_listeners();
        let req = spawn::Request {
            shared: &shared,
            id: slot,
            generation,
            ipc: child,
            stdout,
            stderr,
        };
        let pid = spawn::spawn(&self.exec, req).map_err(|source| Error::Spawn {
            program: self.cfg.argv[0].to_string_lossy().into_owned(),
            source,
        })?;
        let pidfd = match sys::pidfd_open(pid) {
            Ok(fd) => fd,
            Err(e) => {
                sys::kill_group(pid, libc::SIGKILL);
                // SAFETY: reaps this one child, which we just killed.
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
                return Err(Error::io("pidfd_open", e));
            }
        };
        let key = self.next_key;
        self.next_key += 1;
        let conn = Arc::new(Conn::new(
            slot,
            parent,
            self.cfg.send_queue_limit,
            self.cfg.max_message,
        ));
        let add = |fd, what| self.epoll.add(fd, libc::EPOLLIN as u32, key << 2 | what);
        add(conn.raw(), IPC)
            .and(add(pidfd.as_raw_fd(), PIDFD))
            .map_err(|e| Error::io("epoll_ctl", e))?;
        for (i, p) in pipes.iter().enumerate() {
            if let Some(p) = p {
                add(p.fd.as_raw_fd(), STDOUT + i as u64).map_err(|e| Error::io("epoll_ctl", e))?;
            }
        }
        let now = self.clock.now();
        let ready_deadline =
            (self.cfg.ready_on != ReadyOn::Spawn).then(|| now + self.cfg.ready_timeout);
        self.procs.insert(
            key,
            Process {
                slot,
                generation,
                pid,
                pidfd,
                conn: Arc::clone(&conn),
                decoder: Decoder::new(self.cfg.max_message),
                rx_fds: VecDeque::new(),
                ipc_open: true,
                frames: 0,
                out_armed: false,
                hello: false,
                state: WorkerState::Starting,
                spawned_at: now,
                ready_deadline,
                last_seen: now,
                stopping: None,
                pipes,
                unacked: HashMap::new(),
                active: HashSet::new(),
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
            .or_insert(conn);
        if self.cfg.ready_on == ReadyOn::Spawn {
            self.out.push(Event::Online {
                id: slot,
                pid: pid as u32,
            });
            self.mark_ready(key);
        }
        Ok(key)
    }

    fn mark_ready(&mut self, key: u64) {
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
                .insert(p.slot, Arc::clone(&p.conn));
        }
    }

    /// Asks a worker to stop, or kills it at once when `graceful` is false.
    ///
    /// A worker that speaks the protocol gets a DISCONNECT frame first, SIGTERM to its group
    /// at half of `kill_timeout` and SIGKILL at `kill_timeout`: the frame lets a library worker
    /// finish its work and exit 0, the signal reaches one whose loop does not read. Any other
    /// program gets SIGTERM at once.
    fn stop_worker(&mut self, key: u64, reason: ExitReason, graceful: bool) {
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
                        .conn
                        .send_frame(&self.shared.waker, Kind::Disconnect, &[], None);
                    Some(now + grace / 2)
                } else {
                    sys::kill_group(p.pid, libc::SIGTERM);
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
        sys::kill_group(p.pid, libc::SIGKILL);
    }

    /// The worker said it is leaving on its own: no new work, and it has `kill_timeout` to go.
    fn worker_disconnected(&mut self, key: u64) {
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

    fn reap_worker(&mut self, key: u64) {
        self.changed = true;
        let Some(p) = self.procs.get(&key) else {
            return;
        };
        let status = match sys::try_reap(p.pidfd_raw()) {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                // ECHILD: somebody else reaped it (a host calling waitpid(-1)); the exit status
                // is lost but the process is gone.
                eprintln!(
                    "rcluster: waitid for worker {} (pid {}) failed: {e}",
                    p.slot, p.pid
                );
                WaitStatus {
                    code: None,
                    signal: None,
                }
            }
        };
        // Messages sent just before exiting are still in the socket: deliver them first.
        if p.ipc_open
            && p.stopping
                .as_ref()
                .is_none_or(|s| s.reason != Some(ExitReason::ProtocolError))
        {
            self.read_worker(key);
        }
        let Some(mut p) = self.procs.remove(&key) else {
            return;
        };
        // Leftover children in the worker's group must not outlive it.
        sys::kill_group(p.pid, libc::SIGKILL);
        self.epoll.delete(p.conn.raw());
        self.epoll.delete(p.pidfd_raw());
        for pipe in p.pipes.iter_mut().flatten() {
            while pipe.pump() {}
            pipe.finish();
            self.epoll.delete(pipe.fd.as_raw_fd());
        }
        unroute(&self.shared, &p);
        p.conn.close();
        self.take_back(key, &mut p);
        let reason = match p.stopping.as_ref().and_then(|s| s.reason) {
            Some(r) => r,
            None if status.code == Some(0) => ExitReason::Exited,
            None => ExitReason::Crashed,
        };
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
        }
    }

    /// Decides what follows the exit of a slot's worker.
    fn after_exit(&mut self, slot: u32, info: ExitInfo, uptime: Duration) {
        if self.stop_deadline.is_some() || slot as usize >= self.desired {
            return;
        }
        let now = self.clock.now();
        let s = &mut self.slots[slot as usize];
        s.last_exit = Some(info);
        let decision = if info.reason == ExitReason::Requested {
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
                if info.reason != ExitReason::Requested {
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

    // ---- IPC ----

    fn read_worker(&mut self, key: u64) {
        let mut incoming = Vec::new();
        let Some(p) = self.procs.get_mut(&key) else {
            return;
        };
        let frames = p.frames;
        let end = p.read_ipc(&mut incoming);
        let (slot, pid) = (p.slot, p.pid as u32);
        if p.frames != frames {
            p.last_seen = self.clock.now();
        }
        // Messages and connection bookkeeping change no worker's lifecycle: no reconcile pass
        // (it is O(workers)) for them.
        let routine = incoming.iter().all(|m| {
            matches!(
                m,
                Incoming::Message(_) | Incoming::Ack(_) | Incoming::Closed(_)
            )
        });
        if !routine || !matches!(end, ReadEnd::Drained) {
            self.changed = true;
        }
        for msg in incoming {
            match msg {
                Incoming::Hello => {
                    if let Some(p) = self.procs.get_mut(&key) {
                        p.state = p.state.max_online();
                    }
                    match self.cfg.ready_on {
                        ReadyOn::Spawn => {}
                        ReadyOn::Hello => {
                            self.out.push(Event::Online { id: slot, pid });
                            self.mark_ready(key);
                        }
                        ReadyOn::Explicit => self.out.push(Event::Online { id: slot, pid }),
                    }
                }
                Incoming::Ready => self.mark_ready(key),
                Incoming::Message(data) => self.out.push(Event::Message {
                    id: slot,
                    pid,
                    data,
                }),
                Incoming::Disconnect => self.worker_disconnected(key),
                Incoming::Closed(id) => self.connection_closed(key, id),
                Incoming::Listen {
                    request,
                    dispatch,
                    addr,
                } => self.worker_listen(key, request, dispatch, addr),
                Incoming::Ack(id) => {
                    if let Err(detail) = self.connection_acked(key, id) {
                        self.out.push(Event::ProtocolError {
                            id: slot,
                            pid,
                            detail,
                        });
                        self.close_ipc(key);
                        self.stop_worker(key, ExitReason::ProtocolError, false);
                        return;
                    }
                }
            }
        }
        match end {
            ReadEnd::Drained => {}
            ReadEnd::Eof => self.close_ipc(key),
            ReadEnd::Violation(detail) => {
                self.out.push(Event::ProtocolError {
                    id: slot,
                    pid,
                    detail,
                });
                self.close_ipc(key);
                self.stop_worker(key, ExitReason::ProtocolError, false);
            }
        }
    }

    fn close_ipc(&mut self, key: u64) {
        if let Some(p) = self.procs.get_mut(&key) {
            if p.ipc_open {
                p.ipc_open = false;
                self.epoll.delete(p.conn.raw());
            }
        }
    }

    fn flush(&mut self, conn: &Arc<Conn>) {
        if conn.is_closed() {
            return;
        }
        let Some((key, p)) = self
            .procs
            .iter_mut()
            .find(|(_, p)| Arc::ptr_eq(&p.conn, conn))
        else {
            return;
        };
        let key = *key;
        let want_out = match conn.flush() {
            Flush::Done => false,
            Flush::Blocked => true,
            Flush::Broken => {
                conn.close();
                false
            }
        };
        if want_out != p.out_armed && p.ipc_open {
            let events = libc::EPOLLIN as u32 | if want_out { libc::EPOLLOUT as u32 } else { 0 };
            if self
                .epoll
                .modify(conn.raw(), events, key << 2 | IPC)
                .is_ok()
            {
                p.out_armed = want_out;
            }
        }
    }

    fn pump_output(&mut self, key: u64, which: usize) {
        let Some(p) = self.procs.get_mut(&key) else {
            return;
        };
        let Some(pipe) = p.pipes[which].as_mut() else {
            return;
        };
        if !pipe.pump() {
            pipe.finish();
            self.epoll.delete(pipe.fd.as_raw_fd());
            p.pipes[which] = None;
        }
    }

    /// Last act of the loop: everything reaped by now; close what is left and tell the host.
    fn shutdown(&mut self) {
        self.close_listeners();
        self.shared.routes.write().unwrap().clear();
        self.shared.waker.take(&mut Vec::new());
        self.shared.stopped.store(true, Ordering::Release);
        let pending: Vec<Command> = self.shared.cmds.lock().unwrap().drain(..).collect();
        drop(pending); // Dropping the reply senders tells waiting callers the supervisor stopped.
        self.shared.events.push_all(&mut self.out);
        self.shared.events.close();
    }
}

struct Done(Arc<Shared>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Release);
        self.0.events.close();
        let (lock, cv) = &self.0.done;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
}

fn unroute(shared: &Shared, p: &Process) {
    let mut routes = shared.routes.write().unwrap();
    if routes.get(&p.slot).is_some_and(|c| Arc::ptr_eq(c, &p.conn)) {
        routes.remove(&p.slot);
    }
}

trait StateExt {
    fn max_online(self) -> Self;
}

impl StateExt for WorkerState {
    fn max_online(self) -> Self {
        match self {
            WorkerState::Starting => WorkerState::Online,
            s => s,
        }
    }
}
