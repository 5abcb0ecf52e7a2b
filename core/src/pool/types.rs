//! What a pool is configured with and what it reports.

use std::ffi::OsString;
use std::fmt;
use std::time::Duration;

use crate::config::{Config, ReadyOn};
use crate::error::{Error, Result};

/// What `submit` does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenFull {
    /// Fail with `Error::TaskQueueFull` at once.
    Reject,
    /// Block the submitting thread until a task leaves the queue.
    Wait,
}

/// A pool's settings. `cluster` is the supervisor's configuration (the worker command, its
/// environment, the restart policy, `workers`); the rest is the pool's own.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub cluster: Config,
    /// Tasks one worker runs at once. A worker also holds a few more, sent ahead, that it
    /// starts as soon as one of these is answered (see `docs/protocol.md` 5.8).
    pub concurrent_tasks_per_worker: usize,
    /// Most tasks sent to one worker ahead of the ones it runs, so that it starts the next one
    /// without waiting a round trip (fewer when tasks take long: about 1 ms of work). 0: none,
    /// every task waits in the pool until a worker has room. A task cancelled while it waits
    /// in a worker fails at once and the worker is not killed, but the worker may still run
    /// it (its answer is then dropped): set 0 where a cancelled task must never run.
    pub max_tasks_ahead: usize,
    /// Most tasks waiting in the queue (not counting those given to workers).
    pub max_queue: usize,
    pub when_full: WhenFull,
    /// A task that runs longer than this (from when its worker started it) fails with
    /// `TaskError::Timeout`, and its worker is killed and replaced. None: no limit. A task's
    /// own `TaskOptions::timeout` wins.
    pub task_timeout: Option<Duration>,
    /// A worker that has answered this many tasks gets no more and is replaced once its last
    /// one is answered. None: workers are kept.
    pub max_tasks_per_worker: Option<u64>,
    /// A worker whose resident memory is above this many bytes after it answered a task is
    /// replaced as after `max_tasks_per_worker` (looked at after an answer, at most every
    /// 100 ms per worker). None: no limit.
    pub max_worker_memory: Option<u64>,
}

impl PoolConfig {
    /// A pool of `argv` workers with defaults: one worker, one task per worker at a time, a
    /// queue of 100,000 that rejects when full, up to 32 tasks sent ahead to a worker, no timeout, no recycling. Workers say when
    /// they are ready (after their task code loaded), and a worker that exits with
    /// `BOOT_FAILED_EXIT` is not restarted.
    pub fn new<I, S>(argv: I) -> PoolConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut cluster = Config::new(argv);
        cluster.ready_on = ReadyOn::Explicit;
        cluster
            .restart
            .no_restart_codes
            .push(super::BOOT_FAILED_EXIT);
        PoolConfig {
            cluster,
            concurrent_tasks_per_worker: 1,
            max_tasks_ahead: 32,
            max_queue: 100_000,
            when_full: WhenFull::Reject,
            task_timeout: None,
            max_tasks_per_worker: None,
            max_worker_memory: None,
        }
    }

    pub(super) fn validate(&self) -> Result<()> {
        if !(1..=4096).contains(&self.concurrent_tasks_per_worker) {
            return Err(Error::config(
                "concurrent_tasks_per_worker",
                self.concurrent_tasks_per_worker,
                "must be 1..=4096",
            ));
        }
        if self.max_tasks_ahead > 4096 {
            return Err(Error::config(
                "max_tasks_ahead",
                self.max_tasks_ahead,
                "must be 0..=4096",
            ));
        }
        if self.max_queue == 0 {
            return Err(Error::config(
                "max_queue",
                self.max_queue,
                "must be at least 1",
            ));
        }
        if self.max_tasks_per_worker == Some(0) {
            return Err(Error::config(
                "max_tasks_per_worker",
                0,
                "must be at least 1 (or unset)",
            ));
        }
        if self.max_worker_memory == Some(0) {
            return Err(Error::config(
                "max_worker_memory",
                0,
                "must be at least 1 byte (or unset)",
            ));
        }
        if self.task_timeout == Some(Duration::ZERO) {
            return Err(Error::config(
                "task_timeout",
                Duration::ZERO,
                "must be more than zero (or unset)",
            ));
        }
        Ok(())
    }
}

/// How one task is to be run.
#[derive(Debug, Clone, Default)]
pub struct TaskOptions {
    /// The function to run ("" for the worker's default), at most `MAX_NAME` bytes.
    pub name: String,
    /// How the payload is encoded (`CONTENT_*`); the core passes it on.
    pub content: u8,
    /// This task's own timeout, instead of the pool's `task_timeout`.
    pub timeout: Option<Duration>,
    /// The task may run twice: when its worker dies under it because of another task (a crash,
    /// a timeout, a cancel), it is queued again (first) instead of failing.
    pub idempotent: bool,
}

/// A task's value, encoded as `content` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    pub content: u8,
    pub payload: Vec<u8>,
}

/// Why a task failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskError {
    /// The task raised an error; `payload` is the error as the worker encoded it.
    Failed { content: u8, payload: Vec<u8> },
    /// The task's worker ended while it ran: exit `code` or `signal`. `cause` says why when the
    /// pool killed it for another task (a timeout or a cancel).
    Crashed {
        worker: u32,
        pid: u32,
        code: Option<i32>,
        signal: Option<i32>,
        cause: Option<String>,
    },
    /// The task ran longer than its timeout; its worker was killed and replaced.
    Timeout { after: Duration },
    /// The task was cancelled (queued: it never ran; running: its worker was killed).
    Cancelled,
    /// The pool stopped before the task ended.
    Shutdown,
    /// No worker can run tasks: every one stopped for good (`detail` says why, e.g. the
    /// task code of the worker failed to load).
    NoWorkers(String),
}

