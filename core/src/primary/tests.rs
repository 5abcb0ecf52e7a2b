//! The loop's reactions, without a process: fake workers (`Workers`) that exit when the test
//! says or when they are signalled, and a clock the test moves. Each test drives the loop's
//! passes by hand (`reconcile`, then reaping what exited) and checks where it converges.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::host_read::HostRead;
use super::link::Waker;
use super::shared::Shared;
use super::workers::Workers;
use super::Primary;
use crate::config::{Config, ReadyOn};
use crate::error::{Error, Result};
use crate::events::{Event, EventQueue};
use crate::policy::{Clock, ExitReason};
use crate::sys::spawn::Request;
use crate::sys::{self, WaitStatus};

/// Fake pids start here, above any pid Linux hands out (at most 2^22), and are never given to
/// a system call.
const FIRST_PID: libc::pid_t = 1 << 30;

#[derive(Default)]
struct Procs {
    next: libc::pid_t,
    /// The worker's end of its link, kept so that the loop's writes do not fail, and the
    /// write end of its exit descriptor.
    running: HashMap<libc::pid_t, (OwnedFd, OwnedFd)>,
    exited: HashMap<libc::pid_t, WaitStatus>,
    signals: Vec<(libc::pid_t, libc::c_int)>,
    /// Workers that survive SIGTERM (only SIGKILL ends them).
    ignore_term: bool,
    /// Spawns that fail, as when the program cannot be run.
    refuse_spawn: bool,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<Procs>>);

impl Fake {
    fn exit(&self, pid: libc::pid_t, code: Option<i32>, signal: Option<i32>) {
        let mut procs = self.0.lock().unwrap();
        if procs.running.remove(&pid).is_some() {
            procs.exited.insert(pid, WaitStatus { code, signal });
        }
    }

    fn signals(&self) -> Vec<(libc::pid_t, libc::c_int)> {
        self.0.lock().unwrap().signals.clone()
    }

    fn received(&self, pid: libc::pid_t, sig: libc::c_int) {
        let ends = {
            let mut procs = self.0.lock().unwrap();
            procs.signals.push((pid, sig));
            sig == libc::SIGKILL || (sig == libc::SIGTERM && !procs.ignore_term)
        };
        if ends {
            self.exit(pid, None, Some(sig));
        }
    }
}

impl Workers for Fake {
    fn spawn(&mut self, req: Request) -> Result<(libc::pid_t, OwnedFd)> {
        let (exit_r, exit_w) = sys::pipe().map_err(|e| Error::io("pipe2", e))?;
        let mut procs = self.0.lock().unwrap();
        if procs.refuse_spawn {
            return Err(Error::Spawn {
                program: "worker".into(),
                source: io::Error::from_raw_os_error(libc::ENOENT),
            });
        }
        let pid = FIRST_PID + procs.next;
        procs.next += 1;
        procs.running.insert(pid, (req.ipc, exit_w));
        Ok((pid, exit_r))
    }

    fn abandon(&mut self, pid: libc::pid_t) {
        self.0.lock().unwrap().running.remove(&pid);
    }

    fn signal_group(&self, pid: libc::pid_t, sig: libc::c_int) {
        self.received(pid, sig);
    }

    fn signal(&self, pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
        self.received(pid, sig);
        Ok(())
    }

    fn reap(&self, _exit_fd: RawFd, pid: libc::pid_t) -> io::Result<Option<WaitStatus>> {
        Ok(self.0.lock().unwrap().exited.remove(&pid))
    }

    fn forget(&self, _pid: libc::pid_t) {}
}

#[derive(Clone)]
struct TestClock(Arc<Mutex<Instant>>);

impl Clock for TestClock {
    fn now(&self) -> Instant {
        *self.0.lock().unwrap()
    }
}

struct Loop {
    p: Primary,
    fake: Fake,
    clock: TestClock,
    events: Vec<Event>,
}

impl Loop {
    fn start(cfg: Config) -> Loop {
        Loop::start_with(cfg, Fake::default())
    }

