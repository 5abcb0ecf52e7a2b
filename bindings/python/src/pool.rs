//! The pool's primary side: a core `Pool` whose outcomes one Python thread takes in batches.
//!
//! Payloads are opaque bytes here (the Python half pickles); outcomes come out as small
//! tuples, many per call, so that a burst of tiny tasks costs one GIL round trip per batch.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use rcluster_core::pool::{
    Outcome, Pool, PoolConfig, TaskError, TaskOptions, WhenFull, BOOT_FAILED_EXIT, CONTENT_PICKLE,
};
use rcluster_core::ReadyOn;

use crate::config::{wait_seconds as seconds, ConfigArgs};
use crate::errors::{config_error, IntoPyResult};

/// The pool's own settings, beside the cluster's (`ConfigArgs`).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct PoolArgs {
    #[pyo3(default)]
    pub concurrent_tasks_per_worker: Option<usize>,
    #[pyo3(default)]
    pub max_tasks_ahead: Option<usize>,
    pub max_queue: usize,
    /// "reject" or "wait".
    #[pyo3(default)]
    pub when_full: Option<String>,
    #[pyo3(default)]
    pub task_timeout: Option<f64>,
    #[pyo3(default)]
    pub max_tasks_per_worker: Option<u64>,
}

fn build(cluster: ConfigArgs, args: PoolArgs) -> PyResult<PoolConfig> {
    let mut c = PoolConfig::new(Vec::<String>::new());
    c.cluster = cluster.into_config()?;
    // What `PoolConfig::new` does to its own cluster: a pool worker says when its task code is
    // loaded, and one that cannot load it is not restarted in a loop.
    c.cluster.ready_on = ReadyOn::Explicit;
    if !c
        .cluster
        .restart
        .no_restart_codes
        .contains(&BOOT_FAILED_EXIT)
    {
        c.cluster.restart.no_restart_codes.push(BOOT_FAILED_EXIT);
    }
    if let Some(n) = args.concurrent_tasks_per_worker {
        c.concurrent_tasks_per_worker = n;
    }
    if let Some(n) = args.max_tasks_ahead {
        c.max_tasks_ahead = n;
    }
    c.max_queue = args.max_queue;
    c.when_full = match args.when_full.as_deref() {
        None | Some("reject") => WhenFull::Reject,
        Some("wait") => WhenFull::Wait,
        Some(other) => {
            return Err(config_error(
                "when_full",
                other,
                "must be \"reject\" or \"wait\"",
            ))
        }
    };
    if let Some(t) = args.task_timeout {
        c.task_timeout = Some(seconds("task_timeout", t)?);
    }
    c.max_tasks_per_worker = args.max_tasks_per_worker;
    Ok(c)
}

/// Status of an outcome tuple, its second item.
const OK: &str = "ok";
const ERROR: &str = "error";