impl TaskError {
    /// A short, stable name of the reason, the same in every binding and in `PoolStats`.
    pub fn reason(&self) -> &'static str {
        match self {
            TaskError::Failed { .. } => "error",
            TaskError::Crashed { .. } => "crashed",
            TaskError::Timeout { .. } => "timeout",
            TaskError::Cancelled => "cancelled",
            TaskError::Shutdown => "shutdown",
            TaskError::NoWorkers(_) => "no_workers",
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Failed { payload, .. } => write!(
                f,
                "the task raised an error ({} bytes of error payload)",
                payload.len()
            ),
            TaskError::Crashed {
                worker,
                pid,
                code,
                signal,
                cause,
            } => {
                write!(
                    f,
                    "worker {worker} (pid {pid}) ended while running the task: "
                )?;
                match (signal, code) {
                    (Some(s), _) => write!(f, "killed by signal {} ({s})", signal_name(*s))?,
                    (None, Some(c)) => write!(f, "exit code {c}")?,
                    (None, None) => write!(f, "unknown status")?,
                }
                match cause {
                    Some(c) => write!(f, " ({c})"),
                    None => Ok(()),
                }
            }
            TaskError::Timeout { after } => {
                write!(f, "the task timed out after {} ms", after.as_millis())
            }
            TaskError::Cancelled => write!(f, "the task was cancelled"),
            TaskError::Shutdown => write!(f, "the pool stopped before the task ended"),
            TaskError::NoWorkers(d) => write!(f, "no worker can run tasks: {d}"),
        }
    }
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub id: u64,
    pub result: std::result::Result<Value, TaskError>,
    /// Time until its worker started it: in the queue, and waiting in the worker.
    pub wait: Duration,
    /// Time from when its worker started it to its answer (zero if it never ran).
    pub run: Duration,
}

impl Outcome {
    pub(super) fn failed(id: u64, e: TaskError, wait: Duration, run: Duration) -> Outcome {
        Outcome {
            id,
            result: Err(e),
            wait,
            run,
        }
    }
}

/// A pool's counters, as of one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Tasks waiting in the queue.
    pub queued: usize,
    /// Tasks given to a worker and not answered yet (running, or sent ahead and waiting in
    /// the worker).
    pub running: usize,
    /// Tasks answered with a value.
    pub completed: u64,
    /// Tasks failed, by reason (`TaskError::reason`): error, crashed, timeout, cancelled,
    /// shutdown, no_workers.
    pub failed_error: u64,
    pub failed_crashed: u64,
    pub failed_timeout: u64,
    pub failed_cancelled: u64,
    pub failed_shutdown: u64,
    pub failed_no_workers: u64,
    /// Tasks run again after their worker died under them (idempotent ones).
    pub retried: u64,
    /// Tasks that waited in a worker (sent ahead of its running ones) that ended before they
    /// started, and were given to another: not attempts, and not failures.
    pub requeued: u64,
    /// Workers replaced after `max_tasks_per_worker`.
    pub recycled: u64,
    /// Workers ready for tasks now.
    pub workers_ready: usize,
    /// Total and longest time tasks spent in the queue, and running (tasks that ran).
    pub wait_total: Duration,
    pub wait_max: Duration,
    pub run_total: Duration,
    pub run_max: Duration,
}

impl PoolStats {
    /// Tasks failed for any reason.
    pub fn failed(&self) -> u64 {
        self.failed_error
            + self.failed_crashed
            + self.failed_timeout
            + self.failed_cancelled
            + self.failed_shutdown
            + self.failed_no_workers
    }

    pub(super) fn count(&mut self, o: &Outcome) {
        self.wait_total += o.wait;
        self.wait_max = self.wait_max.max(o.wait);
        self.run_total += o.run;
        self.run_max = self.run_max.max(o.run);
        let n = match &o.result {
            Ok(_) => &mut self.completed,
            Err(TaskError::Failed { .. }) => &mut self.failed_error,
            Err(TaskError::Crashed { .. }) => &mut self.failed_crashed,
            Err(TaskError::Timeout { .. }) => &mut self.failed_timeout,
            Err(TaskError::Cancelled) => &mut self.failed_cancelled,
            Err(TaskError::Shutdown) => &mut self.failed_shutdown,
            Err(TaskError::NoWorkers(_)) => &mut self.failed_no_workers,
        };
        *n += 1;
    }
}

impl From<PoolStats> for crate::primary::status::PoolStatus {
    fn from(s: PoolStats) -> Self {
        let failed = s.failed();
        let reasons = [
            ("error", s.failed_error),
            ("crashed", s.failed_crashed),
            ("timeout", s.failed_timeout),
            ("cancelled", s.failed_cancelled),
            ("shutdown", s.failed_shutdown),
            ("no_workers", s.failed_no_workers),
        ];
        crate::primary::status::PoolStatus {
            queued: s.queued,
            running: s.running,
            completed: s.completed,
            failed,
            failed_by_reason: reasons.iter().map(|&(k, n)| (k.to_string(), n)).collect(),
            retried: s.retried,
            requeued: s.requeued,
            recycled: s.recycled,
            workers_ready: s.workers_ready,
            wait_total_s: s.wait_total.as_secs_f64(),
            wait_max_s: s.wait_max.as_secs_f64(),
            run_total_s: s.run_total.as_secs_f64(),
            run_max_s: s.run_max.as_secs_f64(),
        }
    }
}

/// The name of a signal that ends processes, for messages ("SIGSEGV").
pub fn signal_name(signo: i32) -> &'static str {
    match signo {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGKILL => "SIGKILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGILL => "SIGILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGXCPU => "SIGXCPU",
        _ => "signal",
    }
}