    fn start_with(mut cfg: Config, fake: Fake) -> Loop {
        cfg.restart.jitter = 0.0;
        let shared = Arc::new(Shared {
            cmds: Mutex::new(VecDeque::new()),
            waker: Waker::new().unwrap(),
            routes: RwLock::new(HashMap::new()),
            events: EventQueue::new(cfg.event_queue_limit).unwrap(),
            host: HostRead::new(),
            max_message: cfg.max_message,
            stopped: AtomicBool::new(false),
            bound: Vec::new(),
            done: (Mutex::new(false), Condvar::new()),
            messages_out: std::sync::atomic::AtomicU64::new(0),
            pool_status: std::sync::OnceLock::new(),
        });
        let clock = TestClock(Arc::new(Mutex::new(Instant::now())));
        let workers = Box::new(fake.clone());
        let p = Primary::with(
            cfg,
            shared,
            Vec::new(),
            None,
            workers,
            Box::new(clock.clone()),
        )
        .unwrap();
        let mut l = Loop {
            p,
            fake,
            clock,
            events: Vec::new(),
        };
        l.turn();
        l
    }

    /// Passes of the loop at the current time until nothing changes: reconcile, then reap
    /// what exited.
    fn turn(&mut self) {
        for _ in 0..50 {
            let now = self.clock.now();
            self.p.reconcile(now);
            let exited: Vec<u64> = {
                let procs = self.fake.0.lock().unwrap();
                let exited = |pid| procs.exited.contains_key(&pid);
                self.p
                    .procs
                    .iter()
                    .filter(|(_, p)| exited(p.pid))
                    .map(|(k, _)| *k)
                    .collect()
            };
            for key in &exited {
                self.p.reap_worker(*key);
            }
            self.take_events();
            if exited.is_empty() && !self.p.changed {
                return;
            }
        }
        panic!("the loop did not settle");
    }

    /// The events of the last pass, in order: those the loop already queued for the host
    /// (it queues what it has before a worker's last messages), then the rest.
    fn take_events(&mut self) {
        self.p.shared.events.push_all(&mut self.p.out);
        while let Some(ev) = self.p.shared.events.try_pop() {
            self.events.push(ev);
        }
    }

    /// Moves the clock on in steps, with the loop's passes after each.
    fn wait(&mut self, total: Duration) {
        let step = Duration::from_millis(10);
        let mut waited = Duration::ZERO;
        while waited < total {
            *self.clock.0.lock().unwrap() += step;
            waited += step;
            self.turn();
        }
    }

    /// (slot, generation) of each worker that runs and is not being stopped.
    fn live(&self) -> Vec<(u32, u32)> {
        let mut live: Vec<(u32, u32)> = self
            .p
            .procs
            .values()
            .filter(|p| p.is_live())
            .map(|p| (p.slot, p.generation))
            .collect();
        live.sort();
        live
    }

    fn pid_of(&self, slot: u32, generation: u32) -> libc::pid_t {
        let p = self.p.procs.values();
        p.filter(|p| p.slot == slot && p.generation == generation)
            .map(|p| p.pid)
            .next()
            .unwrap_or_else(|| panic!("no worker {slot} of generation {generation}"))
    }

    fn exits(&self) -> Vec<(u32, ExitReason)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Exit { id, info, .. } => Some((*id, info.reason)),
                _ => None,
            })
            .collect()
    }

    /// When each slot was spawned (or failed to be), in order.
    fn starts(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Spawned { id, .. } => Some(format!("spawned {id}")),
                Event::SpawnFailed { id, .. } => Some(format!("failed {id}")),
                Event::Restarting { id, delay, .. } => {
                    Some(format!("restarting {id} in {}ms", delay.as_millis()))
                }
                _ => None,
            })
            .collect()
    }

    fn reloads(&self) -> Vec<String> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::ReloadStarted { generation } => Some(format!("started {generation}")),
                Event::ReloadDone { generation } => Some(format!("done {generation}")),
                Event::ReloadFailed { generation, .. } => Some(format!("failed {generation}")),
                _ => None,
            })
            .collect()
    }
}

