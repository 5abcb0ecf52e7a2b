//! A worker's acceptor of a `shared` listening socket: the core's [`SharedAcceptor`], one
//! connection per call, keeping level with the other workers through the listener's share map
//! (protocol §5.7). `rcluster.aio` calls it once each time the socket is readable: taking
//! every connection that waits at once would leave them queued behind each other in this
//! worker while another sits idle.
//!
//! accept4 does not block (the socket is non-blocking), so the GIL is kept around it.

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use rcluster_core::{Accepted, SharedAcceptor};

use crate::worker::PyWorker;

/// What `next()` returns when this worker leaves the next connection to the others: the
/// caller stops watching the socket and looks again `ACCEPT_DEFER_SECONDS` later.
pub const DEFERRED: i32 = -1;

/// The native half of a shared listener's acceptor in `rcluster.aio`.
#[pyclass(name = "SharedAcceptor", module = "rcluster._rcluster")]
pub struct PySharedAcceptor {
    worker: Py<PyWorker>,
    name: String,
    /// None once closed.
    open: Option<SharedAcceptor>,
}

#[pymethods]
impl PySharedAcceptor {
    /// Accepts from the socket of `shared` listener `name` that this worker inherited at `fd`,
    /// which it takes over (see `SharedAcceptor::of_listener`).
    #[new]
    fn new(py: Python<'_>, worker: Py<PyWorker>, name: String, fd: i32) -> PyResult<Self> {
        if fd < 0 {
            return Err(PyValueError::new_err(format!(
                "fd {fd} is not a descriptor"
            )));
        }
        // SAFETY: the caller hands the descriptor over (socket.detach()); it is owned here.
        let inherited = unsafe { OwnedFd::from_raw_fd(fd) };
        let acceptor = {
            let core = &worker.get().core;
            py.allow_threads(|| SharedAcceptor::of_listener(core, &name, inherited))?
        };
        Ok(PySharedAcceptor {
            worker,
            name,
            open: Some(acceptor),
        })
    }

    /// The listening socket's descriptor to watch (-1 once closed).
    fn fileno(&self) -> i32 {
        self.open.as_ref().map_or(-1, |a| a.fd())
    }

    /// True when it keeps level with the other workers (the primary gave the share map).
    #[getter]
    fn keeps_level(&self) -> bool {
        self.open.as_ref().is_some_and(|a| a.keeps_level())
    }

    /// One look at the socket: a connection's descriptor (the caller's from now on), None
    /// when nothing waits, or `ACCEPT_DEFERRED`. OSError with accept's errno when it fails
    /// (EMFILE, ENFILE, ENOBUFS, ENOMEM: the caller pauses before it looks again).
    fn next(&self) -> PyResult<Option<i32>> {
        let Some(acceptor) = &self.open else {
            return Err(PyOSError::new_err((libc::EBADF, "the acceptor is closed")));
        };
        match acceptor.next() {
            Accepted::Connection(c) => Ok(Some(c.into_raw_fd())),
            Accepted::Empty => Ok(None),
            Accepted::Deferred => Ok(Some(DEFERRED)),
            Accepted::Failed(e) => {
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                // The text as OSError shows it, without Rust's " (os error N)".
                let text = e.to_string();
                let text = text.split(" (os error").next().unwrap_or_default();
                Err(PyOSError::new_err((errno, format!("accept: {text}"))))
            }
        }
    }

    /// Closes the socket and tells the primary this worker no longer listens (which takes it
    /// out of the share map). Idempotent.
    fn close(&mut self, py: Python<'_>) {
        if self.open.take().is_some_and(|a| a.listened()) {
            let core = &self.worker.get().core;
            // The primary may be gone already: nothing to tell then.
            let _ = py.allow_threads(|| core.unlisten(&self.name));
        }
    }
}
