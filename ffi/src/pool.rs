//! `rcluster_pool`: a pool of worker processes that run tasks (the core's `pool::Pool`).
//! Workers are C programs (or any) that take tasks with `rcluster_worker_next_event` (kind
//! `TASK`) and answer them with `rcluster_worker_answer`.

use std::ffi::{c_char, c_int, CString};
use std::time::Duration;

use rcluster_core::pool::{Outcome, Pool, PoolConfig, TaskError, TaskOptions, WhenFull};

use crate::args::{self, handle};
use crate::config::rcluster_config;
use crate::event::c_text;
use crate::result::{guard, guard_void, rcluster_result, Fail, Res};

/// A running pool (opaque). Made by `rcluster_pool_start`, released by `rcluster_pool_free`.
/// Thread-safe: every function may be called from any thread.
pub struct rcluster_pool {
    inner: Pool,
}

/// A pool's own settings; a zero field keeps the default.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct rcluster_pool_options {
    /// Tasks one worker holds at once (default 1). More lets small tasks travel in batches,
    /// but a worker that crashes takes the tasks it holds with it.
    pub concurrent_tasks_per_worker: u32,
    /// Most tasks waiting in the queue (default 100000).
    pub max_queue: u64,
    /// When the queue is full: false, `rcluster_pool_submit` fails with `QUEUE_FULL`; true, it
    /// blocks until there is room.
    pub wait_when_full: bool,
    /// A task running longer fails with `TIMEOUT` and its worker is killed and replaced
    /// (0: no limit).
    pub task_timeout_ms: u64,
    /// A worker that answered this many tasks is replaced (0: never).
    pub max_tasks_per_worker: u64,
    /// A worker whose resident memory is above this many bytes after a task is replaced
    /// (0: no limit).
    pub max_worker_memory: u64,
    /// Most tasks sent to a worker ahead of those it runs, so that it starts the next one
    /// without waiting for the primary (0: the default, 32; `RCLUSTER_NO_TASKS_AHEAD`: none,
    /// every task waits in the pool until a worker has room to run it). A task cancelled
    /// while it waits in a worker is dropped there (`RCLUSTER_WORKER_EVENT_KIND_TASK_CANCELLED`
    /// for a worker that holds tasks itself).
    pub max_tasks_ahead: u32,
}

/// `rcluster_pool_options.max_tasks_ahead`: no task is sent ahead.
pub const RCLUSTER_NO_TASKS_AHEAD: u32 = u32::MAX;

/// How a task ended.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rcluster_outcome_status {
    /// The task's value: `data`, `len`, `content`.
    Value = 0,
    /// The task raised an error: `data`, `len`, `content` are the error as the worker sent it.
    Error = 1,
    /// Its worker ended under it: `exit_code` or `signal`; `message` says which.
    Crashed = 2,
    /// It ran longer than its timeout; its worker was killed and replaced.
    Timeout = 3,
    /// It was cancelled (`rcluster_pool_cancel`).
    Cancelled = 4,
    /// The pool stopped before it ended.
    Shutdown = 5,
    /// No worker can run tasks (every one stopped for good); `message` says why.
    NoWorkers = 6,
}

/// One task's end. Read-only; `data` and `message` belong to it and stay valid until
/// `rcluster_outcome_free`.
#[repr(C)]
pub struct rcluster_outcome {
    /// The id `rcluster_pool_submit` returned.
    pub id: u64,
    pub status: rcluster_outcome_status,
    /// VALUE and ERROR: the payload's content type (an `RCLUSTER_CONTENT_*` number), its
    /// bytes and length; NULL and 0 otherwise.
    pub content: u8,
    pub data: *const u8,
    pub len: usize,
    /// CRASHED: the worker's exit code, or -1 when a signal ended it.
    pub exit_code: c_int,
    /// CRASHED: the signal that ended the worker, or 0.
    pub signal: c_int,
    /// Every status but VALUE: what happened, as text; NULL for VALUE.
    pub message: *const c_char,
    /// Microseconds in the queue, and running (0 when it never ran).
    pub wait_us: u64,
    pub run_us: u64,
}

#[repr(C)]
struct OwnedOutcome {
    view: rcluster_outcome,
    data: Vec<u8>,
    message: Option<CString>,
}

