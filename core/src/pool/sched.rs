//! The scheduler: one thread that gives queued tasks to workers, reads their answers and
//! their exits from the supervisor's events, and enforces deadlines and cancellations.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::recycle::Recycle;
use super::shared::{Pending, Shared};
use super::types::{Outcome, PoolConfig, TaskError, Value};
use crate::events::{Event, ExitInfo};
use crate::primary::supervisor::Supervisor;
use crate::wire::task;

/// One worker slot as the scheduler sees it.
#[derive(Default)]
pub(super) struct Slot {
    /// The process it runs now (0: none yet).
    pub(super) pid: u32,
    /// Said it is ready, and may be given tasks.
    pub(super) ready: bool,
    /// Said it was ready once (it started; what ends it later is no start-up failure).
    started: bool,
    /// Gets no more tasks: it is being killed or recycled.
    pub(super) ending: bool,
    /// Restarted once its last task is answered (`max_tasks_per_worker`).
    pub(super) recycle: bool,
    /// Why the pool killed it, for the other tasks that die with it.
    kill_cause: Option<String>,
    /// Tasks given to it and not answered, in the order they were sent: the worker starts
    /// them in that order, so the first ones are running and the rest wait in the worker
    /// (prefetched, see `dispatch`).
    pub(super) tasks: Vec<u64>,
    /// Tasks it has answered.
    pub(super) answered: u64,
    /// When its memory was last looked at (`max_worker_memory`).
    pub(super) memory_checked: Option<Instant>,
    /// Tasks that waited in it and were cancelled with a `TaskCancel` frame, the latest
    /// `DROPPED_KEPT`: it drops them and never answers, unless it had started one before the
    /// frame arrived (see `late_answer`).
    dropped: Vec<u64>,
}

/// How many cancelled tasks a worker was told to drop are remembered, to recognise the answer
/// of one it had started all the same.
const DROPPED_KEPT: usize = 64;

impl Slot {
    /// Whether it may be given tasks now (while it holds fewer than its `limit`).
    pub(super) fn open(&self) -> bool {
        self.ready && !self.ending
    }
}

/// A task given to a worker: running there, or waiting in the worker behind the running ones
/// (prefetched) until the answer of one of those arrives.
pub(super) struct Running {
    pub(super) slot: u32,
    pub(super) queued_at: Instant,
    /// When it was given (prefetched), then when it started.
    pub(super) started: Instant,
    /// It started: it is one of the first `conc` unanswered tasks of its worker.
    pub(super) begun: bool,
    /// Its timeout (its own, or the pool's).
    pub(super) timeout: Option<Duration>,
    /// Measured from its start; None until then.
    pub(super) deadline: Option<Instant>,
    /// The host cancelled it while it was prefetched: it already failed, and its answer (the
    /// worker may run it after all) is dropped.
    pub(super) cancelled: bool,
    /// Kept to queue it again: until it starts (a prefetched task whose worker ends goes back
    /// to the queue), and for a second run when the task is idempotent.
    pub(super) again: Option<Pending>,
}

pub(super) struct Sched {
    pub(super) sup: Supervisor,
    pub(super) shared: Arc<Shared>,
    pub(super) slots: Vec<Slot>,
    pub(super) running: HashMap<u64, Running>,
    pub(super) conc: usize,
    pub(super) timeout: Option<Duration>,
    pub(super) max_tasks: Option<u64>,
    pub(super) max_memory: Option<u64>,
    /// Why the last worker that could not start could not.
    boot_error: Option<String>,
    /// Outcomes of this turn, handed over under one lock.
    pub(super) done: Vec<Outcome>,
    /// Idempotent tasks to queue again, first.
    pub(super) again: Vec<Pending>,
    /// Where the replacement of a worker after `max_tasks_per_worker` stands (see `recycle`).
    pub(super) recycle: Recycle,
    /// How long tasks run, on average lately (how many to send ahead, see `dispatch`).
    pub(super) avg_run: Option<Duration>,
    /// `max_tasks_ahead`.
    pub(super) max_ahead: usize,
}