/// An outcome as `(id, status, detail)`: ("ok", pickled value), ("error", pickled exception and
/// traceback), or (reason, (message, exit code, signal)) for a failure of the pool, where reason
/// is `TaskError::reason` ("crashed", "timeout", "cancelled", "shutdown", "no_workers").
fn to_tuple(py: Python<'_>, o: Outcome) -> PyResult<Bound<'_, PyTuple>> {
    match o.result {
        Ok(v) => (o.id, OK, PyBytes::new(py, &v.payload)).into_pyobject(py),
        Err(TaskError::Failed { payload, .. }) => {
            (o.id, ERROR, PyBytes::new(py, &payload)).into_pyobject(py)
        }
        Err(e) => {
            let (code, signal) = match &e {
                TaskError::Crashed { code, signal, .. } => (*code, *signal),
                _ => (None, None),
            };
            (o.id, e.reason(), (e.to_string(), code, signal)).into_pyobject(py)
        }
    }
}

/// Outcomes handed to Python per call at most.
const BATCH: usize = 4096;

/// A running pool (the native half of `rcluster.Pool`). Started by the constructor.
#[pyclass(frozen, name = "NativePool", module = "rcluster._rcluster")]
pub struct PyPool {
    core: Pool,
    kill_timeout: Duration,
    /// `when_full` is "wait": a submit may block.
    waits: bool,
}

#[pymethods]
impl PyPool {
    /// Validates both configurations (dicts of plain values) and starts the workers.
    #[new]
    fn new(py: Python<'_>, cluster: ConfigArgs, pool: PoolArgs) -> PyResult<Self> {
        let config = build(cluster, pool)?;
        let kill_timeout = config.cluster.kill_timeout;
        let waits = config.when_full == WhenFull::Wait;
        let core = py.allow_threads(|| Pool::start(config)).py()?;
        Ok(PyPool {
            core,
            kill_timeout,
            waits,
        })
    }

    /// Queues a pickled task; returns its id. `block`: wait for room when the queue is full
    /// (as `when_full` says); otherwise a full queue fails at once.
    #[pyo3(signature = (payload, timeout=None, block=true))]
    fn submit(
        &self,
        py: Python<'_>,
        payload: PyBackedBytes,
        timeout: Option<f64>,
        block: bool,
    ) -> PyResult<u64> {
        let options = TaskOptions {
            name: String::new(),
            content: CONTENT_PICKLE,
            timeout: timeout.map(|t| seconds("timeout", t)).transpose()?,
            idempotent: false,
        };
        let payload = payload.to_vec();
        if !block || !self.waits {
            // Never blocks: no need to give up the GIL (which costs more than the call).
            return self.core.try_submit(payload, options).py();
        }
        py.allow_threads(|| self.core.submit(payload, options)).py()
    }

    /// Cancels task `id`: true when it was queued (its outcome, "cancelled", follows); false
    /// when it was running (its worker is killed) or has ended.
    fn cancel(&self, id: u64) -> bool {
        self.core.cancel(id)
    }

    /// Waits up to `timeout` seconds (forever if None) for outcomes and returns those waiting,
    /// up to `max`; empty on timeout, None once the pool has ended and every outcome was
    /// taken. Meant for one thread that delivers results.
    #[pyo3(signature = (timeout=None, max=BATCH))]
    fn next_outcomes<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
        max: usize,
    ) -> PyResult<Option<Vec<Bound<'py, PyTuple>>>> {
        let timeout = timeout.map(|t| seconds("timeout", t)).transpose()?;
        let max = max.max(1);
        let got = py.allow_threads(|| {
            let mut out = Vec::new();
            if self.core.take_outcomes(max, &mut out) > 0 {
                return Some(out);
            }
            let first = self.core.next_outcome(timeout)?;
            out.push(first);
            self.core.take_outcomes(max - 1, &mut out);
            Some(out)
        });
        match got {
            Some(list) => list
                .into_iter()
                .map(|o| to_tuple(py, o))
                .collect::<PyResult<Vec<_>>>()
                .map(Some),
            None if self.core.is_stopped() => Ok(None),
            None => Ok(Some(Vec::new())),
        }
    }

    /// A descriptor that is readable while outcomes may be waiting (for `loop.add_reader`).
    fn outcome_fd(&self) -> i32 {
        self.core.outcome_fd()
    }

    /// Counters as a dict; durations in seconds.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.core.stats();
        let d = PyDict::new(py);
        d.set_item("queued", s.queued)?;
        d.set_item("running", s.running)?;
        d.set_item("completed", s.completed)?;
        d.set_item("failed", s.failed())?;
        d.set_item("failed_error", s.failed_error)?;
        d.set_item("failed_crashed", s.failed_crashed)?;
        d.set_item("failed_timeout", s.failed_timeout)?;
        d.set_item("failed_cancelled", s.failed_cancelled)?;
        d.set_item("failed_shutdown", s.failed_shutdown)?;
        d.set_item("failed_no_workers", s.failed_no_workers)?;
        d.set_item("retried", s.retried)?;
        d.set_item("requeued", s.requeued)?;
        d.set_item("recycled", s.recycled)?;
        d.set_item("workers_ready", s.workers_ready)?;
        d.set_item("wait_total", s.wait_total.as_secs_f64())?;
        d.set_item("wait_max", s.wait_max.as_secs_f64())?;
        d.set_item("run_total", s.run_total.as_secs_f64())?;
        d.set_item("run_max", s.run_max.as_secs_f64())?;
        Ok(d)
    }

    /// Takes no more tasks; fails the queued ones ("shutdown") when `cancel_queued`, else
    /// lets them run; waits up to `timeout` seconds (None: as long as they take) for what
    /// runs, then stops the workers. Returns once every worker is reaped.
    #[pyo3(signature = (cancel_queued=false, timeout=None))]
    fn stop(&self, py: Python<'_>, cancel_queued: bool, timeout: Option<f64>) -> PyResult<()> {
        // "As long as they take", bounded by what an Instant can hold.
        let timeout = match timeout {
            Some(t) => seconds("timeout", t)?,
            None => Duration::from_secs(100 * 365 * 24 * 3600),
        };
        py.allow_threads(|| self.core.stop(cancel_queued, timeout))
            .py()
    }

    fn is_stopped(&self) -> bool {
        self.core.is_stopped()
    }
}

impl Drop for PyPool {
    fn drop(&mut self) {
        // Dropped by the garbage collector with the GIL held: stopping waits for workers to
        // exit, which must not freeze every other Python thread meanwhile.
        if !self.core.is_stopped() {
            let (core, t) = (&self.core, self.kill_timeout);
            Python::with_gil(|py| py.allow_threads(|| core.stop(true, t).ok()));
        }
    }
}
