//! The pool's primary side: a core `Pool` and the watcher of its outcome descriptor.

use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;
use rcluster_core::pool::{Outcome, Pool, PoolConfig, TaskError, TaskOptions, WhenFull};

use crate::error::{from_napi, invalid, to_js};
use crate::watch::WatchSlot;

/// Outcomes handed to JS per callback at most.
const BATCH: usize = 4096;

/// Options as `lib/pool.js` normalised them: durations in milliseconds.
#[napi(object)]
pub struct NativePoolOptions {
    pub workers: u32,
    pub argv: Vec<String>,
    pub env: Vec<Vec<String>>,
    pub cwd: Option<String>,
    pub concurrent_tasks_per_worker: u32,
    pub max_tasks_ahead: Option<u32>,
    pub max_queue: f64,
    /// "reject" or "wait".
    pub when_full: Option<String>,
    pub task_timeout: Option<f64>,
    pub max_tasks_per_worker: Option<f64>,
    /// Bytes.
    pub max_worker_memory: Option<f64>,
    pub kill_timeout: Option<f64>,
    pub max_message: Option<f64>,
}

/// Why a task failed, other than an error it raised.
#[napi(object)]
pub struct NativeTaskFailure {
    /// `crashed`, `timeout`, `cancelled`, `shutdown`, `no_workers`.
    pub reason: String,
    pub message: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
}

fn ms(v: f64) -> Duration {
    Duration::from_secs_f64(v.max(0.0) / 1000.0)
}

fn build(o: NativePoolOptions) -> napi::Result<PoolConfig, &'static str> {
    let mut c = PoolConfig::new(o.argv);
    c.cluster.workers = o.workers as usize;
    for pair in o.env {
        let [k, v] = <[String; 2]>::try_from(pair)
            .map_err(|p| invalid(format!("env entry {p:?} is not a [name, value] pair")))?;
        c.cluster.env.push((k.into(), v.into()));
    }
    c.cluster.cwd = o.cwd.map(Into::into);
    if let Some(t) = o.kill_timeout {
        c.cluster.kill_timeout = ms(t);
    }
    if let Some(m) = o.max_message {
        c.cluster.max_message = m as usize;
    }
    c.concurrent_tasks_per_worker = o.concurrent_tasks_per_worker as usize;
    if let Some(n) = o.max_tasks_ahead {
        c.max_tasks_ahead = n as usize;
    }
    c.max_queue = o.max_queue as usize;
    c.when_full = match o.when_full.as_deref() {
        None | Some("reject") => WhenFull::Reject,
        Some("wait") => WhenFull::Wait,
        Some(other) => {
            return Err(invalid(format!(
                "whenFull = {other:?}: must be \"reject\" or \"wait\""
            )))
        }
    };
    c.task_timeout = o.task_timeout.map(ms);
    c.max_tasks_per_worker = o.max_tasks_per_worker.map(|n| n as u64);
    c.max_worker_memory = o.max_worker_memory.map(|n| n as u64);
    Ok(c)
}

/// Outcomes as a flat array: first one Buffer holding every payload of the batch end to end
/// (one allocation for the JS side, not one per task), then three items per outcome: the task
/// id, a status (0 value, 1 error the task raised, 2 failure of the pool), and for 0 and 1 the
/// offset where its payload ends in the Buffer (it starts where the previous one ended), for 2
/// the failure.
type Item = Either3<f64, Buffer, NativeTaskFailure>;

fn push(out: &mut Vec<Item>, all: &mut Vec<u8>, o: Outcome) {
    out.push(Either3::A(o.id as f64));
    match o.result {
        Ok(v) => {
            all.extend_from_slice(&v.payload);
            out.push(Either3::A(0.0));
            out.push(Either3::A(all.len() as f64));
        }
        Err(TaskError::Failed { payload, .. }) => {
            all.extend_from_slice(&payload);
            out.push(Either3::A(1.0));
            out.push(Either3::A(all.len() as f64));
        }
        Err(e) => {
            let (exit_code, signal) = match &e {
                TaskError::Crashed { code, signal, .. } => (*code, *signal),
                _ => (None, None),
            };
            out.push(Either3::A(2.0));
            out.push(Either3::C(NativeTaskFailure {
                reason: e.reason().to_string(),
                message: e.to_string(),
                exit_code,
                signal,
            }));
        }
    }
}

fn drain(pool: &Pool) -> Vec<Item> {
    let mut outcomes = Vec::new();
    pool.take_outcomes(BATCH, &mut outcomes);
    let mut out = Vec::with_capacity(1 + outcomes.len() * 3);
    out.push(Either3::A(0.0)); // replaced by the Buffer below
    let mut all = Vec::new();
    for o in outcomes {
        push(&mut out, &mut all, o);
    }
    out[0] = Either3::B(all.into());
    out
}

#[napi(object)]
pub struct NativePoolStats {
    pub queued: f64,
    pub running: f64,
    pub completed: f64,
    pub failed: f64,
    pub failed_error: f64,
    pub failed_crashed: f64,
    pub failed_timeout: f64,
    pub failed_cancelled: f64,
    pub failed_shutdown: f64,
    pub failed_no_workers: f64,
    pub retried: f64,
    pub requeued: f64,
    pub recycled: f64,
    pub workers_ready: f64,
    /// Milliseconds.
    pub wait_total: f64,
    pub wait_max: f64,
    pub run_total: f64,
    pub run_max: f64,
}