fn config(workers: usize, ready_on: ReadyOn) -> Config {
    let mut cfg = Config::new(["worker"]);
    cfg.workers = workers;
    cfg.ready_on = ready_on;
    cfg
}

#[test]
fn workers_that_are_ready_at_spawn_run_in_every_slot() {
    let l = Loop::start(config(3, ReadyOn::Spawn));
    assert_eq!(l.live(), [(0, 1), (1, 1), (2, 1)]);
}

#[test]
fn an_old_worker_that_crashes_during_a_reload_is_replaced_and_the_reload_finishes() {
    let mut cfg = config(2, ReadyOn::Spawn);
    cfg.kill_timeout = Duration::from_secs(1);
    let mut l = Loop::start(cfg);
    // Old workers that take their time to go hold the reload at slot 0: its new worker is
    // ready, its old one draining, slot 1 not reached, when slot 1's old worker crashes.
    l.fake.0.lock().unwrap().ignore_term = true;
    l.p.start_reload().unwrap();
    l.turn();
    assert_eq!(l.live(), [(0, 2), (1, 1)]);
    assert_eq!(l.p.procs.len(), 3);
    let old = l.pid_of(1, 1);
    l.fake.exit(old, Some(1), None);
    l.turn();
    l.wait(Duration::from_secs(3));
    assert_eq!(l.live(), [(0, 2), (1, 2)]);
    assert_eq!(l.reloads(), ["started 2", "done 2"]);
    assert!(
        l.exits().contains(&(1, ExitReason::Crashed)),
        "{:?}",
        l.exits()
    );
    assert!(l.p.reload.is_none());
}

#[test]
fn a_new_worker_that_crashes_during_a_reload_fails_it_and_the_old_ones_keep_serving() {
    let mut l = Loop::start(config(2, ReadyOn::Hello));
    // Ready only once they say hello: make generation 1 ready by hand.
    let keys: Vec<u64> = l.p.procs.keys().copied().collect();
    for key in keys {
        l.p.mark_ready(key);
    }
    l.turn();
    l.p.start_reload().unwrap();
    l.turn();
    let new = l.pid_of(0, 2);
    l.fake.exit(new, Some(1), None);
    l.turn();
    assert_eq!(l.live(), [(0, 1), (1, 1)]);
    assert_eq!(l.reloads(), ["started 2", "failed 2"]);
}

#[test]
fn scaling_down_during_a_reload_stops_the_dropped_slot_and_the_reload_finishes() {
    let mut cfg = config(3, ReadyOn::Spawn);
    cfg.kill_timeout = Duration::from_secs(1);
    let mut l = Loop::start(cfg);
    // The reload is held at slot 0 (its old worker takes its time to go) when the scale comes.
    l.fake.0.lock().unwrap().ignore_term = true;
    l.p.start_reload().unwrap();
    l.turn();
    assert_eq!(l.live(), [(0, 2), (1, 1), (2, 1)]);
    l.p.scale(1).unwrap();
    l.turn();
    l.wait(Duration::from_secs(3));
    assert_eq!(l.live(), [(0, 2)]);
    assert!(l.p.procs.len() == 1, "workers left: {}", l.p.procs.len());
    assert_eq!(l.reloads(), ["started 2", "done 2"]);
}