/// A pool's counters (see `rcluster_pool_stats`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct rcluster_pool_counters {
    pub queued: u64,
    pub running: u64,
    pub completed: u64,
    pub failed_error: u64,
    pub failed_crashed: u64,
    pub failed_timeout: u64,
    pub failed_cancelled: u64,
    pub failed_shutdown: u64,
    pub failed_no_workers: u64,
    pub retried: u64,
    pub recycled: u64,
    pub workers_ready: u64,
    /// Microseconds.
    pub wait_total_us: u64,
    pub wait_max_us: u64,
    pub run_total_us: u64,
    pub run_max_us: u64,
    /// Tasks that waited in a worker that ended, and were given to another (not an attempt:
    /// they had not started). Last, so that the fields before it keep their places.
    pub requeued: u64,
}

fn pool_ref<'a>(p: *const rcluster_pool) -> Res<&'a Pool> {
    // SAFETY: every export documents that `p` is NULL or a live pool.
    Ok(&unsafe { handle(p, "pool") }?.inner)
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

fn into_c(o: Outcome) -> *mut rcluster_outcome {
    use rcluster_outcome_status as S;
    let mut view = rcluster_outcome {
        id: o.id,
        status: S::Value,
        content: 0,
        data: std::ptr::null(),
        len: 0,
        exit_code: -1,
        signal: 0,
        message: std::ptr::null(),
        wait_us: micros(o.wait),
        run_us: micros(o.run),
    };
    let (data, message) = match o.result {
        Ok(v) => {
            view.content = v.content;
            (v.payload, None)
        }
        Err(e) => {
            let text = c_text(&e.to_string());
            view.status = match &e {
                TaskError::Failed { .. } => S::Error,
                TaskError::Crashed { code, signal, .. } => {
                    view.exit_code = code.unwrap_or(-1);
                    view.signal = signal.unwrap_or(0);
                    S::Crashed
                }
                TaskError::Timeout { .. } => S::Timeout,
                TaskError::Cancelled => S::Cancelled,
                TaskError::Shutdown => S::Shutdown,
                TaskError::NoWorkers(_) => S::NoWorkers,
            };
            match e {
                TaskError::Failed { content, payload } => {
                    view.content = content;
                    (payload, Some(text))
                }
                _ => (Vec::new(), Some(text)),
            }
        }
    };
    let mut owned = Box::new(OwnedOutcome {
        view,
        data,
        message,
    });
    // The heap buffers do not move with the Box, so these pointers stay valid.
    if matches!(owned.view.status, S::Value | S::Error) {
        owned.view.data = owned.data.as_ptr();
        owned.view.len = owned.data.len();
    }
    owned.view.message = owned
        .message
        .as_ref()
        .map_or(std::ptr::null(), |m| m.as_ptr());
    Box::into_raw(owned).cast()
}

/// Starts a pool of the workers `cfg` describes (its `workers`, command, environment and
/// restart policy), with `opts` (NULL: every default). Workers must say ready
/// (`rcluster_worker_ready`) once they can run tasks; one that cannot should call
/// `rcluster_worker_boot_failed` and exit with code 3, which the pool does not restart.
/// `cfg` is copied. Errors: `CONFIG`, `SPAWN`, `IO`.
///
/// # Safety
/// `cfg` is NULL or a live config; `opts` is NULL or readable; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_pool_start(
    cfg: *const rcluster_config,
    opts: *const rcluster_pool_options,
    out: *mut *mut rcluster_pool,
) -> rcluster_result {
    guard("rcluster_pool_start", || {
        // SAFETY: the caller passes a handle this library returned and has not freed, or NULL,
        // which `handle` refuses.
        let cfg = unsafe { handle(cfg, "cfg") }?;
        let out = args::out(out, "out")?;
        let o = if opts.is_null() {
            rcluster_pool_options::default()
        } else {
            // SAFETY: non-null, and the caller promises it points to readable options.
            unsafe { *opts }
        };
        let mut c = PoolConfig::new(["unused"]);
        let defaults = c.cluster.clone();
        c.cluster = cfg.inner.clone();
        c.cluster.ready_on = defaults.ready_on;
        c.cluster
            .restart
            .no_restart_codes
            .push(rcluster_core::pool::BOOT_FAILED_EXIT);
        if o.concurrent_tasks_per_worker != 0 {
            c.concurrent_tasks_per_worker = o.concurrent_tasks_per_worker as usize;
        }
        if o.max_queue != 0 {
            c.max_queue = usize::try_from(o.max_queue).unwrap_or(usize::MAX);
        }
        if o.wait_when_full {
            c.when_full = WhenFull::Wait;
        }
        if o.task_timeout_ms != 0 {
            c.task_timeout = Some(args::millis(o.task_timeout_ms, "task_timeout_ms", false)?);
        }
        if o.max_tasks_per_worker != 0 {
            c.max_tasks_per_worker = Some(o.max_tasks_per_worker);
        }
        if o.max_worker_memory != 0 {
            c.max_worker_memory = Some(o.max_worker_memory);
        }
        match o.max_tasks_ahead {
            0 => {}
            RCLUSTER_NO_TASKS_AHEAD => c.max_tasks_ahead = 0,
            n => c.max_tasks_ahead = n as usize,
        }
        let inner = Pool::start(c)?;
        // SAFETY: `out` is non-null (checked above) and the caller promises it points to writable
        // memory for one value.
        unsafe { args::put(out, Box::into_raw(Box::new(rcluster_pool { inner }))) };
        Ok(())
    })
}

