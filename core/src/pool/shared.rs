//! What the pool's handle (host threads) and its scheduler thread share: the queue, the
//! cancellations, the outcomes and the counters, under one lock, and two descriptors: one
//! wakes the scheduler, the other is readable while outcomes wait for the host.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::types::{Outcome, PoolConfig, PoolStats, TaskOptions, WhenFull};
use crate::error::{Error, Result};
use crate::sys::EventFd;

/// A task in the queue.
pub(super) struct Pending {
    pub id: u64,
    pub payload: Vec<u8>,
    pub options: TaskOptions,
    pub queued_at: Instant,
    /// Times it was given to a worker: an idempotent task runs twice at most, so that a task
    /// that itself crashes its worker cannot go round the workers forever.
    pub tries: u32,
}

/// A stop that was asked for.
#[derive(Clone, Copy)]
pub(super) struct Closing {
    pub cancel_queued: bool,
    /// After this, what still runs is ended.
    pub deadline: Instant,
}

pub(super) struct Inner {
    pub queue: VecDeque<Pending>,
    /// Running tasks the host asked to cancel (queued ones are removed by the host itself).
    pub cancels: Vec<u64>,
    pub outcomes: VecDeque<Outcome>,
    pub closing: Option<Closing>,
    /// Why no task can run any more (every worker stopped for good).
    pub broken: Option<String>,
    pub stats: PoolStats,
}

impl Inner {
    /// Records a task's end for the host.
    pub fn finish(&mut self, o: Outcome) {
        self.stats.count(&o);
        self.outcomes.push_back(o);
    }
}

/// Wakes a thread blocked on a descriptor; one write for a burst of wake-ups.
pub(super) struct Wake {
    fd: EventFd,
    pending: AtomicBool,
}

impl Wake {
    fn new() -> std::io::Result<Wake> {
        Ok(Wake {
            fd: EventFd::new()?,
            pending: AtomicBool::new(false),
        })
    }

    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.fd.notify();
        }
    }

    /// The woken side: clears the descriptor, then the flag (the other order could lose a
    /// wake-up that comes between them).
    pub fn take(&self) {
        self.fd.clear();
        self.pending.store(false, Ordering::Release);
    }

    pub fn raw(&self) -> std::os::fd::RawFd {
        self.fd.raw()
    }
}

pub(super) struct Shared {
    pub inner: Mutex<Inner>,
    /// Signalled when a task leaves the queue (for `WhenFull::Wait`) or the pool closes.
    pub room: Condvar,
    /// Signalled when outcomes arrive or the pool ends.
    pub arrived: Condvar,
    /// Wakes the scheduler.
    pub wake: Wake,
    /// Readable while outcomes may be waiting.
    pub outcomes_fd: EventFd,
    pub next_id: AtomicU64,
    pub max_queue: usize,
    pub when_full: WhenFull,
    /// Outcomes the host has not taken, at most: beyond, the scheduler gives workers no more
    /// tasks until the host takes some (so memory stays bounded when it does not read).
    pub outcome_limit: usize,
    /// The scheduler stopped giving out tasks for want of room for their outcomes.
    pub held: AtomicBool,
    pub ended: AtomicBool,
}

impl Shared {
    pub fn new(cfg: &PoolConfig) -> Result<Shared> {
        let fd = |e| Error::io("eventfd", e);
        let slots = cfg.cluster.workers * cfg.concurrent_tasks_per_worker;
        Ok(Shared {
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                cancels: Vec::new(),
                outcomes: VecDeque::new(),
                closing: None,
                broken: None,
                stats: PoolStats::default(),
            }),
            room: Condvar::new(),
            arrived: Condvar::new(),
            wake: Wake::new().map_err(fd)?,
            outcomes_fd: EventFd::new().map_err(fd)?,
            next_id: AtomicU64::new(1),
            max_queue: cfg.max_queue,
            when_full: cfg.when_full,
            outcome_limit: cfg.max_queue.max(slots).max(1024),
            held: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        })
    }

    /// Outcomes were pushed: wake whoever waits for them.
    pub fn outcome_ready(&self) {
        self.outcomes_fd.notify();
        self.arrived.notify_all();
    }

    pub fn close(&self, cancel_queued: bool, deadline: Instant) {
        let mut inner = self.inner.lock().unwrap();
        let c = inner.closing.get_or_insert(Closing {
            cancel_queued,
            deadline,
        });
        c.cancel_queued |= cancel_queued;
        c.deadline = c.deadline.min(deadline);
        drop(inner);
        self.room.notify_all();
        self.wake.wake();
    }

    /// The scheduler panicked: nothing more will end, so the pool ends now.
    pub fn end_after_panic(&self) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.broken = Some("the pool's scheduler failed (a bug in rcluster)".into());
        drop(inner);
        self.ended.store(true, Ordering::Release);
        self.outcome_ready();
        self.room.notify_all();
    }

    pub fn take_outcomes(&self, max: usize, out: &mut Vec<Outcome>) -> usize {
        let mut inner = self.inner.lock().unwrap();
        let n = inner.outcomes.len().min(max);
        out.extend(inner.outcomes.drain(..n));
        if inner.outcomes.is_empty() {
            // Cleared under the lock that pushes: an outcome pushed after this notifies again.
            self.outcomes_fd.clear();
        }
        let low = inner.outcomes.len() <= self.outcome_limit / 2;
        drop(inner);
        if n > 0 && low && self.held.swap(false, Ordering::AcqRel) {
            self.wake.wake();
        }
        n
    }

    pub fn next_outcome(&self, timeout: Option<Duration>) -> Option<Outcome> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut inner = self.inner.lock().unwrap();
        loop {
            if !inner.outcomes.is_empty() {
                drop(inner);
                let mut one = Vec::with_capacity(1);
                self.take_outcomes(1, &mut one);
                if let Some(o) = one.pop() {
                    return Some(o);
                }
                inner = self.inner.lock().unwrap();
                continue;
            }
            if self.ended.load(Ordering::Acquire) {
                return None;
            }
            inner = match deadline {
                None => self.arrived.wait(inner).unwrap(),
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    self.arrived.wait_timeout(inner, left).unwrap().0
                }
            };
        }
    }

    pub fn stats(&self) -> PoolStats {
        let inner = self.inner.lock().unwrap();
        let mut s = inner.stats.clone();
        s.queued = inner.queue.len();
        s
    }
}
