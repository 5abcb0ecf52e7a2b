//! Task pools: a supervisor whose workers run tasks.
//!
//! The host submits tasks (a payload, an optional function name) to a bounded queue; one
//! scheduler thread gives each to the least busy ready worker as a `Task` frame, many per
//! write, reads the `TaskDone` answers, many per read, and hands every task's [`Outcome`] to
//! the host through a bounded queue with a readable descriptor, as the supervisor does with
//! its events. Workers are processes supervised by a [`Supervisor`] (restart policy, backoff),
//! so a task that crashes its worker fails alone, with the exit code or signal, and the pool
//! carries on. Worker side: [`crate::Worker`] yields [`crate::WorkerEvent::Task`] and answers
//! with [`crate::Worker::answer`]; a worker that holds tasks before it starts them also
//! follows [`crate::WorkerEvent::TaskCancelled`].

mod answers;
mod dispatch;
mod ending;
mod recycle;
mod sched;
mod shared;
mod types;

use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::primary::supervisor::Supervisor;
use sched::Sched;
use shared::{Pending, Shared};

pub use crate::wire::task::{CONTENT_JSON, CONTENT_PICKLE, CONTENT_RAW, CONTENT_V8, MAX_NAME};
pub use types::{
    signal_name, Outcome, PoolConfig, PoolStats, TaskError, TaskOptions, Value, WhenFull,
};

/// The exit code of a pool worker that cannot run tasks (its task code fails to load): it is
/// in the pool's `no_restart_codes`, so such a worker is not restarted in a loop.
pub const BOOT_FAILED_EXIT: i32 = 3;

/// The environment variable that tells a pool's workers how many tasks they may run at once
/// (`concurrent_tasks_per_worker`); tasks beyond that wait in the worker, in order.
pub const TASK_CONCURRENCY_ENV: &str = "RCLUSTER_TASK_CONCURRENCY";

/// A running pool. `Send + Sync`: submit from any thread.
pub struct Pool {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    kill_timeout: Duration,
}

impl Pool {
    /// Validates `config`, starts the workers and the scheduler. Tasks may be submitted at
    /// once; they wait in the queue until a worker is ready.
    pub fn start(mut config: PoolConfig) -> Result<Pool> {
        config.validate()?;
        // Workers hold tasks sent ahead of those they run: this says how many they may run at
        // once (`docs/protocol.md` 5.8).
        config.cluster.env.push((
            TASK_CONCURRENCY_ENV.into(),
            config.concurrent_tasks_per_worker.to_string().into(),
        ));
        let kill_timeout = config.cluster.kill_timeout;
        let shared = Arc::new(Shared::new(&config)?);
        let sup = Supervisor::start(config.cluster.clone())?;
        let counters = Arc::clone(&shared);
        sup.set_pool_status(Box::new(move || counters.stats().into()));
        let sched = Sched::new(sup, Arc::clone(&shared), &config);
        let on_panic = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("rcluster-pool".into())
            .spawn(move || {
                // A bug in the scheduler must not leave the host waiting for outcomes forever:
                // the pool ends, and says why (its supervisor, dropped with it, stops).
                let run = std::panic::AssertUnwindSafe(move || sched.run());
                if std::panic::catch_unwind(run).is_err() {
                    on_panic.end_after_panic();
                }
            })
            .map_err(|e| Error::io("spawning the pool thread", e))?;
        Ok(Pool {
            shared,
            thread: Mutex::new(Some(thread)),
            kill_timeout,
        })
    }

    /// Queues a task; returns its id (never 0). When the queue holds `max_queue` tasks this
    /// fails with `TaskQueueFull` (`WhenFull::Reject`) or waits for room (`WhenFull::Wait`).
    pub fn submit(&self, payload: Vec<u8>, options: TaskOptions) -> Result<u64> {
        self.push(payload, options, self.shared.when_full == WhenFull::Wait)
    }

    /// Queues a task, or fails with `TaskQueueFull` at once when the queue is full, whatever
    /// `when_full` says.
    pub fn try_submit(&self, payload: Vec<u8>, options: TaskOptions) -> Result<u64> {
        self.push(payload, options, false)
    }

