//! The supervisor loop: one thread, one epoll over worker IPC sockets, pidfds, output pipes
//! and the command waker. Each turn it handles what is ready, then reconciles the cluster
//! toward what is wanted (`manage_workers`), gunicorn-arbiter style.

mod closing;
pub(crate) mod control;
mod handoff;
pub(crate) mod host_read;
mod ipc;
mod lifecycle;
pub(crate) mod link;
pub(crate) mod metrics;
pub(crate) mod output;
pub(crate) mod process;
pub(crate) mod reader;
mod recycle;
mod reload;
pub(crate) mod shared;
pub(crate) mod shares;
pub(crate) mod signals;
mod stats;
pub(crate) mod status;
pub(crate) mod steered;
pub(crate) mod supervisor;
#[cfg(test)]
mod tests;
pub(crate) mod workers;

use output::Outputs;
use reload::Reload;

pub(crate) use handoff::Bound;
use handoff::LISTENER;
pub(crate) use process::Waiting;
use steered::STEERED;

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::events::{Event, ExitInfo, WorkerInfo, WorkerState};
use crate::policy::{Clock, ExitReason, History, Jitter, SystemClock, XorShift};
use crate::primary::link::{Link, GATHER};
use crate::primary::process::Process;
use crate::primary::shared::{Command, Shared};
use crate::sys::spawn::Exec;
use crate::sys::Epoll;
use workers::{Forking, Workers};

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
    counters: status::SlotCounters,
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
            counters: status::SlotCounters::default(),
        }
    }
}

pub(crate) struct Primary {
    cfg: Config,
    /// Starts, signals and reaps the workers (fork and exec; a fake in unit tests).
    workers: Box<dyn Workers>,
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
    /// CPUs this process may run on: how many workers one batch of connections is spread over.
    cpus: usize,
    next_conn_id: u64,
    /// When the oldest waiting connection reaches `queue_timeout`.
    queue_deadline: Option<Instant>,
    /// Worker links whose queued messages are gathering, with when to write them.
    gathering: Vec<(Instant, Arc<Link>)>,
    /// When the loop next reads the workers that the host thread reads.
    host_tick: Option<Instant>,
    /// Why round-robin listeners are not turned by the kernel here, once it refused.
    no_kernel_turns: Option<String>,
    /// Worker output on its way to the host's stdout/stderr (`Output::Prefix`).
    outputs: Outputs,
    /// A stop hands every waiting connection out, past the handoff window and max_inflight.
    handing_out_all: bool,
    /// When the oldest unacknowledged handoff may reach `ack_timeout` (see `check_acks`).
    ack_check: Option<Instant>,
    /// Workers not read until the host's event queue has room (see `ipc::pause_worker`).
    paused: Vec<u64>,
    /// A reload asked for while one runs: it starts when that one ends (see `reload`).
    reload_queued: bool,
    /// Being seen from outside: service manager notifications, health and metrics.
    ops: metrics::Ops,
    /// The cluster's name (`Config::name`, or the program's base name).
    name: String,
    started_at: Instant,
    /// The control socket and its clients (`docs/control.md`), when it listens.
    control: Option<control::Control>,
    /// Its path, for the status (`control` is taken out while a request is served).
    control_path: Option<String>,
    /// Workers due for replacement (`max_memory`, `max_requests`), and when memory is next read.
    recycle: crate::policy::recycle::Queue,
    /// The slot being recycled, if one is (see `recycle`).
    recycling: Option<recycle::Step>,
}

