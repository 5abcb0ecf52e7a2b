//! Events, worker snapshots and exit records as Python objects (read-only attributes).

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rcluster_core::{Event, ExitInfo, WorkerInfo};

/// Something that happened in the cluster. `kind` names it (`"spawned"`, `"online"`,
/// `"ready"`, `"message"`, `"exit"`, `"spawn_failed"`, `"restarting"`, `"gave_up"`,
/// `"all_down"`, `"protocol_error"`, `"reload_started"`, `"reload_done"`, `"reload_failed"`,
/// `"scaled"`, `"accept_paused"`, `"output_dropped"`, `"warning"`); the attributes that do not
/// apply to it are None.
#[pyclass(frozen, get_all, name = "Event", module = "rcluster")]
pub struct PyEvent {
    pub kind: &'static str,
    pub id: Option<u32>,
    pub pid: Option<u32>,
    pub generation: Option<u32>,
    /// The payload of a `message` (bytes).
    pub data: Option<Py<PyBytes>>,
    /// The content type of a `message`: `raw`, `text`, `json`, `v8` or `binding`.
    pub content_type: Option<&'static str>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Exit reason (`crashed`, `requested`, …) or why a reload failed.
    pub reason: Option<String>,
    /// What went wrong (`spawn_failed`, `protocol_error`, `accept_paused`, `warning`).
    pub error: Option<String>,
    /// Seconds before a restart (`restarting`).
    pub delay: Option<f64>,
    pub attempt: Option<u32>,
    pub restarts: Option<u32>,
    /// Seconds (`gave_up`).
    pub window: Option<f64>,
    pub workers: Option<usize>,
    pub listener: Option<String>,
    /// Lines of worker output dropped (`output_dropped`).
    pub lines: Option<u64>,
    /// Bytes of worker output dropped (`output_dropped`).
    pub bytes: Option<u64>,
}

impl PyEvent {
    fn of(kind: &'static str) -> PyEvent {
        PyEvent {
            kind,
            id: None,
            pid: None,
            generation: None,
            data: None,
            content_type: None,
            code: None,
            signal: None,
            reason: None,
            error: None,
            delay: None,
            attempt: None,
            restarts: None,
            window: None,
            workers: None,
            listener: None,
            lines: None,
            bytes: None,
        }
    }

    pub fn from_core(py: Python<'_>, ev: Event) -> PyEvent {
        let kind = ev.kind();
        match ev {
            Event::Spawned {
                id,
                pid,
                generation,
            } => PyEvent {
                id: Some(id),
                pid: Some(pid),
                generation: Some(generation),
                ..PyEvent::of(kind)
            },
            Event::Online { id, pid } => PyEvent {
                id: Some(id),
                pid: Some(pid),
                ..PyEvent::of(kind)
            },
            Event::Ready { id, pid } => PyEvent {
                id: Some(id),
                pid: Some(pid),
                ..PyEvent::of(kind)
            },
            Event::Message {
                id,
                pid,
                data,
                content,
            } => PyEvent {
                id: Some(id),
                pid: Some(pid),
                data: Some(PyBytes::new(py, &data).unbind()),
                content_type: Some(content.as_str()),
                ..PyEvent::of(kind)
            },
            Event::Exit {
                id,
                generation,
                info,
            } => PyEvent {
                id: Some(id),
                pid: Some(info.pid),
                generation: Some(generation),
                code: info.code,
                signal: info.signal,
                reason: Some(info.reason.as_str().to_string()),
                ..PyEvent::of(kind)
            },
            Event::SpawnFailed { id, error } => PyEvent {
                id: Some(id),
                error: Some(error),
                ..PyEvent::of(kind)
            },
            Event::Restarting { id, delay, attempt } => PyEvent {
                id: Some(id),
                delay: Some(delay.as_secs_f64()),
                attempt: Some(attempt),
                ..PyEvent::of(kind)
            },
            Event::GaveUp {
                id,
                restarts,
                window,
            } => PyEvent {
                id: Some(id),
                restarts: Some(restarts),
                window: Some(window.as_secs_f64()),
                ..PyEvent::of(kind)
            },
            Event::AllDown => PyEvent::of(kind),
            Event::ProtocolError { id, pid, detail } => PyEvent {
                id: Some(id),
                pid: Some(pid),
                error: Some(detail),
                ..PyEvent::of(kind)
            },
            Event::ReloadStarted { generation } => PyEvent {
                generation: Some(generation),
                ..PyEvent::of(kind)
            },
            Event::ReloadDone { generation } => PyEvent {
                generation: Some(generation),
                ..PyEvent::of(kind)
            },
            Event::ReloadFailed { generation, reason } => PyEvent {
                generation: Some(generation),
                reason: Some(reason),
                ..PyEvent::of(kind)
            },
            Event::Scaled { workers } => PyEvent {
                workers: Some(workers),
                ..PyEvent::of(kind)
            },
            Event::AcceptPaused { listener, error } => PyEvent {
                listener: Some(listener),
                error: Some(error),
                ..PyEvent::of(kind)
            },
            Event::OutputDropped { id, lines, bytes } => PyEvent {
                id: Some(id),
                lines: Some(lines),
                bytes: Some(bytes),
                ..PyEvent::of(kind)
            },
            Event::Warning { detail } => PyEvent {
                error: Some(detail),
                ..PyEvent::of(kind)
            },
            Event::Recycling { id, pid, reason } => PyEvent {
                id: Some(id),
                pid: Some(pid),
                reason: Some(reason.as_str().to_string()),
                ..PyEvent::of(kind)
            },
            // A kind added to the core later still reaches Python, without details.
            #[allow(unreachable_patterns)]
            _ => PyEvent::of(kind),
        }
    }
}

