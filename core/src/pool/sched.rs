//! The scheduler: one thread that gives queued tasks to workers, reads their answers and
//! their exits from the supervisor's events, and enforces deadlines and cancellations. This
//! file is its state and its loop; what it does with the supervisor's events is in `answers`,
//! ending tasks early (cancels, deadlines, a stop) in `ending`, giving tasks out in
//! `dispatch`, replacing workers in `recycle`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::recycle::Recycle;
use super::shared::{Pending, Shared};
use super::types::{Outcome, PoolConfig, TaskError};
use crate::events::{Event, SPIN};
use crate::primary::supervisor::Supervisor;

/// One worker slot as the scheduler sees it.
#[derive(Default)]
pub(super) struct Slot {
    /// The process it runs now (0: none yet).
    pub(super) pid: u32,
    /// Said it is ready, and may be given tasks.
    pub(super) ready: bool,
    /// Said it was ready once (it started; what ends it later is no start-up failure).
    pub(super) started: bool,
    /// Gets no more tasks: it is being killed or recycled.
    pub(super) ending: bool,
    /// Restarted once its last task is answered (`max_tasks_per_worker`).
    pub(super) recycle: bool,
    /// Why the pool killed it, for the other tasks that die with it.
    pub(super) kill_cause: Option<String>,
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
    pub(super) dropped: Vec<u64>,
}

/// How many cancelled tasks a worker was told to drop are remembered, to recognise the answer
/// of one it had started all the same.
pub(super) const DROPPED_KEPT: usize = 64;

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
    /// The last `publish` handed the host outcomes.
    published: bool,
    /// Whether looking before sleeping pays (see `look_before_sleeping`).
    looks: Looks,
    pub(super) conc: usize,
    pub(super) timeout: Option<Duration>,
    pub(super) max_tasks: Option<u64>,
    pub(super) max_memory: Option<u64>,
    /// Why the last worker that could not start could not.
    pub(super) boot_error: Option<String>,
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
            published: false,
            looks: Looks::default(),
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
            if self.look_before_sleeping(events, wait) {
                continue;
            }
            poll_two(events, self.shared.wake.raw(), wait);
        }
        self.shut_down();
    }

    /// With one task out (its answer comes soon), or an outcome just handed to a host with
    /// none out (the next task comes soon), looks for [`SPIN`] before sleeping, as
    /// `Supervisor::next_event` does: what comes within that time costs no wake-up of this
    /// thread, which on a virtual machine is much of a task's round trip (an idle pool's p50
    /// went from about 105–120 to 80–86 µs, bench/RESULTS.md). Only while such looks pay
    /// ([`Looks`]). Whether something came.
    fn look_before_sleeping(&mut self, events: i32, wait: Option<Duration>) -> bool {
        let expected = self.running.len() == 1 || (self.running.is_empty() && self.published);
        if !expected || wait.is_some_and(|w| w < SPIN) || !self.looks.take() {
            return false;
        }
        let found = spin_two(events, self.shared.wake.raw(), SPIN);
        self.looks.found(found);
        found
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

    /// Hands this turn's outcomes to the host, and the counts of the moment.
    fn publish(&mut self) {
        let ready = self.slots.iter().filter(|s| s.ready).count();
        let mut inner = self.shared.inner.lock().unwrap();
        inner.stats.running = self.running.len();
        inner.stats.workers_ready = ready;
        self.published = !self.done.is_empty();
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

/// Whether looking before sleeping pays: each look that found something raises a score by 1,
/// each that found nothing (a CPU the workers may need, for [`SPIN`]) lowers it by 2; below
/// half the highest score a look is taken only once in [`Looks::RETRY`] chances, to see
/// whether they pay again. A busy pool's looks found something about one time in three, an
/// idle pool's, with tasks taken in turn, 97 times in a hundred.
#[derive(Debug, Clone, Copy)]
struct Looks {
    score: u32,
    /// Chances declined since the last look.
    skipped: u32,
}

impl Looks {
    const MAX: u32 = 16;
    const MISS: u32 = 2;
    const RETRY: u32 = 32;

    /// Whether to look at this chance.
    fn take(&mut self) -> bool {
        if self.score < Self::MAX / 2 {
            self.skipped += 1;
            if self.skipped < Self::RETRY {
                return false;
            }
        }
        self.skipped = 0;
        true
    }

    /// A look found something, or not.
    fn found(&mut self, found: bool) {
        self.score = if found {
            (self.score + 1).min(Self::MAX)
        } else {
            self.score.saturating_sub(Self::MISS)
        };
    }
}

impl Default for Looks {
    fn default() -> Looks {
        Looks {
            score: Looks::MAX,
            skipped: 0,
        }
    }
}

/// Looks (without sleeping) until either descriptor is readable, for `spin` at most; whether
/// one is.
fn spin_two(a: i32, b: i32, spin: Duration) -> bool {
    let until = Instant::now() + spin;
    loop {
        if poll_fds(a, b, 0) > 0 {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::hint::spin_loop();
    }
}

/// Waits until either descriptor is readable or `timeout` passes.
fn poll_two(a: i32, b: i32, timeout: Option<Duration>) {
    // Rounded up, so that a deadline is never woken for a millisecond early and spun on.
    let ms = timeout.map_or(-1, |t| {
        t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
    });
    poll_fds(a, b, ms);
}

/// poll(2) on `a` and `b` for reading, for `ms` (-1: no limit); how many are readable.
fn poll_fds(a: i32, b: i32, ms: i32) -> i32 {
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
    // SAFETY: `fds` is a valid array of two pollfd for the duration of the call.
    unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) }
}

#[cfg(test)]
mod tests {
    use super::Looks;

    /// How many of `chances` a pool whose looks find something `hits` times in `of` takes.
    fn taken(hits: u32, of: u32, chances: u32) -> u32 {
        let mut looks = Looks::default();
        let mut taken = 0;
        for i in 0..chances {
            if looks.take() {
                taken += 1;
                looks.found(i % of < hits);
            }
        }
        taken
    }

    #[test]
    fn looks_are_taken_while_they_pay_and_rarely_once_they_do_not() {
        // An idle pool's tasks taken in turn: nearly every look finds the answer.
        assert_eq!(taken(97, 100, 10_000), 10_000);
        // A busy pool's: one in three. After the first few, one chance in RETRY.
        let busy = taken(1, 3, 9_600);
        assert!(busy <= 9_600 / Looks::RETRY + 10, "{busy}");
        assert!(
            busy >= 9_600 / Looks::RETRY / 2,
            "{busy}: it stops looking for good"
        );
        // Looks that pay again are taken again.
        let mut looks = Looks::default();
        let mut missed = 0;
        while looks.take() {
            looks.found(false);
            missed += 1;
            assert!(missed < 100, "looking on after misses");
        }
        // From the highest score to below half of it.
        assert_eq!(missed, (Looks::MAX - Looks::MAX / 2) / Looks::MISS + 1);
        // One chance in RETRY: that one declined, and RETRY - 2 more, then one taken.
        let mut declined = 1;
        while !looks.take() {
            declined += 1;
        }
        assert_eq!(declined, Looks::RETRY - 1);
        for _ in 0..Looks::MAX {
            looks.found(true);
        }
        assert!(
            looks.take() && looks.take(),
            "looks that pay again are taken at each chance"
        );
    }
}