impl Primary {
    pub fn new(
        cfg: Config,
        program: &Path,
        shared: Arc<Shared>,
        listeners: Vec<Bound>,
        no_kernel_turns: Option<String>,
    ) -> Result<Primary> {
        // Workers learn how often to send heartbeats from the primary, so that every worker
        // library paces them the same way: four per timeout.
        let mut env = cfg.env.clone();
        if let Some(hb) = cfg.heartbeat_timeout {
            let every = (hb.as_millis() / 4).max(1);
            env.push(("RCLUSTER_HEARTBEAT_MS".into(), every.to_string().into()));
        }
        // Listeners of the configuration that the kernel turns, by name (names have no ':'):
        // a worker that accepts itself asks for its own socket of each (`Worker::listen` with
        // the name); the others get every connection from the primary, as before.
        let turned: Vec<&str> = listeners
            .iter()
            .filter(|l| l.group.is_some())
            .map(|l| l.name.as_str())
            .collect();
        if !turned.is_empty() {
            env.push(("RCLUSTER_TURNS".into(), turned.join(":").into()));
        }
        let exec = Exec::new(program, &cfg.argv, &env, cfg.cwd.as_deref())
            .map_err(|e| Error::io("starting the sentinel process", e))?;
        let workers = Box::new(Forking {
            exec,
            program: cfg.argv[0].to_string_lossy().into_owned(),
        });
        let mut primary = Primary::with(
            cfg,
            shared,
            listeners,
            no_kernel_turns,
            workers,
            Box::new(SystemClock),
        )?;
        let (ops, warning) = metrics::Ops::from_env(primary.clock.now());
        primary.ops = ops;
        primary.out.extend(warning);
        if let Err(e) = primary.start_metrics() {
            // Nothing runs yet: let go of the listeners as a failed bind of one of them does.
            primary.close_listeners();
            return Err(e);
        }
        Ok(primary)
    }

    /// A loop over `workers` and `clock`: the real ones (`new`), or fakes in unit tests.
    fn with(
        cfg: Config,
        shared: Arc<Shared>,
        listeners: Vec<Bound>,
        no_kernel_turns: Option<String>,
        workers: Box<dyn Workers>,
        clock: Box<dyn Clock>,
    ) -> Result<Primary> {
        let epoll = Epoll::new().map_err(|e| Error::io("epoll_create1", e))?;
        epoll
            .add(shared.waker.raw(), libc::EPOLLIN as u32, WAKER)
            .map_err(|e| Error::io("epoll_ctl", e))?;
        let outputs = Outputs::new(cfg.output == crate::config::Output::Prefix)
            .map_err(|e| Error::io("spawning the output thread", e))?;
        let now = clock.now();
        let desired = cfg.workers;
        Ok(Primary {
            workers,
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
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            next_conn_id: 1,
            queue_deadline: None,
            gathering: Vec::new(),
            host_tick: None,
            no_kernel_turns,
            outputs,
            handing_out_all: false,
            ack_check: None,
            paused: Vec::new(),
            reload_queued: false,
            ops: metrics::Ops::default(),
            name: cfg.resolved_name(),
            started_at: now,
            control: None,
            control_path: None,
            recycle: Default::default(),
            recycling: None,
            cfg,
        })
    }