    /// Queues as many of `tasks` as the queue has room for, in order, under one lock and with
    /// one wake-up of the scheduler; returns their ids (fewer than `tasks` when the queue
    /// filled up: the rest were not queued). Never waits for room. Fails, queuing none, when
    /// the pool is stopped or broken, or a name is too long.
    pub fn submit_batch(
        &self,
        tasks: impl IntoIterator<Item = (Vec<u8>, TaskOptions)>,
    ) -> Result<Vec<u64>> {
        let tasks: Vec<(Vec<u8>, TaskOptions)> = tasks.into_iter().collect();
        if let Some((_, o)) = tasks.iter().find(|(_, o)| o.name.len() > MAX_NAME) {
            return Err(Error::config(
                "name",
                &o.name,
                format!("a task name has at most {MAX_NAME} bytes"),
            ));
        }
        let s = &*self.shared;
        let mut inner = s.inner.lock().unwrap();
        if let Some(why) = &inner.broken {
            return Err(Error::PoolBroken(why.clone()));
        }
        if inner.closing.is_some() {
            return Err(Error::Stopped);
        }
        let room = s.max_queue.saturating_sub(inner.queue.len());
        let was_empty = inner.queue.is_empty();
        let now = Instant::now();
        let mut ids = Vec::with_capacity(tasks.len().min(room));
        for (payload, options) in tasks.into_iter().take(room) {
            let id = s.next_id.fetch_add(1, Ordering::Relaxed);
            inner.queue.push_back(Pending {
                id,
                payload,
                options,
                queued_at: now,
                tries: 0,
            });
            ids.push(id);
        }
        drop(inner);
        if was_empty && !ids.is_empty() {
            s.wake.wake();
        }
        Ok(ids)
    }

    fn push(&self, payload: Vec<u8>, options: TaskOptions, wait: bool) -> Result<u64> {
        if options.name.len() > MAX_NAME {
            return Err(Error::config(
                "name",
                &options.name,
                format!("a task name has at most {MAX_NAME} bytes"),
            ));
        }
        let s = &*self.shared;
        let mut inner = s.inner.lock().unwrap();
        loop {
            if let Some(why) = &inner.broken {
                return Err(Error::PoolBroken(why.clone()));
            }
            if inner.closing.is_some() {
                return Err(Error::Stopped);
            }
            if inner.queue.len() < s.max_queue {
                break;
            }
            if !wait {
                return Err(Error::TaskQueueFull { limit: s.max_queue });
            }
            inner = s.room.wait(inner).unwrap();
        }
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        let was_empty = inner.queue.is_empty();
        inner.queue.push_back(Pending {
            id,
            payload,
            options,
            queued_at: Instant::now(),
            tries: 0,
        });
        drop(inner);
        // The scheduler looks at the whole queue whenever it wakes: one wake-up for a burst.
        if was_empty {
            s.wake.wake();
        }
        Ok(id)
    }

    /// Cancels task `id`: a queued task is removed and fails with `Cancelled` at once; one
    /// that waits in a worker (sent ahead) fails with `Cancelled` at once and that worker is
    /// told to drop it; a running one fails with `Cancelled` and its worker is killed and
    /// replaced (other tasks on that worker fail as crashed, or run again when idempotent). Returns false when the
    /// task is not queued and may have finished (the scheduler then ignores the request).
    pub fn cancel(&self, id: u64) -> bool {
        let s = &*self.shared;
        let mut inner = s.inner.lock().unwrap();
        if let Some(at) = inner.queue.iter().position(|p| p.id == id) {
            let p = inner.queue.remove(at).expect("position is in the queue");
            let wait = p.queued_at.elapsed();
            inner.finish(Outcome::failed(
                p.id,
                TaskError::Cancelled,
                wait,
                Duration::ZERO,
            ));
            drop(inner);
            s.room.notify_one();
            s.outcome_ready();
            return true;
        }
        inner.cancels.push(id);
        drop(inner);
        s.wake.wake();
        false
    }

    /// Waits up to `timeout` (forever if None) for the next outcome. None on timeout, or once
    /// the pool has stopped and every outcome was taken.
    pub fn next_outcome(&self, timeout: Option<Duration>) -> Option<Outcome> {
        self.shared.next_outcome(timeout)
    }

    /// Takes up to `max` outcomes that are waiting now, without blocking.
    pub fn take_outcomes(&self, max: usize, out: &mut Vec<Outcome>) -> usize {
        self.shared.take_outcomes(max, out)
    }

    /// A descriptor that is readable while outcomes may be waiting (for a host loop): wait on
    /// it, then call `take_outcomes` until it returns 0.
    pub fn outcome_fd(&self) -> RawFd {
        self.shared.outcomes_fd.raw()
    }

    /// Counters and the queue's length, as of now.
    pub fn stats(&self) -> PoolStats {
        self.shared.stats()
    }

    /// Takes no more tasks; queued ones fail with `Shutdown` when `cancel_queued`, or run.
    /// Then waits up to `timeout` for what runs, stops the workers (those still busy are
    /// killed after the cluster's `kill_timeout`; their tasks fail with `Shutdown`), and
    /// returns once every worker is reaped. Outcomes stay readable after it.
    pub fn stop(&self, cancel_queued: bool, timeout: Duration) -> Result<()> {
        self.shared.close(cancel_queued, Instant::now() + timeout);
        let thread = self.thread.lock().unwrap().take();
        if let Some(t) = thread {
            t.join()
                .map_err(|_| Error::io("pool thread", std::io::Error::other("it panicked")))?;
        }
        Ok(())
    }

    /// True once `stop` ended the pool, or every worker stopped for good (`PoolBroken`).
    pub fn is_stopped(&self) -> bool {
        self.shared.ended.load(Ordering::Acquire)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = self.stop(true, self.kill_timeout);
    }
}