/// A running pool (the primary side).
#[napi]
pub struct NativePool {
    inner: Arc<Pool>,
    watcher: WatchSlot,
}

#[napi]
impl NativePool {
    #[napi(constructor)]
    pub fn new(options: NativePoolOptions) -> napi::Result<Self, &'static str> {
        let inner = Pool::start(build(options)?).map_err(to_js)?;
        Ok(NativePool {
            inner: Arc::new(inner),
            watcher: WatchSlot::default(),
        })
    }

    /// Queues a task; returns its id. `timeout_ms` <= 0: the pool's timeout.
    #[napi]
    pub fn submit(
        &self,
        payload: Buffer,
        name: String,
        content: u32,
        timeout_ms: f64,
        idempotent: bool,
    ) -> napi::Result<f64, &'static str> {
        let options = TaskOptions {
            name,
            content: content as u8,
            timeout: (timeout_ms > 0.0).then(|| ms(timeout_ms)),
            idempotent,
        };
        self.inner
            .submit(payload.to_vec(), options)
            .map(|id| id as f64)
            .map_err(to_js)
    }

    /// Queues tasks in order, as many as the queue has room for; returns their ids (fewer
    /// than given when the queue filled up). All arrays have the same length; a timeout of 0
    /// means the pool's.
    #[napi]
    pub fn submit_many(
        &self,
        payloads: Vec<Buffer>,
        names: Vec<String>,
        timeouts_ms: Vec<f64>,
        idempotent: Vec<bool>,
        content: u32,
    ) -> napi::Result<Vec<f64>, &'static str> {
        let tasks = payloads
            .into_iter()
            .zip(names)
            .zip(timeouts_ms.into_iter().zip(idempotent))
            .map(|((payload, name), (timeout_ms, idempotent))| {
                let options = TaskOptions {
                    name,
                    content: content as u8,
                    timeout: (timeout_ms > 0.0).then(|| ms(timeout_ms)),
                    idempotent,
                };
                (payload.to_vec(), options)
            });
        let ids = self.inner.submit_batch(tasks).map_err(to_js)?;
        Ok(ids.into_iter().map(|id| id as f64).collect())
    }

    /// Cancels task `id` (see `Pool::cancel`): true when it was still queued.
    #[napi]
    pub fn cancel(&self, id: f64) -> bool {
        self.inner.cancel(id as u64)
    }

    #[napi]
    pub fn stats(&self) -> NativePoolStats {
        let s = self.inner.stats();
        let msf = |d: Duration| d.as_secs_f64() * 1000.0;
        NativePoolStats {
            queued: s.queued as f64,
            running: s.running as f64,
            completed: s.completed as f64,
            failed: s.failed() as f64,
            failed_error: s.failed_error as f64,
            failed_crashed: s.failed_crashed as f64,
            failed_timeout: s.failed_timeout as f64,
            failed_cancelled: s.failed_cancelled as f64,
            failed_shutdown: s.failed_shutdown as f64,
            failed_no_workers: s.failed_no_workers as f64,
            retried: s.retried as f64,
            requeued: s.requeued as f64,
            recycled: s.recycled as f64,
            workers_ready: s.workers_ready as f64,
            wait_total: msf(s.wait_total),
            wait_max: msf(s.wait_max),
            run_total: msf(s.run_total),
            run_max: msf(s.run_max),
        }
    }

    /// Calls `callback` on the JS thread with the waiting outcomes (see [`Item`]) whenever
    /// some wait.
    #[napi(ts_args_type = "callback: (items: Array<number | Buffer | NativeTaskFailure>) => void")]
    pub fn watch(
        &mut self,
        env: Env,
        callback: Function<'_, sys::napi_value, ()>,
    ) -> napi::Result<(), &'static str> {
        let fd = self.inner.outcome_fd();
        let pool = Arc::clone(&self.inner);
        let produce = Box::new(move |env| {
            // SAFETY: called on the JS thread with its live env.
            unsafe { Vec::to_napi_value(env, drain(&pool)) }
                .map(Some)
                .map_err(from_napi)
        });
        self.watcher
            .start(&env, fd, callback, produce, "rcluster:pool", false)
            .map_err(from_napi)
    }

    /// Whether the watcher keeps the process alive.
    #[napi]
    pub fn set_ref(&self, keep_alive: bool) {
        self.watcher.set_ref(keep_alive);
    }

    #[napi]
    pub fn unwatch(&mut self) {
        self.watcher.close();
    }

    /// Outcomes waiting now, as the watcher's callback gets them.
    #[napi(ts_return_type = "Array<number | Buffer | NativeTaskFailure>")]
    pub fn drain(&self) -> Vec<Item> {
        drain(&self.inner)
    }

    /// Stops the pool off the JS thread (see `Pool::stop`); resolves once every worker is
    /// reaped. Queued tasks fail with `shutdown` when `cancel_queued`.
    #[napi]
    pub fn stop(&self, cancel_queued: bool, timeout_ms: f64) -> AsyncTask<PoolStopTask> {
        AsyncTask::new(PoolStopTask {
            pool: Arc::clone(&self.inner),
            cancel_queued,
            timeout: ms(timeout_ms),
        })
    }
}

pub struct PoolStopTask {
    pool: Arc<Pool>,
    cancel_queued: bool,
    timeout: Duration,
}

impl Task for PoolStopTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> Result<()> {
        self.pool
            .stop(self.cancel_queued, self.timeout)
            .map_err(|e| Error::new(Status::GenericFailure, e.to_string()))
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> Result<()> {
        Ok(())
    }
}