impl Sched {
    pub fn new(sup: Supervisor, shared: Arc<Shared>, cfg: &PoolConfig) -> Sched {
        Sched {
            sup,
            shared,
            slots: (0..cfg.cluster.workers).map(|_| Slot::default()).collect(),
            running: HashMap::new(),
            conc: cfg.concurrent_tasks_per_worker,
            timeout: cfg.task_timeout,
            max_tasks: cfg.max_tasks_per_worker,
            max_memory: cfg.max_worker_memory,
            boot_error: None,
            done: Vec::new(),
            again: Vec::new(),
            recycle: Recycle::Idle,
            avg_run: None,
            max_ahead: cfg.max_tasks_ahead,
        }
    }

    pub fn run(mut self) {
        // Asking for the descriptor makes this thread read the workers that answer, too: an
        // answer then costs one wake-up (this thread's), not two.
        let events = self.sup.event_fd();
        let mut stop_at = None;
        loop {
            self.shared.wake.take();
            while let Some(ev) = self.sup.try_next_event() {
                self.on_event(ev);
            }
            let now = Instant::now();
            self.take_cancels();
            self.expire(now);
            let closing = self.shared.inner.lock().unwrap().closing;
            if let Some(c) = closing {
                if c.cancel_queued {
                    self.fail_queued(TaskError::Shutdown);
                    let waiting: Vec<u64> = self
                        .running
                        .iter()
                        .filter(|(_, r)| !r.begun)
                        .map(|(&id, _)| id)
                        .collect();
                    for id in waiting {
                        self.fail_waiting(id, TaskError::Shutdown);
                    }
                }
                // Tasks that failed while they waited in a worker are not waited for.
                let idle = self.running.values().all(|r| r.cancelled) && self.queue_empty();
                if idle || now >= c.deadline {
                    stop_at = Some(c.deadline);
                }
            }
            if stop_at.is_none() {
                self.dispatch(now);
            }
            self.publish();
            if stop_at.is_some() {
                break;
            }
            let wait = self.next_deadline(closing.map(|c| c.deadline));
            poll_two(events, self.shared.wake.raw(), wait);
        }
        self.shut_down();
    }

    fn queue_empty(&self) -> bool {
        self.shared.inner.lock().unwrap().queue.is_empty() && self.again.is_empty()
    }

    /// Stops the workers, fails what never ended, and marks the pool ended.
    fn shut_down(&mut self) {
        let _ = self.sup.stop(self.sup.kill_timeout());
        // Answers that came before the workers ended still count.
        while let Some(ev) = self.sup.try_next_event() {
            if let Event::TaskDone { id, pid, data } = ev {
                self.on_answer(id, pid, &data);
            }
        }
        self.fail_queued(TaskError::Shutdown);
        let now = Instant::now();
        for (id, r) in std::mem::take(&mut self.running) {
            if r.cancelled {
                continue;
            }
            let (wait, run) = (r.started - r.queued_at, now - r.started);
            self.done
                .push(Outcome::failed(id, TaskError::Shutdown, wait, run));
        }
        self.publish();
        self.shared.ended.store(true, Ordering::Release);
        self.shared.outcome_ready();
        self.shared.room.notify_all();
    }