#[pymethods]
impl PyEvent {
    /// The payload of a `message` event decoded as JSON.
    fn json<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("json")?
            .call_method1("loads", (self.payload(py)?,))
    }

    /// The payload of a `message` event unpickled. Only for messages from workers you trust:
    /// unpickling runs code chosen by the sender.
    fn pickle<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("pickle")?
            .call_method1("loads", (self.payload(py)?,))
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        let mut parts = vec![format!("Event({:?}", self.kind)];
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{k}={v}"));
            }
        };
        put("id", self.id.map(|v| v.to_string()));
        put("pid", self.pid.map(|v| v.to_string()));
        put("generation", self.generation.map(|v| v.to_string()));
        put(
            "data",
            self.data
                .as_ref()
                .map(|d| d.bind(py).repr().map(|r| r.to_string()).unwrap_or_default()),
        );
        put("content_type", self.content_type.map(|v| format!("{v:?}")));
        put("code", self.code.map(|v| v.to_string()));
        put("signal", self.signal.map(|v| v.to_string()));
        put("reason", self.reason.as_ref().map(|v| format!("{v:?}")));
        put("error", self.error.as_ref().map(|v| format!("{v:?}")));
        put("delay", self.delay.map(|v| format!("{v:.3}")));
        put("attempt", self.attempt.map(|v| v.to_string()));
        put("restarts", self.restarts.map(|v| v.to_string()));
        put("window", self.window.map(|v| v.to_string()));
        put("workers", self.workers.map(|v| v.to_string()));
        put("listener", self.listener.as_ref().map(|v| format!("{v:?}")));
        parts.join(", ") + ")"
    }
}

impl PyEvent {
    fn payload<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        match &self.data {
            Some(d) => Ok(d.bind(py).clone()),
            None => Err(pyo3::exceptions::PyValueError::new_err(format!(
                "a {:?} event carries no message",
                self.kind
            ))),
        }
    }
}

/// How a worker process ended.
#[pyclass(frozen, get_all, name = "ExitInfo", module = "rcluster")]
pub struct PyExitInfo {
    pub pid: u32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: &'static str,
}

impl From<ExitInfo> for PyExitInfo {
    fn from(e: ExitInfo) -> Self {
        PyExitInfo {
            pid: e.pid,
            code: e.code,
            signal: e.signal,
            reason: e.reason.as_str(),
        }
    }
}

#[pymethods]
impl PyExitInfo {
    fn __repr__(&self) -> String {
        format!(
            "ExitInfo(pid={}, code={:?}, signal={:?}, reason={:?})",
            self.pid, self.code, self.signal, self.reason
        )
    }
}

/// One worker process (or an empty slot) in a snapshot.
#[pyclass(frozen, get_all, name = "WorkerInfo", module = "rcluster")]
pub struct PyWorkerInfo {
    pub id: u32,
    pub pid: u32,
    pub generation: u32,
    /// `starting`, `online`, `ready`, `draining` or `exited`.
    pub state: &'static str,
    /// Seconds since the process started.
    pub uptime: f64,
    pub restarts: u32,
    pub last_exit: Option<Py<PyExitInfo>>,
}

impl PyWorkerInfo {
    pub fn from_core(py: Python<'_>, w: WorkerInfo) -> PyResult<PyWorkerInfo> {
        Ok(PyWorkerInfo {
            id: w.id,
            pid: w.pid,
            generation: w.generation,
            state: w.state.as_str(),
            uptime: w.uptime.as_secs_f64(),
            restarts: w.restarts,
            last_exit: match w.last_exit {
                Some(e) => Some(Py::new(py, PyExitInfo::from(e))?),
                None => None,
            },
        })
    }
}

#[pymethods]
impl PyWorkerInfo {
    fn __repr__(&self) -> String {
        format!(
            "WorkerInfo(id={}, pid={}, generation={}, state={:?}, uptime={:.3}, restarts={})",
            self.id, self.pid, self.generation, self.state, self.uptime, self.restarts
        )
    }
}