/// Queues a task: `name` (NULL or "": the worker's default function), the payload `data` of
/// `len` bytes with content type `content`, its own timeout (`timeout_ms`, 0: the pool's),
/// and whether it may run twice (`idempotent`). On success `*out_id` is its id (never 0).
/// `QUEUE_FULL` when the queue is full (unless the pool waits for room), `STOPPED` after
/// `rcluster_pool_stop`, or when no worker can run tasks any more (`rcluster_last_error`
/// says why).
///
/// # Safety
/// `pool` is NULL or a live pool; `name` is NULL or a NUL-terminated string; `data` is
/// readable for `len` bytes (or NULL with `len` 0); `out_id` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_pool_submit(
    pool: *const rcluster_pool,
    name: *const c_char,
    content: u8,
    data: *const u8,
    len: usize,
    timeout_ms: u64,
    idempotent: bool,
    out_id: *mut u64,
) -> rcluster_result {
    guard("rcluster_pool_submit", || {
        let p = pool_ref(pool)?;
        let name = if name.is_null() {
            ""
        } else {
            // SAFETY: non-null, and the caller promises a NUL-terminated string.
            unsafe { args::utf8(name, "name") }?
        };
        // SAFETY: the caller promises `data` is readable for `len` bytes.
        let payload = unsafe { args::buffer(data, len, "data") }?.to_vec();
        let timeout = match timeout_ms {
            0 => None,
            ms => Some(args::millis(ms, "timeout_ms", false)?),
        };
        let options = TaskOptions {
            name: name.to_string(),
            content,
            timeout,
            idempotent,
        };
        let id = p.submit(payload, options)?;
        if !out_id.is_null() {
            // SAFETY: non-null, and the caller promises it is writable.
            unsafe { args::put(out_id, id) };
        }
        Ok(())
    })
}

/// Cancels task `id`: a queued task ends at once with status `CANCELLED`; a running one too,
/// and its worker is killed and replaced. An id that has ended already is ignored.
///
/// # Safety
/// `pool` is NULL or a live pool.
#[no_mangle]
pub unsafe extern "C" fn rcluster_pool_cancel(
    pool: *const rcluster_pool,
    id: u64,
) -> rcluster_result {
    guard("rcluster_pool_cancel", || {
        pool_ref(pool)?.cancel(id);
        Ok(())
    })
}

/// A descriptor that is readable while outcomes may be waiting (the completion fd): wait on
/// it (poll, epoll), then call `rcluster_pool_try_next_outcome` until it returns `TIMEOUT`.
/// -1 when `pool` is NULL. Owned by the pool; do not close it.
///
/// # Safety
/// `pool` is NULL or a live pool.
#[no_mangle]
pub unsafe extern "C" fn rcluster_pool_outcome_fd(pool: *const rcluster_pool) -> c_int {
    let mut fd = -1;
    let _ = guard("rcluster_pool_outcome_fd", || {
        fd = pool_ref(pool)?.outcome_fd();
        Ok(())
    });
    fd
}

fn put_outcome(pool: &Pool, o: Option<Outcome>, out: *mut *mut rcluster_outcome) -> Res<()> {
    match o {
        Some(o) => {
            // SAFETY: `out` was checked non-null by the caller, which promises it is writable.
            unsafe { args::put(out, into_c(o)) };
            Ok(())
        }
        None if pool.is_stopped() => Err(Fail::quiet(rcluster_result::Stopped)),
        None => Err(Fail::quiet(rcluster_result::Timeout)),
    }
}

