//! The one place where core errors become Python exceptions.
//!
//! The exception classes live in `rcluster/errors.py` (Python can give them several bases, e.g.
//! `ConfigError(Error, ValueError)`); this file picks the class and sets its attributes.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use rcluster_core::Error;

/// Builds the Python exception for a core error.
pub fn to_py(e: Error) -> PyErr {
    Python::with_gil(|py| match build(py, &e) {
        Ok(err) => err,
        // The error module could not be imported (a broken install): say so, with the message.
        Err(import) => pyo3::exceptions::PyRuntimeError::new_err(format!("{e} (and: {import})")),
    })
}

fn build(py: Python<'_>, e: &Error) -> PyResult<PyErr> {
    let attrs = PyDict::new(py);
    let class = match e {
        Error::Config { field, value, .. } => {
            attrs.set_item("field", *field)?;
            attrs.set_item("value", value)?;
            "ConfigError"
        }
        Error::Bind { addr, source } => {
            attrs.set_item("addr", addr)?;
            attrs.set_item("errno", source.raw_os_error())?;
            "BindError"
        }
        Error::Spawn { program, source } => {
            attrs.set_item("program", program)?;
            attrs.set_item("errno", source.raw_os_error())?;
            "SpawnError"
        }
        Error::MessageTooLarge { size, limit } => {
            attrs.set_item("size", size)?;
            attrs.set_item("limit", limit)?;
            "MessageTooLargeError"
        }
        Error::QueueFull { worker, limit } => {
            attrs.set_item("worker", worker)?;
            attrs.set_item("limit", limit)?;
            "QueueFullError"
        }
        Error::TaskQueueFull { limit } => {
            attrs.set_item("limit", limit)?;
            "QueueFullError"
        }
        Error::PoolBroken(why) => {
            attrs.set_item("why", why)?;
            "PoolBrokenError"
        }
        Error::NoSuchWorker(id) => {
            attrs.set_item("worker", id)?;
            "NoSuchWorkerError"
        }
        Error::Stopped => "StoppedError",
        Error::Protocol(_) => "ProtocolError",
        Error::NotAWorker(_) => "NotAWorkerError",
        Error::Io { op, source } => {
            attrs.set_item("op", *op)?;
            attrs.set_item("errno", source.raw_os_error())?;
            "IoError"
        }
        // The core's enum may grow; a new variant is still an rcluster.Error.
        #[allow(unreachable_patterns)]
        _ => "Error",
    };
    raise(py, class, &e.to_string(), Some(&attrs))
}

/// An exception of class `class` from `rcluster.errors`, with `attrs` set on it.
pub fn raise(
    py: Python<'_>,
    class: &str,
    message: &str,
    attrs: Option<&Bound<'_, PyDict>>,
) -> PyResult<PyErr> {
    let module = py.import("rcluster.errors")?;
    let exc = module.getattr(class)?.call1((message,))?;
    if let Some(attrs) = attrs {
        for (k, v) in attrs.iter() {
            exc.setattr(k.downcast::<pyo3::types::PyString>()?, v)?;
        }
    }
    Ok(PyErr::from_value(exc))
}

/// A configuration error raised by the binding itself (a value the core never sees).
pub fn config_error(field: &str, value: impl std::fmt::Debug, reason: &str) -> PyErr {
    Python::with_gil(|py| {
        let attrs = PyDict::new(py);
        let msg = format!("invalid config: {field} = {value:?}: {reason}");
        let made = attrs
            .set_item("field", field)
            .and_then(|()| attrs.set_item("value", format!("{value:?}")))
            .and_then(|()| raise(py, "ConfigError", &msg, Some(&attrs)));
        made.unwrap_or_else(|e| e)
    })
}

/// `?`-friendly conversion for core results.
pub trait IntoPyResult<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for rcluster_core::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