#[test]
fn a_stop_while_a_worker_starts_terms_it_then_kills_it_after_kill_timeout() {
    let mut cfg = config(1, ReadyOn::Hello);
    cfg.kill_timeout = Duration::from_millis(500);
    let mut l = Loop::start(cfg);
    l.fake.0.lock().unwrap().ignore_term = true;
    let pid = l.pid_of(0, 1);
    l.p.begin_stop(Duration::from_secs(5));
    l.turn();
    // It has not said hello, so it cannot be asked over its link: SIGTERM at once.
    assert_eq!(l.fake.signals(), [(pid, libc::SIGTERM)]);
    l.wait(Duration::from_millis(400));
    assert_eq!(l.p.procs.len(), 1, "gone before kill_timeout");
    l.wait(Duration::from_millis(200));
    assert_eq!(
        l.fake.signals(),
        [(pid, libc::SIGTERM), (pid, libc::SIGKILL)]
    );
    assert!(l.p.procs.is_empty());
    assert_eq!(l.exits(), [(0, ExitReason::Shutdown)]);
    // Stopped: nothing is started again, however long it waits.
    l.wait(Duration::from_secs(1));
    assert!(l.p.procs.is_empty());
}

#[test]
fn a_worker_that_crashes_is_started_again_once_its_backoff_has_passed() {
    let mut cfg = config(1, ReadyOn::Spawn);
    cfg.restart.backoff_initial = Duration::from_millis(300);
    let mut l = Loop::start(cfg);
    let first = l.pid_of(0, 1);
    l.fake.exit(first, Some(1), None);
    l.turn();
    assert_eq!(l.exits(), [(0, ExitReason::Crashed)]);
    l.wait(Duration::from_millis(290));
    assert!(l.p.procs.is_empty(), "started again before its backoff");
    l.wait(Duration::from_millis(20));
    assert_eq!(l.live(), [(0, 1)]);
    assert_eq!(
        l.starts(),
        ["spawned 0", "restarting 0 in 300ms", "spawned 0"]
    );
}

#[test]
fn a_spawn_that_fails_is_tried_again_after_a_growing_backoff() {
    let mut cfg = config(1, ReadyOn::Spawn);
    cfg.restart.backoff_initial = Duration::from_millis(100);
    cfg.restart.backoff_multiplier = 2.0;
    let fake = Fake::default();
    fake.0.lock().unwrap().refuse_spawn = true;
    let mut l = Loop::start_with(cfg, fake);
    l.wait(Duration::from_millis(350));
    assert_eq!(
        l.starts(),
        [
            "failed 0",
            "restarting 0 in 100ms",
            "failed 0",
            "restarting 0 in 200ms",
            "failed 0",
            "restarting 0 in 400ms",
        ]
    );
    l.fake.0.lock().unwrap().refuse_spawn = false;
    l.wait(Duration::from_millis(400));
    assert_eq!(l.live(), [(0, 1)]);
}

#[test]
fn a_worker_that_crashes_during_a_stop_is_not_started_again() {
    let mut cfg = config(2, ReadyOn::Spawn);
    cfg.kill_timeout = Duration::from_secs(1);
    let mut l = Loop::start(cfg);
    l.fake.0.lock().unwrap().ignore_term = true;
    l.p.begin_stop(Duration::from_secs(5));
    l.turn();
    let pid = l.pid_of(1, 1);
    l.fake.exit(pid, Some(1), None);
    l.turn();
    l.wait(Duration::from_secs(2));
    assert!(l.p.procs.is_empty());
    assert_eq!(l.starts(), ["spawned 0", "spawned 1"]);
    let mut exits = l.exits();
    exits.sort_by_key(|e| e.0);
    assert_eq!(
        exits,
        [(0, ExitReason::Shutdown), (1, ExitReason::Shutdown)]
    );
}

/// (slot, reason) of each `Recycling` event, in order.
fn recyclings(l: &Loop) -> Vec<(u32, ExitReason)> {
    l.events
        .iter()
        .filter_map(|e| match e {
            Event::Recycling { id, reason, .. } => Some((*id, *reason)),
            _ => None,
        })
        .collect()
}

fn key_of(l: &Loop, slot: u32) -> u64 {
    let live =
        l.p.procs
            .iter()
            .find(|(_, p)| p.slot == slot && p.is_live());
    *live.expect("a live worker in the slot").0
}

