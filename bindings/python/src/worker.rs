//! The worker side: this process's link to its primary, wrapping the core `Worker`.
//!
//! Events come out as small tuples `(kind, payload)` in batches: a message stream costs one
//! GIL release per batch rather than per message. A message's payload is `(bytes, type)`, its
//! body and the name of its content type.

use std::os::fd::IntoRawFd;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyTuple};
use rcluster_core::pool::CONTENT_PICKLE;
use rcluster_core::{Answer, Worker, WorkerEvent};

use crate::errors::IntoPyResult;
use crate::message;
use crate::wait::sliced;

/// The native half of `rcluster.Worker`.
#[pyclass(frozen, name = "NativeWorker", module = "rcluster._rcluster")]
pub struct PyWorker {
    pub(crate) core: Worker,
}

/// Kinds of worker events, as the first item of each tuple.
const MESSAGE: &str = "message";
const CONNECTION: &str = "connection";
const DISCONNECT: &str = "disconnect";
const PRIMARY_GONE: &str = "primary_gone";
const TASK: &str = "task";
const TASK_CANCELLED: &str = "cancel";

fn to_tuple(py: Python<'_>, ev: WorkerEvent) -> PyResult<Bound<'_, PyTuple>> {
    match ev {
        WorkerEvent::Message { data, content } => {
            (MESSAGE, (PyBytes::new(py, &data), content.as_str())).into_pyobject(py)
        }
        WorkerEvent::Connection(c) => {
            // Ownership of the descriptor passes to Python (a socket.socket built from it).
            let fd = c.fd.into_raw_fd();
            (CONNECTION, (fd, c.id, c.listener, c.peer)).into_pyobject(py)
        }
        WorkerEvent::Disconnect => (DISCONNECT, py.None()).into_pyobject(py),
        WorkerEvent::PrimaryGone => (PRIMARY_GONE, py.None()).into_pyobject(py),
        // A pool task: (id, content type, payload); the name is not used by Python pools.
        WorkerEvent::Task(t) => {
            (TASK, (t.id, t.content, PyBytes::new(py, &t.payload))).into_pyobject(py)
        }
        // A task taken earlier was cancelled: the pool worker drops it if it waits.
        WorkerEvent::TaskCancelled(id) => (TASK_CANCELLED, id).into_pyobject(py),
        #[allow(unreachable_patterns)]
        _ => ("unknown", py.None()).into_pyobject(py),
    }
}

#[pymethods]
impl PyWorker {
    /// Connects to the primary named by the `RCLUSTER_*` environment; None when this process
    /// is not an rcluster worker. Only the first call can succeed: it takes the link.
    #[staticmethod]
    fn from_env(py: Python<'_>) -> PyResult<Option<PyWorker>> {
        let core = py.allow_threads(Worker::from_env).py()?;
        Ok(core.map(|core| {
            // Python decides what a lost primary means (SystemExit runs `finally` blocks and
            // flushes buffers; the core's default exit would skip them).
            core.set_exit_on_primary_loss(false);
            PyWorker { core }
        }))
    }

    #[getter]
    fn id(&self) -> u32 {
        self.core.id()
    }

    #[getter]
    fn generation(&self) -> u32 {
        self.core.generation()
    }

    #[getter]
    fn max_message(&self) -> usize {
        self.core.max_message()
    }

    /// Seconds between heartbeats, as the primary asks; None when it does not check them.
    #[getter]
    fn heartbeat_interval(&self) -> Option<f64> {
        self.core.heartbeat_interval().map(|d| d.as_secs_f64())
    }

    fn fileno(&self) -> i32 {
        self.core.as_raw_fd()
    }

    fn ready(&self, py: Python<'_>) -> PyResult<()> {
        py.allow_threads(|| self.core.ready()).py()
    }

    fn heartbeat(&self, py: Python<'_>) -> PyResult<()> {
        py.allow_threads(|| self.core.heartbeat()).py()
    }

    /// Sends a message to the primary: bytes as `raw`, a str as `text`, unless
    /// `content_type` names the type; blocks (GIL released) while the socket is full.
    #[pyo3(signature = (data, content_type=None))]
    fn send(
        &self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        content_type: Option<&str>,
    ) -> PyResult<()> {
        let (body, content) = message::typed(data, content_type)?;
        py.allow_threads(|| self.core.send_as(content, body.as_bytes()))
            .py()
    }

    /// Answers pool tasks with one write: `(id, ok, payload)` each, pickled (`ok` false: the
    /// payload is the error the task raised). Blocks (GIL released) while the socket is full.
    fn answer_many(
        &self,
        py: Python<'_>,
        answers: Vec<(u64, bool, PyBackedBytes)>,
    ) -> PyResult<()> {
        let list: Vec<Answer<'_>> = answers
            .iter()
            .map(|(id, ok, payload)| Answer {
                id: *id,
                ok: *ok,
                content: CONTENT_PICKLE,
                payload,
            })
            .collect();
        py.allow_threads(|| self.core.answer_many(&list)).py()
    }

    /// Tells a pool this worker cannot run tasks (its code failed to load), with why; exit
    /// afterwards with `BOOT_FAILED_EXIT` so that it is not restarted in a loop.
    fn boot_failed(&self, py: Python<'_>, why: &str) -> PyResult<()> {
        py.allow_threads(|| self.core.boot_failed(why)).py()
    }

    fn disconnect(&self, py: Python<'_>) -> PyResult<()> {
        py.allow_threads(|| self.core.disconnect()).py()
    }

    fn connection_closed(&self, py: Python<'_>, id: u64) -> PyResult<()> {
        py.allow_threads(|| self.core.connection_closed(id)).py()
    }

    /// Waits up to `timeout` seconds (forever if None; 0 = only what is waiting) for events,
    /// and returns up to `max` of them as `(kind, payload)` tuples; empty on timeout.
    #[pyo3(signature = (timeout=None, max=256))]
    fn next_events<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
        max: usize,
    ) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let max = max.max(1);
        let batch = if timeout == Some(0.0) {
            py.allow_threads(|| self.take(Duration::ZERO, max))?
        } else {
            sliced(
                py,
                timeout,
                |slice| self.take(slice, max).map(|b| (!b.is_empty()).then_some(b)),
                || false,
            )?
            .unwrap_or_default()
        };
        batch.into_iter().map(|ev| to_tuple(py, ev)).collect()
    }

    /// Reads the link now, without waiting (even when the last read emptied it), and returns
    /// up to `max` events as `next_events(0, max)` does: a pool worker calls it before it
    /// starts a task that waited, so that a cancel that arrived meanwhile is seen.
    #[pyo3(signature = (max=256))]
    fn poll_events<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Vec<Bound<'py, PyTuple>>> {
        let max = max.max(1);
        let batch = py.allow_threads(|| {
            let mut out = Vec::new();
            self.core.poll_events(max, &mut out).map(|_| out)
        });
        batch.py()?.into_iter().map(|ev| to_tuple(py, ev)).collect()
    }
}

impl PyWorker {
    /// Waits up to `first` for one event, then takes what else is waiting, up to `max`.
    fn take(&self, first: Duration, max: usize) -> PyResult<Vec<WorkerEvent>> {
        let mut out = Vec::new();
        self.core.next_events(Some(first), max, &mut out).py()?;
        Ok(out)
    }
}