/// Waits up to `timeout_ms` milliseconds (negative: forever) for the next task to end. On
/// success `*out` is its outcome, to release with `rcluster_outcome_free`. `TIMEOUT` when none
/// ended in time; `STOPPED` once the pool has stopped and every outcome was taken.
///
/// # Safety
/// `pool` is NULL or a live pool; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_pool_next_outcome(
    pool: *const rcluster_pool,
    timeout_ms: i64,
    out: *mut *mut rcluster_outcome,
) -> rcluster_result {
    guard("rcluster_pool_next_outcome", || {
        let p = pool_ref(pool)?;
        let out = args::out(out, "out")?;
        put_outcome(p, p.next_outcome(args::timeout(timeout_ms)), out)
    })
}

/// The next outcome if one is waiting (`TIMEOUT` if none), without blocking.
///
/// # Safety
/// `pool` is NULL or a live pool; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_pool_try_next_outcome(
    pool: *const rcluster_pool,
    out: *mut *mut rcluster_outcome,
) -> rcluster_result {
    guard("rcluster_pool_try_next_outcome", || {
        let p = pool_ref(pool)?;
        let out = args::out(out, "out")?;
        let mut one = Vec::with_capacity(1);
        p.take_outcomes(1, &mut one);
        put_outcome(p, one.pop(), out)
    })
}

/// Releases an outcome. NULL is allowed and does nothing.
///
/// # Safety
/// `o` is NULL or an outcome from this library not yet freed.
#[no_mangle]
pub unsafe extern "C" fn rcluster_outcome_free(o: *mut rcluster_outcome) {
    guard_void("rcluster_outcome_free", || {
        if !o.is_null() {
            // SAFETY: made by Box::into_raw of an OwnedOutcome (whose first field is the view)
            // in `into_c`, freed once.
            drop(unsafe { Box::from_raw(o.cast::<OwnedOutcome>()) });
        }
    })
}

/// The pool's counters as of now, into `*out`.
///
/// # Safety
/// `pool` is NULL or a live pool; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_pool_stats(
    pool: *const rcluster_pool,
    out: *mut rcluster_pool_counters,
) -> rcluster_result {
    guard("rcluster_pool_stats", || {
        let p = pool_ref(pool)?;
        let out = args::out(out, "out")?;
        let s = p.stats();
        let stats = rcluster_pool_counters {
            queued: s.queued as u64,
            running: s.running as u64,
            completed: s.completed,
            failed_error: s.failed_error,
            failed_crashed: s.failed_crashed,
            failed_timeout: s.failed_timeout,
            failed_cancelled: s.failed_cancelled,
            failed_shutdown: s.failed_shutdown,
            failed_no_workers: s.failed_no_workers,
            retried: s.retried,
            recycled: s.recycled,
            workers_ready: s.workers_ready as u64,
            requeued: s.requeued,
            wait_total_us: micros(s.wait_total),
            wait_max_us: micros(s.wait_max),
            run_total_us: micros(s.run_total),
            run_max_us: micros(s.run_max),
        };
        // SAFETY: `out` is non-null (checked above) and the caller promises it is writable.
        unsafe { args::put(out, stats) };
        Ok(())
    })
}

/// Stops the pool: no more tasks; queued ones end with `SHUTDOWN` when `cancel_queued`, or
/// run; what runs gets `timeout_ms` to finish; then the workers are stopped, and tasks still
/// unanswered end with `SHUTDOWN`. Returns once every worker is reaped; outcomes stay
/// readable until `STOPPED`.
///
/// # Safety
/// `pool` is NULL or a live pool.
#[no_mangle]
pub unsafe extern "C" fn rcluster_pool_stop(
    pool: *const rcluster_pool,
    cancel_queued: bool,
    timeout_ms: u64,
) -> rcluster_result {
    guard("rcluster_pool_stop", || {
        let p = pool_ref(pool)?;
        let timeout = args::millis(timeout_ms, "timeout_ms", true)?;
        Ok(p.stop(cancel_queued, timeout)?)
    })
}

/// Stops the pool (queued tasks cancelled, the cluster's kill timeout for the rest) if it
/// runs, and releases it. NULL is allowed and does nothing.
///
/// # Safety
/// `pool` is NULL or a pool from `rcluster_pool_start` not yet freed, not in use by another
/// thread.
#[no_mangle]
pub unsafe extern "C" fn rcluster_pool_free(pool: *mut rcluster_pool) {
    guard_void("rcluster_pool_free", || {
        if !pool.is_null() {
            // SAFETY: made by Box::into_raw in rcluster_pool_start, freed once.
            drop(unsafe { Box::from_raw(pool) });
        }
    })
}
