//! The primary side: a running cluster, wrapping the core `Supervisor`.

use std::time::Duration;

use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use rcluster_core::{SignalAction, Supervisor};

use crate::config::{seconds, ConfigArgs};
use crate::errors::IntoPyResult;
use crate::events::{PyEvent, PyWorkerInfo};
use crate::wait::sliced;

/// A running cluster (the native half of `rcluster.Supervisor`). Started by the constructor.
#[pyclass(frozen, name = "NativeSupervisor", module = "rcluster._rcluster")]
pub struct PySupervisor {
    core: Supervisor,
    kill_timeout: Duration,
}

#[pymethods]
impl PySupervisor {
    /// Validates the configuration (a dict of plain values), binds the listeners and starts
    /// the workers.
    #[new]
    fn new(py: Python<'_>, config: ConfigArgs) -> PyResult<Self> {
        let config = config.into_config()?;
        let kill_timeout = config.kill_timeout;
        // Binding and forking take a while; other Python threads keep running meanwhile.
        let core = py.allow_threads(|| Supervisor::start(config)).py()?;
        Ok(PySupervisor { core, kill_timeout })
    }

    /// Waits up to `timeout` seconds (forever if None) for the next event. None on timeout or
    /// once the supervisor has stopped and every event was taken. Ctrl-C interrupts the wait.
    #[pyo3(signature = (timeout=None))]
    fn next_event(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<PyEvent>> {
        let got = sliced(
            py,
            timeout,
            |slice| Ok(self.core.next_event(Some(slice))),
            || self.core.is_stopped(),
        )?;
        // After the stop the queue is closed: a last blocking look drains what the loop
        // pushed between setting `stopped` and closing the queue.
        let got = match got {
            None if self.core.is_stopped() => py.allow_threads(|| self.core.next_event(None)),
            other => other,
        };
        Ok(got.map(|ev| PyEvent::from_core(py, ev)))
    }

    /// The next event if one is waiting (never blocks).
    fn try_next_event(&self, py: Python<'_>) -> Option<PyEvent> {
        self.core
            .try_next_event()
            .map(|ev| PyEvent::from_core(py, ev))
    }

    /// Up to `max` events that are waiting, without blocking (for event loops).
    #[pyo3(signature = (max=256))]
    fn drain_events(&self, py: Python<'_>, max: usize) -> Vec<PyEvent> {
        let mut out = Vec::new();
        while out.len() < max {
            match self.core.try_next_event() {
                Some(ev) => out.push(PyEvent::from_core(py, ev)),
                None => break,
            }
        }
        out
    }

    /// A descriptor that is readable while events may be waiting (for `loop.add_reader`).
    fn event_fd(&self) -> i32 {
        self.core.event_fd()
    }

    /// Sends `data` to worker `id` (never blocks; `QueueFullError` when the worker does not
    /// read). No GIL release: the call only appends to a queue.
    fn send(&self, id: u32, data: PyBackedBytes) -> PyResult<()> {
        self.core.send(id, &data).py()
    }

    /// Sends `data` to every live worker; returns how many it was queued for.
    fn broadcast(&self, data: PyBackedBytes) -> PyResult<usize> {
        self.core.broadcast(&data).py()
    }

    /// A snapshot of every worker process and empty slot.
    fn workers(&self, py: Python<'_>) -> PyResult<Vec<PyWorkerInfo>> {
        let list = py.allow_threads(|| self.core.snapshot()).py()?;
        list.into_iter()
            .map(|w| PyWorkerInfo::from_core(py, w))
            .collect()
    }

    fn scale(&self, py: Python<'_>, workers: usize) -> PyResult<()> {
        py.allow_threads(|| self.core.scale(workers)).py()
    }

    fn restart_worker(&self, py: Python<'_>, id: u32) -> PyResult<()> {
        py.allow_threads(|| self.core.restart_worker(id)).py()
    }

    /// Starts a rolling reload; returns the new generation.
    fn status_json(&self, py: Python<'_>) -> PyResult<String> {
        py.allow_threads(|| self.core.status().map(|s| s.to_json()))
            .py()
    }

    fn reload(&self, py: Python<'_>) -> PyResult<u32> {
        py.allow_threads(|| self.core.reload()).py()
    }

    /// Stops every worker (killing what is left after `timeout` seconds, default
    /// `kill_timeout`) and returns once all are reaped.
    #[pyo3(signature = (timeout=None))]
    fn stop(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        let timeout = match timeout {
            Some(t) => seconds("timeout", t)?,
            None => self.kill_timeout,
        };
        py.allow_threads(|| self.core.stop(timeout)).py()
    }

    /// Hands a signal the process received to the core, which decides what it means (the
    /// `rcluster` command's mapping). Returns `(action, detail)`: ("stop", kill timeout in
    /// seconds), ("kill", None), ("reload", generation), ("scale", workers) or ("ignored",
    /// reason). Never waits for a stop; a reload or scale is one round trip to the loop.
    fn on_signal(&self, py: Python<'_>, signo: i32) -> PyResult<(&'static str, PyObject)> {
        let action = py.allow_threads(|| self.core.on_signal(signo)).py()?;
        Ok(match action {
            SignalAction::Stop { kill_timeout } => (
                "stop",
                kill_timeout
                    .as_secs_f64()
                    .into_pyobject(py)?
                    .into_any()
                    .unbind(),
            ),
            SignalAction::Kill => ("kill", py.None()),
            SignalAction::Reload { generation } => {
                ("reload", generation.into_pyobject(py)?.into_any().unbind())
            }
            SignalAction::Scale { workers } => {
                ("scale", workers.into_pyobject(py)?.into_any().unbind())
            }
            SignalAction::Ignored(why) => ("ignored", why.into_pyobject(py)?.into_any().unbind()),
        })
    }

    fn is_stopped(&self) -> bool {
        self.core.is_stopped()
    }

    /// Each listener's name and actual address (port 0 resolved), as text.
    fn listeners(&self) -> Vec<(String, String)> {
        self.core
            .listeners()
            .iter()
            .map(|(n, a)| (n.clone(), a.to_string()))
            .collect()
    }
}

impl Drop for PySupervisor {
    fn drop(&mut self) {
        // Dropped by the garbage collector with the GIL held: stopping waits for workers to
        // exit, which must not freeze every other Python thread meanwhile.
        if !self.core.is_stopped() {
            let (core, t) = (&self.core, self.kill_timeout);
            Python::with_gil(|py| py.allow_threads(|| core.stop(t).ok()));
        }
    }
}