    // ---- what the supervisor says ----

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Spawned { id, pid, .. } => {
                if let Some(s) = self.slots.get_mut(id as usize) {
                    *s = Slot {
                        pid,
                        ..Slot::default()
                    };
                }
            }
            Event::Ready { id, pid } => {
                if let Some(s) = self.slots.get_mut(id as usize).filter(|s| s.pid == pid) {
                    s.ready = true;
                    s.started = true;
                    // A worker could start: an older start-up failure is no longer the news.
                    self.boot_error = None;
                    self.recycle_on_ready(id);
                }
            }
            Event::GaveUp { id, .. } => self.recycle_gave_up(id),
            Event::TaskDone { id, pid, data } => self.on_answer(id, pid, &data),
            Event::Exit { id, info, .. } => self.on_exit(id, info),
            Event::AllDown => self.all_down(),
            _ => {}
        }
    }

    fn on_answer(&mut self, slot: u32, pid: u32, data: &[u8]) {
        // The reader checked that it parses.
        let Some(d) = task::parse_task_done(data) else {
            return;
        };
        if d.id == task::BOOT_FAILURE {
            let why = String::from_utf8_lossy(d.payload);
            self.boot_error = Some(format!("worker {slot} (pid {pid}) cannot start: {why}"));
            return;
        }
        // An answer to a task that already failed (timed out, cancelled) is dropped, and so is
        // one from a process the task was not given to.
        let given = self.slots.get(slot as usize).is_some_and(|s| s.pid == pid);
        if !given || self.running.get(&d.id).is_none_or(|r| r.slot != slot) {
            if given {
                self.late_answer(slot, d.id, Instant::now());
            }
            return;
        }
        let Some(r) = self.running.remove(&d.id) else {
            return;
        };
        let now = Instant::now();
        if r.cancelled {
            // Failed when it was cancelled; the worker ran it (or skipped it) all the same.
            self.task_left(r.slot, d.id, true);
            self.begin_next(slot, now);
            return;
        }
        if r.begun {
            self.learn_run(now - r.started);
        }
        let result = if d.ok {
            Ok(Value {
                content: d.content,
                payload: d.payload.to_vec(),
            })
        } else {
            Err(TaskError::Failed {
                content: d.content,
                payload: d.payload.to_vec(),
            })
        };
        self.done.push(Outcome {
            id: d.id,
            result,
            wait: r.started - r.queued_at,
            run: now - r.started,
        });
        self.task_left(r.slot, d.id, true);
        self.begin_next(slot, now);
    }

    /// The worker of `slot` starts its next prefetched tasks as running ones are answered
    /// (in the order they were sent, at most `conc` at once): their deadlines start now.
    /// An answer is written before its worker starts the next task (`docs/protocol.md` 5.8),
    /// so a deadline starts no earlier than its task does.
    pub(super) fn begin_next(&mut self, slot: u32, now: Instant) {
        let Some(s) = self.slots.get(slot as usize) else {
            return;
        };
        let mut begun = 0;
        for id in &s.tasks {
            if begun >= self.conc {
                break;
            }
            let Some(r) = self.running.get_mut(id) else {
                continue;
            };
            begun += 1;
            if r.begun {
                continue;
            }
            r.begun = true;
            r.started = now;
            // A cancelled task that its worker runs all the same keeps its deadline: a runaway
            // one would hold its worker for good.
            r.deadline = r.timeout.map(|t| now + t);
            let mut again = r.again.take();
            if let Some(p) = again.as_mut() {
                p.tries += 1;
            }
            r.again = again.filter(|p| p.options.idempotent);
        }
    }

    /// Counts one more task's run time into the average (the last few dozen weigh most).
    fn learn_run(&mut self, run: Duration) {
        self.avg_run = Some(match self.avg_run {
            None => run,
            Some(avg) => (avg * 7 + run) / 8,
        });
    }

    /// Task `id` no longer runs on `slot`; `answered`: the worker answered it (a worker that
    /// reached `max_tasks_per_worker` is then replaced, see `recycle`).
    fn task_left(&mut self, slot: u32, id: u64, answered: bool) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        s.tasks.retain(|&t| t != id);
        if answered {
            s.answered += 1;
            self.recycle_after_answer(slot);
        } else {
            self.step_recycle();
        }
    }

    fn on_exit(&mut self, slot: u32, info: ExitInfo) {
        let Some(s) = self
            .slots
            .get_mut(slot as usize)
            .filter(|s| s.pid == info.pid)
        else {
            return;
        };
        let was_ready = s.started;
        let cause = s.kill_cause.take();
        let tasks = std::mem::take(&mut s.tasks);
        *s = Slot::default();
        if !was_ready && self.boot_error.is_none() {
            let how = match (info.signal, info.code) {
                (Some(sig), _) => {
                    format!(
                        "killed by signal {} ({sig})",
                        super::types::signal_name(sig)
                    )
                }
                (None, Some(c)) => format!("exit code {c}"),
                _ => "an unknown status".into(),
            };
            self.boot_error = Some(format!(
                "worker {slot} (pid {}) ended before it was ready ({how})",
                info.pid
            ));
        }
        let now = Instant::now();
        // Both go back first, in the order they were sent: the idempotent tasks it ran, then
        // those that waited in it.
        let mut retry = Vec::new();
        let mut waited = Vec::new();
        for id in tasks {
            let Some(r) = self.running.remove(&id) else {
                continue;
            };
            if r.cancelled {
                continue;
            }
            if !r.begun {
                // It waited in the worker and never ran: not an attempt; it runs elsewhere,
                // before anything still queued.
                waited.extend(r.again);
                continue;
            }
            if let Some(p) = r.again.filter(|p| p.tries < 2) {
                retry.push(p);
                self.shared.inner.lock().unwrap().stats.retried += 1;
                continue;
            }
            let e = TaskError::Crashed {
                worker: slot,
                pid: info.pid,
                code: info.code,
                signal: info.signal,
                cause: cause.clone(),
            };
            let (wait, run) = (r.started - r.queued_at, now - r.started);
            self.done.push(Outcome::failed(id, e, wait, run));
        }
        if !waited.is_empty() {
            self.shared.inner.lock().unwrap().stats.requeued += waited.len() as u64;
        }
        retry.extend(waited);
        self.again.splice(0..0, retry);
    }

    /// Every worker stopped for good: no queued task can run, and none will be taken.
    fn all_down(&mut self) {
        self.recycle = Recycle::Idle;
        let why = self
            .boot_error
            .clone()
            .unwrap_or_else(|| "every worker stopped and none is restarted".into());
        self.shared.inner.lock().unwrap().broken = Some(why.clone());
        self.shared.room.notify_all();
        self.fail_queued(TaskError::NoWorkers(why));
    }

    // ---- what the host asks ----

    fn take_cancels(&mut self) {
        let ids = std::mem::take(&mut self.shared.inner.lock().unwrap().cancels);
        for id in ids {
            if let Some(at) = self.again.iter().position(|p| p.id == id) {
                let p = self.again.remove(at);
                let wait = p.queued_at.elapsed();
                self.done.push(Outcome::failed(
                    id,
                    TaskError::Cancelled,
                    wait,
                    Duration::ZERO,
                ));
                continue;
            }
            let Some(r) = self.running.get_mut(&id) else {
                continue;
            };
            if r.cancelled {
                continue;
            }
            if r.begun {
                self.end_running(id, TaskError::Cancelled, "a task on it was cancelled");
            } else {
                self.fail_waiting(id, TaskError::Cancelled);
            }
        }
    }

    /// Fails task `id`, which waits in its worker (sent ahead) and does not run yet, with `e`;
    /// its worker is not killed but told with a `TaskCancel` frame, and drops the task
    /// without answering (`docs/protocol.md` 5.8). When the frame cannot be queued, the task
    /// stays in its worker's list until answered: the worker may still run it (it starts its
    /// tasks in order, and the order must stay known).
    fn fail_waiting(&mut self, id: u64, e: TaskError) {
        let Some(r) = self
            .running
            .get_mut(&id)
            .filter(|r| !r.begun && !r.cancelled)
        else {
            return;
        };
        let wait = r.started - r.queued_at;
        self.done.push(Outcome::failed(id, e, wait, Duration::ZERO));
        let slot = r.slot;
        let pid = self.slots[slot as usize].pid;
        if self.sup.send_task_cancel(slot, pid, id).is_err() {
            r.cancelled = true;
            r.again = None;
            return;
        }
        self.running.remove(&id);
        let dropped = &mut self.slots[slot as usize].dropped;
        if dropped.len() == DROPPED_KEPT {
            dropped.remove(0);
        }
        dropped.push(id);
        self.task_left(slot, id, false);
    }

    /// Worker `slot` answered task `id`, which it no longer holds for the pool. When that is a
    /// cancelled task it was told to drop, it had started it before the `TaskCancel` frame
    /// arrived: that task held one of its `conc` places until now, so the last task counted as
    /// running there in truth waited until now, and its clock starts now.
    fn late_answer(&mut self, slot: u32, id: u64, now: Instant) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let Some(at) = s.dropped.iter().position(|&d| d == id) else {
            return;
        };
        s.dropped.remove(at);
        let begun: Vec<u64> = s
            .tasks
            .iter()
            .filter(|t| self.running.get(t).is_some_and(|r| r.begun))
            .take(self.conc)
            .copied()
            .collect();
        if begun.len() < self.conc {
            return;
        }
        if let Some(r) = begun.last().and_then(|t| self.running.get_mut(t)) {
            r.started = now;
            r.deadline = r.timeout.map(|t| now + t);
        }
    }

    /// Fails running task `id` with `e` and kills its worker (the only way to stop it); the
    /// worker gets no task from now on, and is replaced.
    fn end_running(&mut self, id: u64, e: TaskError, cause: &str) {
        let Some(r) = self.running.remove(&id) else {
            return;
        };
        let now = Instant::now();
        // A cancelled task failed when it was cancelled.
        if !r.cancelled {
            self.done.push(Outcome::failed(
                id,
                e,
                r.started - r.queued_at,
                now - r.started,
            ));
        }
        let slot = r.slot;
        self.task_left(slot, id, false);
        let s = &mut self.slots[slot as usize];
        s.ready = false;
        s.ending = true;
        s.recycle = false;
        s.kill_cause = Some(format!("killed by the pool: {cause}"));
        // Sent by the loop while that process is unreaped, so the signal reaches it.
        let _ = self.sup.kill(slot, libc::SIGKILL);
    }

    fn expire(&mut self, now: Instant) {
        let late: Vec<(u64, Duration)> = self
            .running
            .iter()
            .filter(|(_, r)| r.deadline.is_some_and(|d| now >= d))
            .map(|(&id, r)| (id, r.deadline.unwrap_or(now) - r.started))
            .collect();
        for (id, after) in late {
            self.end_running(id, TaskError::Timeout { after }, "a task on it timed out");
        }
    }

    fn fail_queued(&mut self, e: TaskError) {
        let now = Instant::now();
        let mut inner = self.shared.inner.lock().unwrap();
        let queued: Vec<Pending> = self.again.drain(..).chain(inner.queue.drain(..)).collect();
        drop(inner);
        for p in queued {
            self.done.push(Outcome::failed(
                p.id,
                e.clone(),
                now - p.queued_at,
                Duration::ZERO,
            ));
        }
        self.shared.room.notify_all();
    }

    // ---- handing over ----

    /// Hands this turn's outcomes to the host, and the counts of the moment.
    fn publish(&mut self) {
        let ready = self.slots.iter().filter(|s| s.ready).count();
        let mut inner = self.shared.inner.lock().unwrap();
        inner.stats.running = self.running.len();
        inner.stats.workers_ready = ready;
        if self.done.is_empty() {
            return;
        }
        for o in self.done.drain(..) {
            inner.finish(o);
        }
        drop(inner);
        self.shared.outcome_ready();
    }

    /// How long to sleep: until the first task deadline or the stop's deadline.
    fn next_deadline(&self, stop: Option<Instant>) -> Option<Duration> {
        let next = self
            .running
            .values()
            .filter_map(|r| r.deadline)
            .chain(stop)
            .min()?;
        Some(next.saturating_duration_since(Instant::now()))
    }
}

/// Waits until either descriptor is readable or `timeout` passes.
fn poll_two(a: i32, b: i32, timeout: Option<Duration>) {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // Rounded up, so that a deadline is never woken for a millisecond early and spun on.
    let ms = timeout.map_or(-1, |t| {
        t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
    });
    // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
    unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
}