#[test]
fn recycling_replaces_one_slot_at_a_time_and_the_next_waits_until_the_old_worker_has_exited() {
    let mut cfg = config(3, ReadyOn::Spawn);
    cfg.kill_timeout = Duration::from_secs(1);
    let mut l = Loop::start(cfg);
    // Old workers take until kill_timeout to go: a step lasts that long.
    l.fake.0.lock().unwrap().ignore_term = true;
    for (slot, reason) in [(2, ExitReason::Memory), (0, ExitReason::MaxRequests)] {
        let key = key_of(&l, slot);
        l.p.queue_recycle(key, reason);
    }
    l.turn();
    assert_eq!(recyclings(&l), [(2, ExitReason::Memory)]);
    assert_eq!(l.p.procs.len(), 4, "one replacement beside the three");
    let mut most = 0;
    for _ in 0..400 {
        *l.clock.0.lock().unwrap() += Duration::from_millis(10);
        l.turn();
        most = most.max(l.p.procs.len());
    }
    assert_eq!(most, 4, "never two replacements at once");
    assert_eq!(
        recyclings(&l),
        [(2, ExitReason::Memory), (0, ExitReason::MaxRequests)]
    );
    assert_eq!(
        l.exits(),
        [(2, ExitReason::Memory), (0, ExitReason::MaxRequests)]
    );
    assert_eq!(l.live(), [(0, 1), (1, 1), (2, 1)]);
    let counted = &l.p.slots[2].counters.restarts_by_reason;
    assert_eq!(counted.get("memory"), Some(&1), "{counted:?}");
    assert_eq!(l.p.slots[0].restarts, 1);
}

#[test]
fn recycling_waits_for_a_reload_which_replaces_the_queued_workers_itself() {
    let mut l = Loop::start(config(2, ReadyOn::Spawn));
    l.p.start_reload().unwrap();
    for slot in [0, 1] {
        let key = key_of(&l, slot);
        l.p.queue_recycle(key, ExitReason::Memory);
    }
    l.turn();
    l.wait(Duration::from_millis(100));
    assert_eq!(l.reloads(), ["started 2", "done 2"]);
    assert_eq!(l.live(), [(0, 2), (1, 2)]);
    assert_eq!(
        recyclings(&l),
        [],
        "the reload replaced them: nothing left to recycle"
    );
    assert!(
        l.exits().iter().all(|(_, r)| *r == ExitReason::Requested),
        "{:?}",
        l.exits()
    );
}

#[test]
fn a_recycled_worker_whose_replacement_cannot_start_is_stopped_and_its_slot_restarted() {
    let mut l = Loop::start(config(1, ReadyOn::Spawn));
    l.fake.0.lock().unwrap().refuse_spawn = true;
    let key = key_of(&l, 0);
    l.p.queue_recycle(key, ExitReason::Memory);
    l.turn();
    assert_eq!(recyclings(&l), [(0, ExitReason::Memory)]);
    assert_eq!(l.exits(), [(0, ExitReason::Memory)]);
    l.fake.0.lock().unwrap().refuse_spawn = false;
    l.wait(Duration::from_secs(2));
    assert_eq!(l.live(), [(0, 1)], "{:?}", l.starts());
}

#[test]
fn a_worker_whose_recycling_is_under_way_is_not_queued_again() {
    let mut cfg = config(1, ReadyOn::Hello);
    cfg.ready_timeout = Duration::from_secs(60);
    let mut l = Loop::start(cfg);
    let old = *l.p.procs.keys().next().unwrap();
    l.p.mark_ready(old);
    l.turn();
    l.p.queue_recycle(old, ExitReason::MaxRequests);
    l.turn();
    assert_eq!(recyclings(&l), [(0, ExitReason::MaxRequests)]);
    // The replacement is not ready yet: the old worker still serves, and reaches its limit
    // again with every connection it acknowledges.
    assert_eq!(l.p.procs.len(), 2);
    l.p.queue_recycle(old, ExitReason::MaxRequests);
    assert!(
        !l.p.recycle.contains(old),
        "queued again while being replaced"
    );
}