    pub fn run(mut self) {
        // Dropped last (after `self`, which owns the epoll fd), even on a panic: from then on
        // the supervisor counts as stopped and every `stop` caller may return.
        let _done = Done(Arc::clone(&self.shared));
        // The loop works in bursts that grow with load: accept until EAGAIN, hand the batch
        // over. Under the normal policy every wake-up preempts whatever runs on its CPU (a
        // worker, or a client on the same machine), so under load each burst is one
        // connection and costs two context switches, several times the loop's own work. A
        // batch thread does not preempt: it runs when the task on its CPU blocks or ends its
        // slice, and finds a batch. On an idle CPU it runs at once, as before. Workers are
        // put back under the normal policy.
        self.workers.on_loop_thread();
        self.warn_uncounted();
        let mut ready = Vec::with_capacity(256);
        let mut dirty = Vec::new();
        let mut deadline = None;
        let mut wait_failed = false;
        loop {
            // Reconciling is O(workers): do it when something changed or a timer is due, not
            // for every message that passes through.
            let now = self.clock.now();
            let queue_due = self.queue_deadline.is_some_and(|d| now >= d);
            if self.changed || queue_due || deadline.is_some_and(|d| now >= d) {
                deadline = self.reconcile(now);
            }
            self.control_tick();
            self.emit();
            if self.stop_deadline.is_some() && self.procs.is_empty() {
                break;
            }
            let timeout = self.wait_timeout(deadline);
            if let Err(e) = self.epoll.wait(&mut ready, timeout) {
                // Cannot happen with a valid epoll fd; do not spin if it does, and say so once.
                if !wait_failed {
                    wait_failed = true;
                    self.out.push(Event::Warning {
                        detail: format!("epoll_wait failed: {e}"),
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            for ev in ready.iter().copied() {
                self.handle_ready(ev.u64, ev.events, &mut dirty);
            }
            self.run_timers();
        }
        self.shutdown();
    }

    /// One pass toward what is wanted: spawn and stop workers, kill the ones past a deadline,
    /// arm listeners, hand out waiting connections. Returns the next deadline of the pass.
    fn reconcile(&mut self, now: Instant) -> Option<Instant> {
        self.changed = false;
        self.manage_workers(now);
        self.manage_recycling(now);
        self.murder_workers(now);
        self.arm_listeners(now);
        self.distribute();
        let queue = self.expire_waiting(now);
        self.next_deadline().into_iter().chain(queue).min()
    }

    /// How long the loop may sleep: until the first timer, or not at all after a pass that
    /// changed something (a spawn, a worker ready), since that may enable another step (the
    /// next slot of a reload), which should run at once rather than after the next event.
    fn wait_timeout(&self, deadline: Option<Instant>) -> Option<Duration> {
        if self.changed {
            return Some(Duration::ZERO);
        }
        let next = [
            deadline,
            self.queue_deadline,
            self.host_tick,
            self.ack_check,
            self.outputs.report_at,
            self.ops.next_at(),
        ]
        .into_iter()
        .flatten()
        .chain(self.gathering.iter().map(|(at, _)| *at))
        .min();
        next.map(|d: Instant| d.saturating_duration_since(self.clock.now()))
    }

    /// Handles one ready descriptor of the epoll set, by what its token says it is.
    fn handle_ready(&mut self, token: u64, flags: u32, dirty: &mut Vec<Arc<Link>>) {
        if token == WAKER {
            self.shared.waker.take(dirty);
            self.take_forwarded();
            self.handle_commands();
            let gather_until = Instant::now() + GATHER;
            for link in dirty.drain(..) {
                if link.may_gather() {
                    self.gathering.push((gather_until, link));
                } else {
                    self.flush(&link);
                }
            }
        } else if token & STEERED != 0 {
            self.member_ready(token);
        } else if token & LISTENER != 0 {
            self.accept_ready((token & !LISTENER) as usize);
        } else if token & control::CONTROL != 0 {
            self.control_ready(token & !control::CONTROL, flags);
        } else if token & metrics::OPS != 0 {
            self.ops_ready(token, flags);
        } else {
            self.handle_io(token >> 2, token & 3, flags);
        }
    }

    /// The work that waits for a time rather than a descriptor: host reads that are due,
    /// output reports, acknowledgement checks, paused workers to resume, gathered messages.
    fn run_timers(&mut self) {
        if self.host_tick.is_some() {
            self.host_read_tick(self.clock.now());
        }
        if self.outputs.report_at.is_some() {
            self.report_output(self.clock.now());
        }
        if self.ack_check.is_some() {
            self.check_acks(self.clock.now());
        }
        if !self.paused.is_empty() && self.shared.events.may_resume() {
            self.resume_workers();
        }
        if !self.gathering.is_empty() {
            self.flush_gathered(Instant::now());
        }
        self.ops_timers(self.clock.now());
    }

    /// Writes the gathered messages of every link whose gathering time is over.
    fn flush_gathered(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.gathering.len() {
            if self.gathering[i].0 <= now {
                let (_, link) = self.gathering.swap_remove(i);
                self.flush(&link);
            } else {
                i += 1;
            }
        }
    }

    fn handle_io(&mut self, key: u64, what: u64, flags: u32) {
        match what {
            IPC => {
                if flags & libc::EPOLLOUT as u32 != 0 {
                    if let Some(link) = self.procs.get(&key).map(|p| Arc::clone(&p.link)) {
                        self.flush(&link);
                    }
                }
                if flags & (libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                    // The worker closed its end: what it sent is all in the socket's buffer,
                    // bounded, and a paused worker's socket would otherwise report this again
                    // on every turn.
                    self.read_worker_to_end(key);
                } else if flags & libc::EPOLLIN as u32 != 0 {
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
                Command::Status(tx) => {
                    self.harvest_turns();
                    drop(tx.send(self.status()))
                }
                Command::Scale(n, tx) => drop(tx.send(self.scale(n))),
                Command::ScaleBy(d, tx) => drop(tx.send(self.scale_by(d))),
                Command::Restart(id, tx) => drop(tx.send(self.restart(id))),
                Command::Kill(id, sig, tx) => drop(tx.send(self.kill(id, sig))),
                Command::Reload(tx) => drop(tx.send(self.start_reload())),
                Command::Stop(timeout) => self.begin_stop(timeout),
                Command::Drain(timeout) => self.begin_drain(timeout),
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

    fn scale_by(&mut self, delta: isize) -> Result<(usize, usize)> {
        if self.stop_deadline.is_some() {
            return Err(Error::Stopped);
        }
        let (before, after) = (
            self.desired,
            crate::policy::scale::stepped(self.desired, delta),
        );
        if after != before {
            self.scale(after)?;
        }
        Ok((before, after))
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
        if self.stop_deadline.is_none() {
            // Before the workers hear of the stop: what is queued reaches them first.
            self.stop_accepting();
        }
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
        self.drop_queued_reload();
        // Connections no ready worker could take are closed.
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
                    self.workers.signal_group(p.pid, libc::SIGTERM);
                }
                if !s.killed && now >= s.kill_at {
                    due.push((*key, ExitReason::Shutdown));
                }
            } else if p.ready_deadline.is_some_and(|d| now >= d) {
                due.push((*key, ExitReason::ReadyTimeout));
            } else if let Some(hb) = self.cfg.heartbeat_timeout {
                // A paused worker is silent because the primary does not read it.
                let silent = now.duration_since(p.last_seen) >= hb && !p.paused;
                if p.state == WorkerState::Ready && silent {
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
                        if !p.paused {
                            consider(p.last_seen + hb);
                        }
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
            if let Some(t) = self.recycle.next_check() {
                consider(t);
            }
        }
        next
    }

    /// Last act of the loop: everything reaped by now; close what is left and tell the host.
    fn shutdown(&mut self) {
        self.close_metrics();
        self.close_listeners();
        self.close_output();
        self.shared.routes.write().unwrap().clear();
        self.shared.waker.take(&mut Vec::new());
        let pending = refuse_commands(&self.shared);
        drop(pending); // Dropping the reply senders tells waiting callers the supervisor stopped.
        self.control_tick();
        self.close_control();
        self.shared.events.push_all(&mut self.out);
        self.shared.events.close();
    }
}

struct Done(Arc<Shared>);

/// Marks the supervisor stopped and takes what is queued, under the queue's lock: a command
/// racing with this is either taken here or refused by `Supervisor::command`.
fn refuse_commands(shared: &Shared) -> Vec<Command> {
    // Also runs while unwinding from a panic: a poisoned lock must not abort the process.
    let mut cmds = shared.cmds.lock().unwrap_or_else(|e| e.into_inner());
    shared.stopped.store(true, Ordering::Release);
    cmds.drain(..).collect()
}

impl Drop for Done {
    fn drop(&mut self) {
        drop(refuse_commands(&self.0));
        self.0.events.close();
        let (lock, cv) = &self.0.done;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
}

fn unroute(shared: &Shared, p: &Process) {
    let mut routes = shared.routes.write().unwrap();
    if routes.get(&p.slot).is_some_and(|c| Arc::ptr_eq(c, &p.link)) {
        routes.remove(&p.slot);
    }
}
